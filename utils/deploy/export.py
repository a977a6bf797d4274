"""Writing a detection model to ONNX and an ONNX export to an OpenVINO IR, in the format of
utils.deploy.metadata: each file stands alone, with the class names, stride and input size a loader needs.
Checking what was written against PyTorch is utils.deploy.verify's job."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from utils.deploy.metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    openvino_xml_path,
    read_metadata,
    write_folder_metadata,
    write_metadata,
)

LOGGER = logging.getLogger(__name__)


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """What a loader of the export needs to know of ``model``: class names, their number, the largest
    stride, and that the weights are the deploy (fused) form."""
    stride = int(model.stride.max())
    return {"names": list(model.names), "nc": int(model.nc), "stride": stride, "deploy": True}


def export_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` on the CPU in eval mode, for an exporter to trace and convert: exporting
    leaves the caller's model (its device, dtype, mode and weights) as it was."""
    return copy.deepcopy(model).float().cpu().eval()


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_hw: tuple[int, int],
    opset: int = 17,
    dynamic: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` (a float32 CPU copy in eval mode, export_copy) to ``path`` and check it with
    onnx.checker.

    img_hw: (height, width) of the example input; with ``dynamic`` batch, height and width are
    free axes, otherwise the graph takes exactly (1, 3, height, width).
    metadata: extra key/values stored as strings (JSON for non-strings) in metadata_props.
    """
    path = Path(path)
    model = export_copy(model)
    example = torch.zeros(1, 3, *img_hw)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 1: "anchors"},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The torch.export-based exporter needs onnxscript, which we do not depend on; the
        # TorchScript exporter handles this model fully.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx_model = onnx.load(str(path))
    write_metadata(onnx_model, {"dynamic": dynamic, "img_size": list(img_hw), **(metadata or {})})
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    LOGGER.debug("wrote %s (opset %d)", path, opset)
    return path


def export_openvino(onnx_path: Path, xml: Path | None = None) -> Path:
    """Convert an ONNX export to an OpenVINO IR (FP32 weights) at ``xml`` (default: openvino_xml_path), with
    the ONNX file's metadata (names, stride, input size) as metadata.yaml beside the .xml. Returns the .xml
    path."""
    import openvino as ov

    xml = xml or openvino_xml_path(onnx_path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    write_folder_metadata(xml.parent, read_metadata(onnx.load(str(onnx_path), load_external_data=False)))
    return xml
