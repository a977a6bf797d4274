"""What several formats' writers and loaders share: silencing converters, importing noisy packages,
tracing the model, and the flatbuffer files (LiteRT, ExecuTorch) that carry their metadata in a zip."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from utils.deploy.formats.base import ExportInputs, Written
from utils.deploy.metadata import with_zip_metadata

LOGGER = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_native_output():
    """Silence what converters print on file descriptors 1 and 2 (progress bars, pass lists, native
    logs) unless debugging; their failures still reach us as exceptions."""
    if LOGGER.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def import_quietly(module: str, *loggers: str):
    """Import ``module`` with the warnings its import logs on ``loggers`` held back (coremltools' about the
    versions it was tested with, torch's about an Enum that torchao registers for ExecuTorch)."""
    held = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in held]
    for logger in held:
        logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    finally:
        for logger, level in zip(held, levels):
            logger.setLevel(level)


def traced(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """The TorchScript trace of ``model`` on ``example`` (without torch's re-trace check, which the Detect
    layer's grid cache fails and the artefact's own check against PyTorch replaces; torch's warnings
    that tracing is deprecated and that the grid size is fixed, as the export is, silenced)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model.eval(), example, strict=False, check_trace=False)


def write_with_metadata(path: Path, content: bytes, precision: str, inputs: ExportInputs) -> Written:
    """A flatbuffer file (LiteRT, ExecuTorch): the model, then its metadata (and precision) as a zip, in one
    write."""
    path.write_bytes(with_zip_metadata(content, inputs.static_metadata | {"precision": precision}))
    return Written(path, precision)


def flatbuffer_identifier(path: Path) -> bytes:
    """The file identifier of a flatbuffer file, bytes 4 to 8: b"TFL3" for LiteRT, b"ET12" for ExecuTorch."""
    with open(path, "rb") as file:
        return file.read(8)[4:]
