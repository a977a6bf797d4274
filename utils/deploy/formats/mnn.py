"""MNN (``convert.py --mnn``: best_fused.mnn): MNN's converter from the published ONNX graph, through its
compiled entry point (the mnnconvert script also sends usage logs over the network and pip-installs a
logging SDK); the metadata rides in the model's bizCode. Run by MNN's module API on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.deploy.formats.base import EDGE_REQUIREMENTS, Artefact, ExportInputs, Format, Written
from utils.errors import ConversionError, WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel


class MnnInferenceModel(ArrayInferenceModel):
    """An MNN model run on the CPU in high precision."""

    kind = "mnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        FORMAT.require(f"running {path}", WeightsError)
        import MNN

        with FORMAT.refusing(path):  # SystemError for a broken file, JSONDecodeError for a foreign one
            config = {"backend": "CPU", "precision": "high", "numThread": threads or 4}
            runtime = MNN.nn.create_runtime_manager((config,))
            self.module = MNN.nn.load_module_from_file(str(path), [], [], runtime_manager=runtime)
            metadata = json.loads(self.module.get_info()["bizCode"])
        metadata, shape = FORMAT.exported_metadata(path, metadata)
        super().__init__(path, metadata, device, shape)
        self.expr = MNN.expr

    def run_array(self, array: np.ndarray) -> np.ndarray:
        expr = self.expr
        output = self.module.forward(expr.const(array, list(array.shape), expr.NCHW))
        return np.array(expr.convert(output, expr.NCHW).read()).copy()


class MnnFormat(Format):
    name = "mnn"
    title = "MNN"
    flag = "mnn"
    help = "also write an MNN model <stem>.mnn from the ONNX (implies --onnx)"
    packages = (("MNN", "MNN"),)
    requirements = EDGE_REQUIREMENTS
    artefacts = (Artefact(".mnn"),)
    shown_as = ".mnn"
    reads_onnx = True

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        import _tools as mnn_tools  # MNN's compiled converter (the MNN package installs it top-level)

        path = self.artefacts[0].path(staged)
        if inputs.onnx_path is None:
            raise ConversionError("--mnn converts the ONNX export; it needs --onnx.")
        biz_code = json.dumps(inputs.static_metadata, separators=(",", ":"))
        arguments = ["mnnconvert", "-f", "ONNX", "--modelFile", str(inputs.onnx_path),
                     "--MNNModel", str(path), "--bizCode", biz_code]  # fmt: skip
        mnn_tools.mnnconvert(arguments)
        if not path.is_file():
            raise ConversionError(f"MNN's converter wrote no model from {inputs.onnx_path}; report it.")
        yield Written(path, "float32")

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return MnnInferenceModel(path, device, threads)


FORMAT = MnnFormat()
