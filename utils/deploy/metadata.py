"""The exported files' format: what the graph's input and output are called and how the metadata a loader
needs (class names, stride, input size, whether the axes are dynamic) travels with them, in an ONNX
model's ``metadata_props`` and as ``metadata.yaml`` beside an OpenVINO IR. Writing an export
(utils.deploy.export) and loading one (utils.deploy.backend) both build on this module.

The graph has one input ``images`` (B, 3, H, W) float32 RGB in 0..1 and one output ``output``
(B, N, 5 + nc) with the decoded predictions (cx, cy, w, h in input pixels, objectness, class scores),
the same as ``Model`` in eval mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from utils.errors import WeightsError
from utils.paths import load_yaml_mapping, write_text_atomic

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "images"
OUTPUT_NAME = "output"
OPENVINO_METADATA = "metadata.yaml"


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


def write_openvino_metadata(folder: Path, metadata: dict[str, Any]) -> Path:
    return write_text_atomic(folder / OPENVINO_METADATA, yaml.safe_dump(metadata, sort_keys=False))


def read_openvino_metadata(xml: Path) -> dict[str, Any]:
    """The metadata.yaml beside an IR's .xml. Raises WeightsError when it is missing or unreadable."""
    metadata_file = xml.parent / OPENVINO_METADATA
    if not metadata_file.is_file():
        raise WeightsError(
            f"{xml.parent} has no {OPENVINO_METADATA} beside {xml.name}, so it was not exported by RepYOLO; "
            "export the checkpoint with convert.py --openvino."
        )
    return load_yaml_mapping(metadata_file, WeightsError, "export metadata (names, stride)")
