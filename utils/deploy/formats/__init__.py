"""The deployment formats, one module each, behind one registry. A module holds everything about its format
(utils.deploy.formats.base.Format): convert.py's flag, the packages and requirements file, the artefacts'
names, how they are written, loaded and checked, and their metadata. convert.py's format flags, val.py's
and detect.py's runtime flags, load_inference_model, bench.formats and the tests that cover a format all
iterate REGISTRY, so a format is added by its module and one line in MODULES.

REGISTRY is in the order convert.py writes the formats: the ONNX graph first, which OpenVINO and MNN
convert and whose INT8 search the later INT8 writers follow.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from utils.deploy.formats.base import Format

MODULES = (
    "pytorch",
    "onnx",
    "openvino",
    "torchscript",
    "ncnn",
    "tflite",
    "executorch",
    "mnn",
    "coreml",
    "opencv_dnn",
)
REGISTRY: dict[str, Format] = {
    module.FORMAT.name: module.FORMAT
    for module in (importlib.import_module(f"{__name__}.{name}") for name in MODULES)
}


def convert_flags() -> dict[str, str]:
    """{flag: its --help} of every format convert.py writes on a flag."""
    return {fmt.flag: fmt.help for fmt in REGISTRY.values() if fmt.flag}


def runtime_flags() -> dict[str, tuple[str, str]]:
    """{flag: (format name, its --help)} of the runtimes val.py and detect.py choose by a flag."""
    return {
        fmt.runtime_flag: (fmt.name, f"run {REGISTRY[fmt.runs].shown_as} weights with {fmt.runtime_label}")
        for fmt in REGISTRY.values()
        if fmt.runtime_flag
    }


def format_of(path: Path) -> Format | None:
    """The format whose artefacts are named as ``path`` is (a folder by what it holds), else None."""
    found = [fmt for fmt in REGISTRY.values() if not fmt.runs and fmt.recognises(path)]
    if not found and path.is_dir():
        found = [fmt for fmt in REGISTRY.values() if fmt.any_folder]
    return found[0] if found else None


def artefact_path(base: Path, name: str, precision: str = "float32") -> Path:
    """The artefact of the format ``name`` in ``precision`` written from ``base`` (the fused checkpoint
    without its suffix)."""
    artefacts = REGISTRY[name].artefacts
    return next(artefact for artefact in artefacts if artefact.precision == precision).path(base)


def loadable() -> str:
    """What --weights takes, in words: each format's ``shown_as``, in the registry's order."""
    return ", ".join(fmt.shown_as for fmt in REGISTRY.values() if fmt.shown_as)
