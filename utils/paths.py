"""Repository paths and run-folder naming."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless exist_ok or the path is free. Creates it."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem = path.name
        n = 2
        while (path.parent / f"{stem}{n}").exists():
            n += 1
        path = path.parent / f"{stem}{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_run() -> Path | None:
    """The most recently written runs/train/*/weights/last.pt under the current directory."""
    candidates = sorted(Path().glob("runs/train/*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None
