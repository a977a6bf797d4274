"""Repository paths, run-folder naming, and the one way a file or folder is written atomically: under a
temporary name beside its final one, synced, then renamed (``publish``; ``atomic_open`` for a file a run
rewrites, utils.deploy.staging for the exports)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
_write_point_callbacks: list[Callable[[], None]] = []


def on_write_point(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` at each write point of ``publish`` (atomic_open's files, the exports): when the
    new file is complete and synced, just before it is renamed over the target, and just after the rename.
    Callbacks run in the order they were added; the function returned removes this one (calling it again
    does nothing).

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


def temporary_name(final: Path, keep_suffix: bool = False) -> Path:
    """A new hidden name beside ``final``: best.pt -> .best.pt.3f9a0c1e.tmp, or with ``keep_suffix``
    .best.pt.3f9a0c1e.tmp.pt (an export is checked under it by the loader its suffix chooses)."""
    name = f".{final.name}.{secrets.token_hex(4)}.tmp"
    return final.with_name(name + final.suffix if keep_suffix else name)


def remove(path: Path) -> None:
    """Remove the file or folder ``path``, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sync(path: Path) -> None:
    """Flush the file ``path``, or every file under the folder ``path``, to disk."""
    files = [path] if path.is_file() else [file for file in path.rglob("*") if file.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def publish(staged: Path, final: Path, durable: bool = True) -> Path:
    """Rename the complete ``staged`` file or folder to ``final``, so that a reader (or a run killed at any
    moment) finds the old one or the new one there, never a part. durable: sync it to disk first, so that
    the rename never outlives its contents in a power cut. A file replaces an earlier one in one rename; no
    rename replaces a folder, so an earlier one is first renamed aside, then removed."""
    if durable:
        sync(staged)
    _write_point()
    if final.is_dir() or (staged.is_dir() and final.exists()):
        aside = temporary_name(final)
        final.rename(aside)
        staged.rename(final)
        remove(aside)
    else:
        os.replace(staged, final)
    _write_point()
    return final


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", durable: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it is published over ``path``
    (``publish``). The file gets the usual permissions (0666 less the umask).

    durable: also sync the file to disk before the rename and first remove the temporary files left by
    killed writes of the same file (a folder listing): what checkpoints and run files need. A cache of
    many small files that can be rebuilt (utils.data.disk_cache) passes False: it skips both costs, and a
    killed write leaves at most a stray temporary file. Safe to call from several threads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
    temporary = temporary_name(path)
    try:
        with open(temporary, mode.replace("w", "x")) as file:
            yield file
        publish(temporary, path, durable)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
