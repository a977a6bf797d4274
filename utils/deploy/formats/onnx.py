"""ONNX: the fused model as an ONNX graph (``convert.py --onnx``: best_fused.onnx), checked for leftover
branches and timed beside PyTorch, and with --int8 ONNX Runtime's static INT8 of it (best_fused_int8.onnx,
utils.deploy.int8.onnx_runtime); run by ONNX Runtime (its CUDA provider where the device is a GPU and it
has one). The metadata is in the graph's metadata_props. OpenVINO and MNN convert the published graph."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from utils.deploy.export import export_copy
from utils.deploy.formats.base import Artefact, ExportInputs, Format, Written
from utils.deploy.graph import decode_tail_nodes
from utils.deploy.int8.onnx_runtime import quantize_onnx, quantize_onnx_within
from utils.deploy.metadata import INPUT_NAME, OUTPUT_NAME, check_metadata, read_metadata, write_metadata
from utils.deploy.verify import check_onnx, compare_with_model
from utils.inference import ArrayInferenceModel, InferenceModel

LOGGER = logging.getLogger(__name__)

# Ops only a quantized ONNX graph holds (QDQ format, as utils.deploy.int8.onnx_runtime writes, or QOperator)
QUANTIZED_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"})


class OnnxInferenceModel(ArrayInferenceModel):
    """An onnxruntime session over a graph written by export_onnx (FP32 or INT8)."""

    kind = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        import onnxruntime as ort

        metadata, quantized = read_graph(path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        # Idle worker threads would otherwise spin on the CPU between calls, slowing whatever runs next
        # (PyTorch in an interleaved benchmark, the data loader in val.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per physical core)
        with FORMAT.refusing(path):  # onnxruntime raises its own Fail/InvalidGraph types
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        super().__init__(path, metadata, device, list(self.session.get_inputs()[0].shape))
        self.input_name = self.session.get_inputs()[0].name
        self.int8 = quantized

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: array})[0]


def read_graph(path: Path) -> tuple[dict[str, Any], bool]:
    """(the checked metadata, whether the graph is quantized) of the ONNX file ``path``; WeightsError (one
    sentence) for a file that is not an ONNX model."""
    import onnx

    with FORMAT.refusing(path):  # protobuf raises DecodeError, RuntimeError, ... for a broken file
        onnx_model = onnx.load(str(path), load_external_data=False)
        metadata = read_metadata(onnx_model)
    quantized = any(node.op_type in QUANTIZED_ONNX_OPS for node in onnx_model.graph.node)
    return check_metadata(path, metadata, "--onnx"), quantized


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_hw: tuple[int, int],
    opset: int = 17,
    dynamic: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` (exported from a float32 CPU copy in eval mode, export_copy) to ``path`` and check it
    with onnx.checker.

    img_hw: (height, width) of the example input; with ``dynamic`` batch, height and width are
    free axes, otherwise the graph takes exactly (1, 3, height, width).
    metadata: extra key/values stored as strings (JSON for non-strings) in metadata_props.
    """
    import onnx

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
        torch.onnx.export(model, (example,), str(path), opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)  # fmt: skip
    onnx_model = onnx.load(str(path))
    write_metadata(onnx_model, {"dynamic": dynamic, "img_size": list(img_hw), **(metadata or {})})
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    LOGGER.debug("wrote %s (opset %d)", path, opset)
    return path


def head(onnx_path: Path) -> str:
    """The nodes INT8 keeps float, in words: 'its 3 output convolutions and the 139 nodes of the box decode
    after them'."""
    import onnx

    graph = onnx.load(str(onnx_path))
    kept = decode_tail_nodes(graph)
    op_types = {node.name: node.op_type for node in graph.graph.node}
    convs = sum(op_types[name] == "Conv" for name in kept)
    return f"its {convs} output convolutions and the {len(kept) - convs} nodes of the box decode after them"


class OnnxFormat(Format):
    name = "onnx"
    title = "ONNX"
    runtime_title = "ONNX Runtime"
    flag = "onnx"
    help = "also export <output stem>.onnx and check it"
    artefacts = (Artefact(".onnx"), Artefact("_int8.onnx", "int8"))
    shown_as = ".onnx"
    quiet = False  # the INT8 search logs its progress (and ONNX Runtime prints nothing of its own)

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        """The FP32 graph and, once it is published, its INT8 model (with --max-drop, the fewest
        convolutions float that hold the bound)."""
        settings, fp32 = inputs.settings, self.artefacts[0].path(staged)
        img_hw = tuple(inputs.example.shape[-2:])
        export_onnx(inputs.model, fp32, img_hw, settings.opset, settings.dynamic, inputs.metadata)
        yield Written(fp32, "float32")
        if inputs.calibration is None:
            return
        files, int8 = inputs.calibration, self.artefacts[1].path(staged)
        LOGGER.info(
            "INT8: calibrated on %d images; the head stays float: %s", len(files), head(inputs.onnx_path)
        )
        target = inputs.target()
        if target is None:
            quantize_onnx(inputs.onnx_path, int8, files, inputs.img_size)
            yield Written(int8, "int8")
            return
        bounded = quantize_onnx_within(
            inputs.onnx_path, int8, files, inputs.img_size, target, self.cpu_session
        )
        LOGGER.info(bounded.describe())
        yield Written(int8, "int8", bounded)

    def check(
        self, model: nn.Module, written: Written, images: torch.Tensor, final: Path, inputs: ExportInputs
    ):
        """The FP32 graph: no branch left, within the tolerance, timed beside PyTorch (check_onnx); INT8:
        measured."""
        session = self.load(written.path, torch.device("cpu"), inputs.settings.threads)
        if written.precision == "int8":
            return compare_with_model(model, session, images, None, final)
        return check_onnx(model, session, images, inputs.settings.runs, inputs.settings.threads, final)

    def published(self, inputs: ExportInputs, written: Written, final: Path) -> None:
        if written.precision == "float32":
            inputs.onnx_path = final
        elif written.bounded is not None:
            inputs.kept = written.bounded.kept_float

    def cpu_session(self, path: Path) -> InferenceModel:
        return self.load(path, torch.device("cpu"))

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return OnnxInferenceModel(path, device, threads)


FORMAT = OnnxFormat()
