"""Running the edge formats of utils.deploy.edge through the same face as .pt, .onnx and OpenVINO
(utils.inference.InferenceModel): TorchScript, NCNN, LiteRT (TFLite), ExecuTorch, MNN and CoreML.

Each takes a static (1, 3, H, W) float input and gives the decoded (1, N, 5 + nc) predictions, so
ArrayInferenceModel pads smaller inputs and runs larger batches one image at a time. A file that is
corrupt or not of its format is refused in one sentence before its runtime sees it where that runtime
would abort the process (ExecuTorch) rather than raise, and so is metadata that is damaged or of the wrong
types (utils.deploy.metadata.check_metadata), read before the runtime is needed where it sits outside the
model (LiteRT, ExecuTorch, NCNN).
"""

from __future__ import annotations

import json
import logging
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.deploy.edge import EDGE_FORMATS, EdgeFormat
from utils.deploy.metadata import (
    NCNN_PARAM,
    NCNN_WEIGHTS,
    check_metadata,
    parse_json_metadata,
    read_folder_metadata,
    read_zip_metadata,
)
from utils.errors import WeightsError
from utils.inference import ArrayInferenceModel

LOGGER = logging.getLogger(__name__)


def corrupt(path: Path, edge_format: EdgeFormat) -> WeightsError:
    return WeightsError(
        f"{path} is corrupt or is no {edge_format.title} model; "
        f"re-export it with convert.py --{edge_format.flag}."
    )


def exported_metadata(path: Path, metadata: Any, edge_format: EdgeFormat) -> tuple[dict, list[int]]:
    """The metadata read from an export (None: none) once it is RepYOLO's, with class names, stride and
    input size of their types (check_metadata), and the (1, 3, H, W) input the export was written for;
    WeightsError (one sentence naming the file) otherwise."""
    if not metadata:
        raise WeightsError(
            f"{path} carries no RepYOLO metadata (class names, stride, input size), so it was not exported "
            f"by RepYOLO; export the checkpoint with convert.py --{edge_format.flag}."
        )
    metadata = check_metadata(path, metadata, f"--{edge_format.flag}", ("names", "stride", "img_size"))
    return metadata, [1, 3, *metadata["img_size"]]


def flatbuffer_identifier(path: Path) -> bytes:
    """The file identifier of a flatbuffer file, bytes 4 to 8: b"TFL3" for LiteRT, b"ET12" for ExecuTorch."""
    with open(path, "rb") as file:
        return file.read(8)[4:]


def require_runtime(path: Path, edge_format: EdgeFormat) -> None:
    missing = edge_format.missing()
    if missing:
        raise WeightsError(
            f"running {path} needs {', '.join(missing)}, which is not installed; "
            "pip install -r requirements-edge.txt."
        )


class TorchScriptInferenceModel(ArrayInferenceModel):
    """A traced model (convert.py --torchscript) with its metadata in the extra file config.txt."""

    kind = "torchscript"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        edge_format = EDGE_FORMATS["torchscript"]
        extra = {"config.txt": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as error:  # a broken zip or pickle: RuntimeError, ...
            LOGGER.debug("torch.jit.load(%s) failed: %s", path, error)
            raise corrupt(path, edge_format) from None
        text = extra["config.txt"]
        metadata = parse_json_metadata(path, text, "config.txt", "--torchscript") if text else None
        metadata, shape = exported_metadata(path, metadata, edge_format)
        super().__init__(path, metadata, device, shape)

    def run_array(self, array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(array)).numpy()


class NcnnInferenceModel(ArrayInferenceModel):
    """An NCNN model folder (convert.py --ncnn): model.ncnn.param, model.ncnn.bin and metadata.yaml; run
    in float32 on the CPU (no float16 or bfloat16 storage, which NCNN picks by default where it can)."""

    kind = "ncnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        edge_format = EDGE_FORMATS["ncnn"]
        param, weights = path / NCNN_PARAM, path / NCNN_WEIGHTS
        if not (param.is_file() and weights.is_file()):
            raise WeightsError(
                f"{path} should hold {NCNN_PARAM} and {NCNN_WEIGHTS}; re-export it with convert.py --ncnn."
            )
        metadata = read_folder_metadata(path, NCNN_PARAM, "--ncnn")
        metadata, shape = exported_metadata(path, metadata, edge_format)
        require_runtime(path, edge_format)
        import ncnn

        with open(param, "rb") as file:
            magic = file.readline().strip()
        self.net = ncnn.Net()
        options = self.net.opt
        options.use_vulkan_compute = False
        for name in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(options, name, False)
        if threads:
            options.num_threads = threads
        loaded = magic == b"7767517" and self.net.load_param(str(param)) == 0  # NCNN's param magic
        if not (loaded and self.net.load_model(str(weights)) == 0):
            raise corrupt(path, edge_format)
        super().__init__(path, metadata, device, shape)
        self.ncnn = ncnn
        self.input_name, self.output_name = self.net.input_names()[0], self.net.output_names()[0]

    def run_array(self, array: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(array[0])  # NCNN takes one (C, H, W) image; kept alive while it runs
        with self.net.create_extractor() as extractor:
            extractor.input(self.input_name, self.ncnn.Mat(image))
            status, output = extractor.extract(self.output_name)
            if status != 0:
                raise WeightsError(f"NCNN could not run {self.path} (status {status}); re-export it.")
            return np.array(output)[None].copy()  # the Mat's memory goes with the extractor


class TFLiteInferenceModel(ArrayInferenceModel):
    """A LiteRT (TFLite) model (convert.py --tflite, FP32, FP16 or INT8) run by the LiteRT interpreter
    with its XNNPACK delegate; the metadata is the zip appended to the file."""

    kind = "tflite"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        edge_format = EDGE_FORMATS["tflite"]
        if flatbuffer_identifier(path) != b"TFL3":
            raise corrupt(path, edge_format)
        metadata, shape = exported_metadata(path, read_zip_metadata(path, "--tflite"), edge_format)
        require_runtime(path, edge_format)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as error:  # ValueError / RuntimeError for a broken flatbuffer
            LOGGER.debug("LiteRT could not load %s: %s", path, error)
            raise corrupt(path, edge_format) from None
        super().__init__(path, metadata, device, shape)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.int8 = metadata.get("precision") == "int8"

    def run_array(self, array: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, array)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


class ExecuTorchInferenceModel(ArrayInferenceModel):
    """An ExecuTorch program (convert.py --executorch, FP32 or INT8, XNNPACK delegate) run by the
    executorch runtime; the metadata is the zip appended to the file."""

    kind = "executorch"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        edge_format = EDGE_FORMATS["executorch"]
        if not flatbuffer_identifier(path).startswith(b"ET"):  # its runtime aborts the process on a foreign
            raise corrupt(path, edge_format)  # file rather than raise: check first
        metadata, shape = exported_metadata(path, read_zip_metadata(path, "--executorch"), edge_format)
        require_runtime(path, edge_format)
        from utils.deploy.edge import import_executorch_runtime

        try:
            runtime = import_executorch_runtime().Runtime.get()
            self.method = runtime.load_program(str(path)).load_method("forward")
        except Exception as error:
            LOGGER.debug("ExecuTorch could not load %s: %s", path, error)
            raise corrupt(path, edge_format) from None
        super().__init__(path, metadata, device, shape)
        self.int8 = metadata.get("precision") == "int8"

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(array)])[0].numpy().copy()


