"""Deployment as steps, each returning what it wrote and how that checked out against PyTorch: fuse and
save (utils.deploy.fuse), then the ONNX graph (write_onnx), the OpenVINO IR (write_openvino) and the INT8
models (write_int8). convert.py checks its arguments and wires these steps; Python code can call them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from utils.deploy.backend import load_inference_model
from utils.deploy.export import export_onnx, export_openvino, model_metadata
from utils.deploy.graph import decode_tail_nodes
from utils.deploy.metadata import openvino_xml_path, read_metadata, write_openvino_metadata
from utils.deploy.partial_quantization import (
    AccuracyTarget,
    BoundedResult,
    map_scorer,
    quantize_onnx_within,
    quantize_openvino_within,
)
from utils.deploy.quantize import quantize_onnx, quantize_openvino
from utils.deploy.verify import (
    MAX_ONNX_RELATIVE_ERROR,
    OnnxCheck,
    RuntimeCheck,
    check_onnx,
    compare_with_model,
)
from utils.evaluation.loader import validation_loader

LOGGER = logging.getLogger(__name__)

INT8_NOTE = (
    "  (INT8: deviations this large are expected, 8-bit activations move box coordinates by pixels; "
    "what judges an INT8 model is its mAP, as val.py measures it on that file)"
)


@dataclass
class OnnxSettings:
    """How the ONNX graph is exported and timed."""

    opset: int = 17
    dynamic: bool = False  # free batch, height and width; else exactly (1, 3, H, W)
    runs: int = 10  # timed calls per runtime for the latency row
    threads: int = 0  # CPU threads while timing (0: each runtime's default)


@dataclass
class Int8Plan:
    """What the INT8 models are calibrated on and, with ``max_drop``, the accuracy they must keep: their
    mAP50-95 on the val split of the dataset config ``validation`` within ``max_drop`` points of the float
    model's (layers are kept float until it holds)."""

    calibration: list[str]  # image files
    validation: dict | None = None
    max_drop: float | None = None


@dataclass
class QuantizationResult:
    """The INT8 models' checks against PyTorch and, with a max_drop, what each runtime's search kept float
    ({"onnx" | "openvino": BoundedResult})."""

    checks: list[RuntimeCheck]
    bounded: dict[str, BoundedResult] = field(default_factory=dict)

    def describe(self) -> str:
        return "\n".join([*(check.describe() for check in self.checks), INT8_NOTE])


def write_onnx(model: nn.Module, path: Path, images: torch.Tensor, settings: OnnxSettings) -> OnnxCheck:
    """Export the fused ``model`` to ``path`` at the size of ``images`` and check it (check_onnx)."""
    img_hw = tuple(images.shape[-2:])
    export_onnx(model, path, img_hw, settings.opset, settings.dynamic, model_metadata(model))
    return check_onnx(model, path, images, settings.runs, settings.threads)


def write_openvino(model: nn.Module, onnx_path: Path, images: torch.Tensor) -> RuntimeCheck:
    """The OpenVINO IR of the ONNX export ``onnx_path`` (openvino_xml_path), checked against ``model``."""
    xml = export_openvino(onnx_path)
    return compare_with_model(model, xml.parent, images, MAX_ONNX_RELATIVE_ERROR)


def write_int8(
    model: nn.Module, onnx_path: Path, images: torch.Tensor, plan: Int8Plan, openvino: bool
) -> QuantizationResult:
    """The INT8 ONNX model beside ``onnx_path`` (<stem>_int8.onnx) and, with ``openvino``, the INT8 IR of
    the FP32 IR that write_openvino wrote, each checked against ``model`` on ``images``; the head stays
    float (see utils.deploy.quantize)."""
    fp32 = onnx.load(str(onnx_path))
    kept = decode_tail_nodes(fp32)
    files = plan.calibration
    LOGGER.info("INT8: calibrated on %d images; the head stays float: %s", len(files), head(fp32, kept))
    img_size = int(images.shape[-1])
    target = None
    if plan.validation is not None:
        target = accuracy_target(onnx_path, plan.validation, img_size, plan.max_drop)
    int8_onnx = onnx_path.with_name(f"{onnx_path.stem}_int8.onnx")
    result = QuantizationResult([])
    if target is None:
        quantize_onnx(onnx_path, int8_onnx, files, img_size)
    else:
        result.bounded["onnx"] = quantize_onnx_within(onnx_path, int8_onnx, files, img_size, target)
        LOGGER.info(result.bounded["onnx"].describe())
    result.checks.append(compare_with_model(model, int8_onnx, images, None))
    if not openvino:
        return result
    int8_xml = openvino_xml_path(int8_onnx)
    metadata = read_metadata(fp32)  # the INT8 graph carries the FP32 file's metadata (quantize_onnx)
    if target is None:
        quantize_openvino(openvino_xml_path(onnx_path), int8_xml, files, img_size, kept)
    else:
        result.bounded["openvino"] = quantize_openvino_within(
            openvino_xml_path(onnx_path), int8_xml, files, img_size, kept, target, metadata
        )
        LOGGER.info(result.bounded["openvino"].describe())
    write_openvino_metadata(int8_xml.parent, metadata)
    result.checks.append(compare_with_model(model, int8_xml.parent, images, None))
    return result


def head(onnx_model: onnx.ModelProto, kept: list[str]) -> str:
    """The nodes ``kept`` float, in words: 'its 3 output convolutions and the 139 nodes of the box decode
    after them'."""
    op_types = {node.name: node.op_type for node in onnx_model.graph.node}
    convs = sum(op_types[name] == "Conv" for name in kept)
    return f"its {convs} output convolutions and the {len(kept) - convs} nodes of the box decode after them"


def accuracy_target(onnx_path: Path, data_config: dict, img_size: int, max_drop: float) -> AccuracyTarget:
    """mAP50-95 within ``max_drop`` points on the val split of ``data_config``, loaded as val.py loads it
    for the ONNX graph ``onnx_path`` (square letterboxes for a static graph)."""
    predictor = load_inference_model(onnx_path)
    batches = list(validation_loader(data_config, "val", img_size, 32, 0, predictor))
    return AccuracyTarget(batches, map_scorer(list(data_config["names"])), max_drop)
