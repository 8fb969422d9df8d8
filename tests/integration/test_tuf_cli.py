"""``fleet-server keys`` and ``fleet-server updates``: the operator's path end to end."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from firmware_bundles.examples import build_examples
from fleet_server.cli import app

runner = CliRunner()


def _run(*args: str, ok: bool = True) -> str:
    result = runner.invoke(app, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
    return result.output


def test_operator_lifecycle(tmp_path: Path) -> None:
    offline, repo, keys = tmp_path / "usb-root", tmp_path / "repo", tmp_path / "keys"
    made = json.loads(
        _run(
            "keys",
            "create-root",
            "--out",
            str(offline),
            "--count",
            "3",
            "--threshold",
            "2",
            "--json",
        )
    )
    assert len(made["keyids"]) == 3
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in offline.glob("*.pem"))
    common = ["--repo", str(repo), "--keys", str(keys)]
    _run("keys", "init-repo", *common, "--root-keys", str(offline))

    bundles = build_examples(tmp_path / "bundles", ("good-1.1.0", "health-fail"))
    published = json.loads(
        _run(
            "updates",
            "publish",
            str(bundles["good-1.1.0"].path),
            *common,
            "--channel",
            "beta",
            "--json",
        )
    )
    assert published["channel"] == "beta"
    assert published["release_counter"] == 1
    _run("updates", "publish", str(bundles["health-fail"].path), *common)
    listed = json.loads(_run("updates", "list", *common, "--json"))
    assert [t["version"] for t in listed] == ["1.1.0", "1.3.0"]

    assert "timestamp key is now" in _run(
        "keys", "rotate-online", "timestamp", *common, "--root-keys", str(offline)
    )
    new_root = tmp_path / "usb-root-2"
    _run("keys", "create-root", "--out", str(new_root), "--count", "2", "--threshold", "1")
    _run(
        "keys",
        "rotate-root",
        *common,
        "--root-keys",
        str(offline),
        "--new-root-keys",
        str(new_root),
    )
    _run("keys", "resign-root", *common, "--root-keys", str(new_root))
    status = json.loads(_run("keys", "status", *common, "--json"))
    assert status["roles"]["root"]["version"] == 4
    assert status["roles"]["root"]["threshold"] == 1
    assert status["targets"] == 2
    refreshed = json.loads(_run("updates", "refresh", *common, "--json"))
    assert refreshed["resigned"] == []
    assert "unpublished" in _run("updates", "unpublish", listed[1]["name"], *common)

    actions = [
        json.loads(line)["action"] for line in (repo / "audit.jsonl").read_text().splitlines()
    ]
    assert actions == [
        "init",
        "publish",
        "publish",
        "rotate-online-key",
        "rotate-root",
        "resign-root",
        "unpublish",
    ]


def test_operator_mistakes_get_clear_errors(tmp_path: Path) -> None:
    offline, repo, keys = tmp_path / "root", tmp_path / "repo", tmp_path / "keys"
    common = ["--repo", str(repo), "--keys", str(keys)]
    assert "init-repo" in _run("updates", "list", *common, ok=False)
    _run("keys", "create-root", "--out", str(offline), "--count", "2", "--threshold", "2")
    assert "already holds keys" in _run(
        "keys", "create-root", "--out", str(offline), "--count", "1", "--threshold", "1", ok=False
    )
    assert "not a root key directory" in _run(
        "keys", "init-repo", *common, "--root-keys", str(tmp_path), ok=False
    )
    _run("keys", "init-repo", *common, "--root-keys", str(offline))
    assert "already holds" in _run(
        "keys", "init-repo", *common, "--root-keys", str(offline), ok=False
    )
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a bundle")
    assert "not_a_bundle" in _run("updates", "publish", str(junk), *common, ok=False)
    assert "online roles" in _run(
        "keys", "rotate-online", "root", *common, "--root-keys", str(offline), ok=False
    )
    assert "is not published" in _run("updates", "unpublish", "nothing.tar.gz", *common, ok=False)
