"""Repository paths, run-folder naming, and the atomic write every file a run rewrites goes through."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import IO, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Fault injection for the crash-safety test: with REPYOLO_KILL_AT_WRITE=N the process kills itself
# (SIGKILL, as a power cut would) at the N-th write point of atomic_open, counted from 1.
KILL_AT_WRITE = "REPYOLO_KILL_AT_WRITE"
_write_points = 0


def write_point() -> None:
    """One place a run may be killed; see KILL_AT_WRITE."""
    global _write_points
    _write_points += 1
    if os.environ.get(KILL_AT_WRITE) == str(_write_points):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is flushed, synced and renamed
    over ``path`` in one step, so a reader (or a run killed at any moment) sees the old file or the new
    one, never a part. Temporary files left by killed writes of the same file are removed first.
    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())
        write_point()
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    write_point()


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as file:
        file.write(text)
    return Path(path)


def load_yaml_mapping(path: Path, error: type[Exception], expected: str) -> dict:
    """The mapping a YAML file holds ({} for an empty file); ``error`` (one sentence naming the file)
    for a syntax error or a file that is not a mapping, ``expected`` saying what it should hold."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as problem:
        raise error(f"{path} is not valid YAML ({problem}); fix its syntax.") from None
    if not isinstance(values, dict):
        raise error(f"{path} must be a mapping of {expected}.")
    return values


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
