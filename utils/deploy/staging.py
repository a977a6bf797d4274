"""Exports published only once checked. val.py, detect.py and serve.py load whatever is under an export's
final name, so an artefact that fails its check against PyTorch, or whose conversion was killed half-way,
must never be there: each artefact (a file or a folder) is written under a temporary name beside its final
one, checked there, and only then published under its final name (utils.paths.publish: synced, renamed).

The temporary name keeps the final suffix, by which the loaders choose the runtime, and the files inside a
folder have their final names, so a runtime that finds one file by another's name (an OpenVINO .xml its
.bin, NCNN's .param its .bin) loads the same files before the rename and after it.

A ``Release`` is one conversion's list of the artefacts it is to write, in order, and of those it has
published: when a check fails, its sentence is completed with what was not written.
"""

from __future__ import annotations

import contextlib
import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from utils.errors import UserError
from utils.paths import publish, remove, temporary_name

LOGGER = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_base(base: Path) -> Iterator[Path]:
    """A temporary base name beside ``base`` (e.g. runs/.../best_fused, the fused checkpoint without its
    suffix), for a format's writer that names several artefacts after one base; each is then published
    with Release.staged. Whatever is still under the temporary base when the block ends (what a failure
    left) is removed."""
    temporary = temporary_name(base)
    try:
        yield temporary
    finally:
        for leftover in temporary.parent.glob(glob.escape(temporary.name) + "*"):
            remove(leftover)


@dataclass
class Release:
    """The artefacts one conversion is to write, {final path: its format's title} in the order they are
    written, and those it has published so far."""

    planned: dict[Path, str] = field(default_factory=dict)
    published: list[Path] = field(default_factory=list)

    @contextlib.contextmanager
    def staged(self, final: Path, written: Path | None = None) -> Iterator[Path]:
        """A temporary name beside ``final`` (or ``written``, where a writer already wrote the artefact under
        one) to write and check the artefact under; when the block ends, the artefact is published as
        ``final``.

        When the block raises, the artefact is removed, and so is an earlier export under ``final``: it may
        come from another model (an earlier conversion), and a loader must find there this model's checked
        artefact or nothing. An interrupt (Ctrl-C) removes only the new artefact."""
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = written or temporary_name(final, keep_suffix=True)
        try:
            yield staged
        except BaseException as error:
            remove(staged)
            if isinstance(error, Exception) and (final.exists() or final.is_symlink()):
                LOGGER.warning("Removed the earlier %s: this model's export failed to replace it.", final)
                remove(final)
            raise
        publish(staged, final)
        self.published.append(final)

    def unwritten(self) -> list[str]:
        """The planned artefacts not published, in words: each its title and file name."""
        return [f"{title} {path.name}" for path, title in self.planned.items() if path not in self.published]

    def refusal(self, error: UserError) -> UserError:
        """``error`` (one sentence, of the same type) completed with the planned artefacts it left
        unwritten."""
        unwritten = self.unwritten()
        if not unwritten:
            return error
        return type(error)(f"{str(error).rstrip('. ')}; not written: {', '.join(unwritten)}.")