class MnnInferenceModel(ArrayInferenceModel):
    """An MNN model (convert.py --mnn) run by MNN's module API on the CPU; the metadata is its bizCode."""

    kind = "mnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        edge_format = EDGE_FORMATS["mnn"]
        require_runtime(path, edge_format)
        import MNN

        try:
            config = {"backend": "CPU", "precision": "high", "numThread": threads or 4}
            runtime = MNN.nn.create_runtime_manager((config,))
            self.module = MNN.nn.load_module_from_file(str(path), [], [], runtime_manager=runtime)
            metadata = json.loads(self.module.get_info()["bizCode"])
        except Exception as error:  # SystemError for a broken file, JSONDecodeError for a foreign one
            LOGGER.debug("MNN could not load %s: %s", path, error)
            raise corrupt(path, edge_format) from None
        metadata, shape = exported_metadata(path, metadata, edge_format)
        super().__init__(path, metadata, device, shape)
        self.expr = MNN.expr

    def run_array(self, array: np.ndarray) -> np.ndarray:
        expr = self.expr
        output = self.module.forward(expr.const(array, list(array.shape), expr.NCHW))
        return np.array(expr.convert(output, expr.NCHW).read()).copy()


class CoreMLInferenceModel(ArrayInferenceModel):
    """A CoreML ML Program (convert.py --coreml). Core ML predicts only on macOS; elsewhere loading it is
    refused in one sentence (convert.py checks its spec instead)."""

    kind = "coreml"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        edge_format = EDGE_FORMATS["coreml"]
        if platform.system() != "Darwin":
            raise WeightsError(
                f"{path} is a CoreML model, and Core ML runs models only on macOS; run it on a Mac, or pass "
                "another export of the checkpoint (.onnx, .tflite, ...) here."
            )
        require_runtime(path, edge_format)
        from utils.deploy.edge import import_coremltools

        try:
            self.mlmodel = import_coremltools().models.MLModel(str(path))
            metadata = coreml_metadata(self.mlmodel.get_spec())
        except Exception as error:
            LOGGER.debug("coremltools could not load %s: %s", path, error)
            raise corrupt(path, edge_format) from None
        metadata, shape = exported_metadata(path, metadata, edge_format)
        super().__init__(path, metadata, device, shape)

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(self.mlmodel.predict({"images": array})["output"], dtype=np.float32)


def coreml_metadata(spec) -> dict:
    """The user-defined metadata of a CoreML spec, JSON values decoded."""
    out = {}
    for key, value in spec.description.metadata.userDefined.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


RUNTIMES = {
    "torchscript": TorchScriptInferenceModel,
    "ncnn": NcnnInferenceModel,
    "tflite": TFLiteInferenceModel,
    "executorch": ExecuTorchInferenceModel,
    "mnn": MnnInferenceModel,
    "coreml": CoreMLInferenceModel,
}


EXPORT_NAMES = (".torchscript", "*_ncnn_model/", ".tflite", ".pte", ".mnn", ".mlpackage")
FILE_SUFFIXES = {".torchscript": "torchscript", ".tflite": "tflite", ".pte": "executorch", ".mnn": "mnn"}


def edge_format_of(path: Path) -> str | None:
    """The edge format a weights path is, by its name (and for a folder, what it holds), else None."""
    suffix = path.suffix.lower()
    if path.is_dir():
        if suffix == ".mlpackage":
            return "coreml"
        if (path / NCNN_PARAM).exists() or path.name.endswith("_ncnn_model"):
            return "ncnn"
        return None
    return FILE_SUFFIXES.get(suffix)
