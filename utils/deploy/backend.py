"""One loader for every kind of weights that val.py and detect.py accept.

``load_inference_model(weights)`` takes a training-form or fused PyTorch checkpoint (.pt), an ONNX
export (.onnx, FP32 or INT8, run with onnxruntime), an OpenVINO IR (a ``*_openvino_model/`` folder or
its .xml, FP32 or INT8) or an edge export (utils.deploy.edge_runtimes) and returns an
``InferenceModel`` (utils.inference): call it on a float tensor (B, 3, H, W), RGB, 0..1, and get the
decoded predictions (B, N, 5 + nc) as a torch tensor (cx, cy, w, h in input pixels, objectness, class
scores), whatever ran underneath.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from utils.deploy.edge_runtimes import EXPORT_NAMES, RUNTIMES, edge_format_of
from utils.deploy.metadata import check_metadata, read_folder_metadata, read_metadata
from utils.device import half_dtype, select_device
from utils.errors import WeightsError, WeightsNotFoundError
from utils.inference import ArrayInferenceModel, InferenceModel, TorchInferenceModel
from utils.yolov5_checkpoint import missing_release_message

LOGGER = logging.getLogger(__name__)

# Ops that only a quantized ONNX graph holds (QDQ format, as utils.deploy.quantize writes, or QOperator)
QUANTIZED_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"})


class OnnxInferenceModel(ArrayInferenceModel):
    """An onnxruntime session over a graph exported by utils.deploy.export.export_onnx (FP32 or INT8)."""

    kind = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        import onnx
        import onnxruntime as ort

        try:
            onnx_model = onnx.load(str(path), load_external_data=False)
            metadata = read_metadata(onnx_model)
        except Exception as error:  # protobuf raises DecodeError, RuntimeError, ... for a broken file
            LOGGER.debug("onnx.load(%s) failed: %s", path, error)
            raise WeightsError(
                f"{path} is corrupt or not an ONNX model; re-export it with convert.py."
            ) from None
        metadata = check_metadata(path, metadata, "--onnx")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        # Idle worker threads would otherwise spin on the CPU between calls, slowing whatever runs next
        # (PyTorch in an interleaved benchmark, the data loader in val.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per physical core)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            LOGGER.debug("onnxruntime could not load %s: %s", path, error)
            raise WeightsError(
                f"{path} is not a graph onnxruntime can run; re-export it with convert.py."
            ) from None
        super().__init__(path, metadata, device, list(self.session.get_inputs()[0].shape))
        self.input_name = self.session.get_inputs()[0].name
        self.int8 = any(node.op_type in QUANTIZED_ONNX_OPS for node in onnx_model.graph.node)

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: array})[0]


class OpenVINOInferenceModel(ArrayInferenceModel):
    """An OpenVINO IR (a ``*_openvino_model/`` folder with the .xml, .bin and metadata.yaml that
    utils.deploy.export.export_openvino writes), compiled for the CPU."""

    kind = "openvino"

    def __init__(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> None:
        import openvino as ov

        xml = openvino_xml(path)
        half_precision = half_dtype(torch.device("cpu")) if half else None  # OpenVINO runs on the CPU
        metadata = read_folder_metadata(xml.parent, xml.name, "--openvino")
        try:
            core = ov.Core()
            network = core.read_model(str(xml))
            compiled = core.compile_model(network, "CPU", openvino_cpu_config(threads, half))
        except Exception as error:  # OpenVINO raises RuntimeError for unreadable IR
            LOGGER.debug("OpenVINO could not load %s: %s", xml, error)
            raise WeightsError(
                f"{xml} is corrupt or not an OpenVINO IR; re-export it with convert.py."
            ) from None
        self._attach(compiled, metadata, device, xml)
        self.half_precision = half_precision
        self.int8 = any(op.get_type_name() == "FakeQuantize" for op in network.get_ops())  # NNCF's INT8

    @classmethod
    def from_compiled(
        cls, compiled, metadata: dict, device: torch.device, name: str
    ) -> OpenVINOInferenceModel:
        """Wrap an already compiled OpenVINO model (NNCF's accuracy control hands out such models) with
        the export ``metadata`` (names, stride) of the IR it came from; ``name`` stands for its path."""
        self = cls.__new__(cls)
        self._attach(compiled, metadata, device, Path(name))
        return self

    def _attach(self, compiled, metadata: dict, device: torch.device, path: Path) -> None:
        dims = compiled.inputs[0].get_partial_shape()
        shape = [dim.get_length() if dim.is_static else None for dim in dims]
        super().__init__(path, metadata, device, shape)
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return self.request.infer({0: array})[self.compiled.output(0)].copy()


def openvino_cpu_config(threads: int = 0, half: bool = False) -> dict:
    """OpenVINO CPU compile settings: f32 precision (the CPU plugin would otherwise pick bf16 where the
    processor has it, off by ~1e-3 from PyTorch), or bf16 with ``half``, and ``threads`` inference
    threads (0: its default)."""
    config = {"INFERENCE_PRECISION_HINT": "bf16" if half else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def openvino_xml(path: Path) -> Path:
    """The .xml of an IR given as its folder or as the .xml itself."""
    if path.is_dir():
        found = sorted(path.glob("*.xml"))
        if len(found) != 1:
            raise WeightsError(
                f"{path} should hold exactly one OpenVINO .xml, not {len(found)}; pass the .xml."
            )
        return found[0]
    return path


def load_inference_model(
    weights: str | Path, device: str | torch.device = "cpu", threads: int = 0, half: bool = False
) -> InferenceModel:
    """Load a .pt checkpoint (training form or fused), an .onnx export, an OpenVINO IR (its folder or .xml)
    or an edge export of convert.py (.torchscript, *_ncnn_model/, .tflite, .pte, .mnn, .mlpackage: see
    utils.deploy.edge_runtimes) for inference.

    threads: intra-op threads of onnxruntime / OpenVINO (0: their default); PyTorch uses its global setting.
    half: yolov5's --half: PyTorch weights in float16 on CUDA or bfloat16 on a CPU that computes it
    natively, an OpenVINO IR with bf16 inference precision; DeviceError where the device has no fast
    half precision, WeightsError for an .onnx (onnxruntime runs the graph as exported).

    Raises WeightsError (one sentence naming the file and the fix) for anything it cannot load.
    """
    path = Path(weights)
    device = select_device(device)
    if not path.exists():
        raise WeightsNotFoundError(
            missing_release_message(path)
            or f"weights {path} not found; pass an existing .pt checkpoint, .onnx file or OpenVINO model "
            "folder."
        )
    suffix = path.suffix.lower()
    edge_format = edge_format_of(path)
    if edge_format is not None:
        if half:
            raise WeightsError(
                f"--half runs .pt weights and OpenVINO IRs in half precision, but {path} runs as exported; "
                "drop --half (convert.py --tflite writes a float16 LiteRT model)."
            )
        model = RUNTIMES[edge_format](path, device, threads)
    elif path.is_dir() or suffix == ".xml":
        model = OpenVINOInferenceModel(path, device, threads, half)
    elif suffix == ".onnx":
        if half:
            raise WeightsError(
                f"--half runs .pt weights and OpenVINO IRs in half precision, but onnxruntime runs {path} "
                "as exported; drop --half, or pass the fused .pt or its OpenVINO IR (convert.py --openvino)."
            )
        model = OnnxInferenceModel(path, device, threads)
    elif suffix in (".pt", ".pth"):
        from utils.checkpoint import load_model

        network, ckpt = load_model(path, device=device)
        model = TorchInferenceModel(network, device, half_dtype(device) if half else None)
        recorded = (ckpt.get("opt") or {}).get("img_size")
        model.train_img_size = int(recorded) if recorded else None
    else:
        raise WeightsError(
            f"weights {path} are not a .pt checkpoint, an .onnx file, an OpenVINO IR or an export of "
            f"convert.py ({', '.join(EXPORT_NAMES)}); pass one of those."
        )
    LOGGER.debug("loaded %s (%s, %d classes, stride %d)", path, model.kind, model.nc, model.stride)
    if model.half:
        LOGGER.info(f"--half: {path} runs in {str(model.half_precision).removeprefix('torch.')}.")
    return model
