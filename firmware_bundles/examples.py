"""The example bundles shipped for tests, demos and the simulator.

Sources live in ``firmware_bundles/examples/<name>/``; the bundles are built on demand
(deterministically) and never committed.

| name | version | release counter | behaviour |
|---|---|---|---|
| ``good-1.1.0`` | 1.1.0 | 1 | healthy on rev-a and rev-b |
| ``good-1.2.0`` | 1.2.0 | 2 | healthy, fewer simulated faults |
| ``health-fail`` | 1.3.0 | 3 | boots, then fails its health check |
| ``boot-crash`` | 1.3.1 | 4 | crashes on boot |
| ``wrong-hardware`` | 1.2.1 | 3 | built for rev-z only, refused by rev-a/rev-b devices |
"""

from __future__ import annotations

from pathlib import Path

from firmware_bundles.build import BuiltBundle, build_bundle

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_NAMES = ("good-1.1.0", "good-1.2.0", "health-fail", "boot-crash", "wrong-hardware")


def example_source(name: str) -> Path:
    """Source directory of the example bundle ``name``.

    Raises:
        KeyError: no such example.
    """
    if name not in EXAMPLE_NAMES:
        raise KeyError(f"unknown example bundle {name!r}; known: {', '.join(EXAMPLE_NAMES)}")
    return EXAMPLES_DIR / name


def build_examples(out_dir: Path, names: tuple[str, ...] = EXAMPLE_NAMES) -> dict[str, BuiltBundle]:
    """Build the example bundles into ``out_dir`` (created); returns them by example name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: build_bundle(example_source(name), out_dir) for name in names}
