"""The exported files' format: what the graph's input and output are called and how the metadata a loader
needs (class names, stride, input size, whether the axes are dynamic) travels with them: in an ONNX
model's ``metadata_props``, as ``metadata.yaml`` in an OpenVINO IR's or NCNN model's folder, and as a zip
archive appended to a LiteRT (.tflite) or ExecuTorch (.pte) file (their runtimes read the model from the
start of the file and ignore what follows, as yolov5 does for TFLite). Writing an export
(utils.deploy.export) and loading one (utils.deploy.backend) both build on this module.

The graph has one input ``images`` (B, 3, H, W) float32 RGB in 0..1 and one output ``output``
(B, N, 5 + nc) with the decoded predictions (cx, cy, w, h in input pixels, objectness, class scores),
the same as ``Model`` in eval mode.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from utils.errors import WeightsError
from utils.paths import load_yaml_mapping, write_text_atomic

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "images"
OUTPUT_NAME = "output"
FOLDER_METADATA = "metadata.yaml"  # in an OpenVINO IR's or NCNN model's folder
ZIP_METADATA = "metadata.json"  # in the zip appended to a .tflite or .pte file
NCNN_PARAM, NCNN_WEIGHTS = "model.ncnn.param", "model.ncnn.bin"  # in a *_ncnn_model/ folder


def write_metadata(onnx_model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Add ``values`` to metadata_props: strings as they are, anything else as JSON."""
    for key, value in values.items():
        entry = onnx_model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def read_metadata(onnx_model: onnx.ModelProto) -> dict[str, Any]:
    """metadata_props as a dict, JSON values decoded (strings that are not JSON stay strings)."""
    out: dict[str, Any] = {}
    for entry in onnx_model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out


def openvino_folder(onnx_path: Path) -> Path:
    """yolov5's naming: best_fused.onnx -> best_fused_openvino_model/ beside it."""
    return onnx_path.with_name(f"{onnx_path.stem}_openvino_model")


def openvino_xml_path(onnx_path: Path) -> Path:
    """The IR of an ONNX export: best_fused.onnx -> best_fused_openvino_model/best_fused.xml."""
    return openvino_folder(onnx_path) / f"{onnx_path.stem}.xml"


def write_folder_metadata(folder: Path, metadata: dict[str, Any]) -> Path:
    return write_text_atomic(folder / FOLDER_METADATA, yaml.safe_dump(metadata, sort_keys=False))


def read_folder_metadata(folder: Path, model_file: str, flag: str) -> dict[str, Any]:
    """The metadata.yaml in an exported model's folder. Raises WeightsError when it is missing or
    unreadable, naming convert.py's ``flag`` that writes such a folder."""
    metadata_file = folder / FOLDER_METADATA
    if not metadata_file.is_file():
        raise WeightsError(
            f"{folder} has no {FOLDER_METADATA} beside {model_file}, so it was not exported by RepYOLO; "
            f"export the checkpoint with convert.py {flag}."
        )
    return load_yaml_mapping(metadata_file, WeightsError, "export metadata (names, stride)")


def with_zip_metadata(content: bytes, metadata: dict[str, Any]) -> bytes:
    """A model file's ``content`` with ``metadata`` appended as a zip archive holding metadata.json."""
    buffer = io.BytesIO(content)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr(ZIP_METADATA, json.dumps(metadata))
    return buffer.getvalue()


def read_zip_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata appended by with_zip_metadata, or None when the file carries none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(ZIP_METADATA))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError):
        return None
