"""Benchmark: the agent's verified download of a large bundle against ``sha256sum``.

Builds a bundle with an incompressible payload (``--size-mb``, default 200) in a temp dir,
publishes it in a fresh TUF repository, serves the repository with the fleet server's
``tuf_router`` under uvicorn (a separate process) on loopback, and times, in a separate
agent process, exactly what the updater does: ``UpdateClient.refresh()`` + ``find()`` +
``download()`` (python-tuf checks the length and sha256 while the resumable fetcher keeps
the partial file). Then it times ``sha256sum`` of the same file.

Goals: the agent at least 0.5x the speed of ``sha256sum``; the agent's peak RSS does not
grow with the bundle size (streamed, never held in memory): it is measured for the large
bundle and for a small one (``--small-mb``) and compared. Both timings are the best of
``--runs`` (default 3), because a shared machine adds noise in one direction only.

    .venv/bin/python bench/update_verify.py [--size-mb 200] [--small-mb 10]

The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RATIO_GOAL = 0.5
SERVER_CODE = """
import sys
from pathlib import Path
import uvicorn
from fastapi import FastAPI
from fleet_server.updates.tuf_router import tuf_router
app = FastAPI()
app.include_router(tuf_router(Path(sys.argv[1])))
uvicorn.run(app, fd=int(sys.argv[2]), log_level="warning")
"""


def _wait_serving(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until *our* server answers (the socket is ours: bound here, passed by fd)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the TUF server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/tuf/metadata/1.root.json", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise SystemExit("the TUF server did not start")


def build_big_bundle(work: Path, name: str, version: str, counter: int, size_mb: int) -> Path:
    """A valid bundle whose payload is ``size_mb`` MB of random bytes."""
    from firmware_bundles.build import build_bundle
    from firmware_bundles.examples import example_source

    src = work / f"src-{name}"
    shutil.copytree(example_source("good-1.1.0"), src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(version=version, release_counter=counter)
    (src / "manifest.json").write_text(json.dumps(manifest))
    with open(src / "payload" / "rootfs.img", "wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    out = work / "bundles"
    out.mkdir(exist_ok=True)
    return build_bundle(src, out).path


def agent_child(args: argparse.Namespace) -> int:
    """Run in a fresh process: the agent's refresh + verified download, then report."""
    from agent.adapters.tuf_client import UpdateClient

    root = Path(args.root).read_bytes()
    client_dir = Path(args.client_dir)
    start = time.perf_counter()
    client = UpdateClient(
        client_dir / "metadata",
        f"{args.base}/tuf/metadata/",
        f"{args.base}/tuf/targets/",
        client_dir / "downloads",
        bootstrap_root=root,
    )
    profile = None
    if os.environ.get("UPDATE_VERIFY_PROFILE"):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    client.refresh()
    target = client.find(args.target)
    if target is None:
        raise SystemExit(f"target {args.target} not found")
    path = client.download(target)
    seconds = time.perf_counter() - start
    if profile is not None:
        import pstats

        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"seconds": seconds, "bytes": path.stat().st_size, "peak_rss_mb": peak_kb / 1024}
        )
    )
    return 0


def run_agent(base: str, root: Path, target: str, client_dir: Path) -> dict[str, Any]:
    """Time the agent's download in its own process (so its RSS is its own)."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--agent-child",
            "--base",
            base,
            "--root",
            str(root),
            "--target",
            target,
            "--client-dir",
            str(client_dir),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"the agent's download failed:\n{out.stderr[-3000:]}")
    if os.environ.get("UPDATE_VERIFY_PROFILE"):
        print(out.stderr)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def time_sha256sum(path: Path) -> float:
    """Seconds ``sha256sum`` takes over ``path``."""
    start = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    """Build, serve, measure and print the figures (last line: JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="large bundle payload (MB)")
    parser.add_argument("--small-mb", type=int, default=10, help="small bundle payload (MB)")
    parser.add_argument("--runs", type=int, default=3, help="best of N runs (shared machines)")
    parser.add_argument("--agent-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--client-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_child:
        return agent_child(args)
    if shutil.which("sha256sum") is None:
        raise SystemExit("sha256sum is not installed")

    from fleet_server.updates.keys import create_root_keys
    from fleet_server.updates.tuf_repository import TufRepository, root_bytes

    with tempfile.TemporaryDirectory(prefix="update-verify-") as tmp:
        work = Path(tmp)
        print(f"building a {args.size_mb} MB and a {args.small_mb} MB bundle in {work} ...")
        big = build_big_bundle(work, "big", "9.0.0", 90, args.size_mb)
        small = build_big_bundle(work, "small", "8.0.0", 80, args.small_mb)
        keys = create_root_keys(work / "offline-root", count=3, threshold=2)
        repo = TufRepository.create(
            work / "repo", work / "server-keys", list(keys.signers.values())[:2], threshold=2
        )
        published = {p: repo.publish(p, "production") for p in (big, small)}
        root = work / "root.json"
        root.write_bytes(root_bytes(repo.path))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, str(repo.path), str(listener.fileno())],
            stdout=subprocess.DEVNULL,
            pass_fds=(listener.fileno(),),
        )
        try:
            _wait_serving(base, server)
            print("agent: download + verification of the small bundle ...")
            small_run = run_agent(base, root, published[small].name, work / "client-small")
            big_runs = []
            for n in range(args.runs):
                print(f"agent: download + verification of the large bundle ({n + 1}/{args.runs})")
                big_runs.append(run_agent(base, root, published[big].name, work / f"big-{n}"))
        finally:
            server.terminate()
            server.wait(timeout=10)
            listener.close()
        big_run = min(big_runs, key=lambda r: r["seconds"])
        big_run["peak_rss_mb"] = max(r["peak_rss_mb"] for r in big_runs)
        stored = next((repo.path / "targets").glob(f"*.{published[big].name}"))
        size = stored.stat().st_size
        sha_seconds = min(time_sha256sum(stored) for _ in range(args.runs))

    mb = size / 1e6
    agent_rate = mb / big_run["seconds"]
    sha_rate = mb / sha_seconds
    ratio = agent_rate / sha_rate
    growth = big_run["peak_rss_mb"] - small_run["peak_rss_mb"]
    print(f"bundle:          {mb:.1f} MB")
    print(f"agent:           {big_run['seconds']:.2f} s  {agent_rate:.1f} MB/s (TUF refresh,")
    print("                 download over loopback HTTP, length + sha256 verification)")
    print(f"sha256sum:       {sha_seconds:.2f} s  {sha_rate:.1f} MB/s")
    print(f"ratio:           {ratio:.2f}x (goal >= {RATIO_GOAL}x)")
    print(
        f"agent peak RSS:  {big_run['peak_rss_mb']:.1f} MB for {mb:.0f} MB, "
        f"{small_run['peak_rss_mb']:.1f} MB for {args.small_mb} MB (growth {growth:+.1f} MB)"
    )
    print(
        json.dumps(
            {
                "bench": "update_verify",
                "bundle_mb": round(mb, 1),
                "agent_mb_per_s": round(agent_rate, 1),
                "sha256sum_mb_per_s": round(sha_rate, 1),
                "ratio": round(ratio, 3),
                "ratio_goal": RATIO_GOAL,
                "peak_rss_mb": round(big_run["peak_rss_mb"], 1),
                "peak_rss_small_mb": round(small_run["peak_rss_mb"], 1),
                "rss_growth_mb": round(growth, 1),
                "ok": ratio >= RATIO_GOAL and growth < 10,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
