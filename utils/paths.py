"""Repository paths, run-folder naming, and the atomic write every file a run rewrites goes through."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
UMASK = os.umask(0o022)  # read once, at import: reading it means setting it, which threads must not race
os.umask(UMASK)
_write_point_callbacks: list[Callable[[], None]] = []


def on_write_point(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` at each write point of atomic_open: when the temporary file is complete and
    synced, just before it is renamed over the target, and just after the rename. Callbacks run in the
    order they were added; the function returned removes this one (calling it again does nothing).

    Meant for tests that cut a run off at a chosen write, as a power cut would: tests/test_crash_safety.py
    counts the points and kills its process at the N-th. An exception a callback raises propagates out of
    atomic_open; at the first point the temporary file is removed and the target left as it was."""
    _write_point_callbacks.append(callback)
    registered = True

    def remove() -> None:
        nonlocal registered
        if registered:
            _write_point_callbacks.remove(callback)
            registered = False

    return remove


def _write_point() -> None:
    for callback in list(_write_point_callbacks):
        callback()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", durable: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is flushed and renamed over
    ``path`` in one step, so a reader (or a run killed at any moment) sees the old file or the new one,
    never a part. The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.

    durable: also sync the file to disk before the rename and first remove the temporary files left by
    killed writes of the same file (a folder listing): what checkpoints and run files need. A cache of
    many small files that can be rebuilt (utils.data.disk_cache) passes False: it skips both costs, and a
    killed write leaves at most a stray temporary file. Safe to call from several threads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.chmod(temp_name, 0o666 & ~UMASK)
        _write_point()
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _write_point()


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write ``text`` to ``path`` through ``atomic_open`` (durable: see there)."""
    with atomic_open(path, "w", durable=durable) as file:
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
