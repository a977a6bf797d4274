"""ExecuTorch (``convert.py --executorch``: best_fused.pte and with --int8 best_fused_int8.pte): a program
lowered to the XNNPACK delegate, INT8 by PT2E of the trunk with the XNNPACK quantizer
(utils.deploy.int8.pt2e). The metadata is a zip appended to each file; run by the executorch runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from utils.deploy.formats.base import EDGE_REQUIREMENTS, Artefact, ExportInputs, Format, Written
from utils.deploy.formats.common import flatbuffer_identifier, import_quietly, write_with_metadata
from utils.deploy.int8.pt2e import quantized_trunk
from utils.deploy.metadata import read_zip_metadata
from utils.errors import WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel


class ExecuTorchInferenceModel(ArrayInferenceModel):
    """An ExecuTorch program (FP32 or INT8) run by the executorch runtime."""

    kind = "executorch"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        if not flatbuffer_identifier(path).startswith(b"ET"):  # its runtime aborts the process on a foreign
            raise FORMAT.corrupt(path)  # file rather than raise: check first
        metadata, shape = FORMAT.exported_metadata(path, read_zip_metadata(path, "--executorch"))
        FORMAT.require(f"running {path}", WeightsError)
        with FORMAT.refusing(path):
            runtime = import_quietly("executorch.runtime", "torch.utils._pytree").Runtime.get()
            self.method = runtime.load_program(str(path)).load_method("forward")
        super().__init__(path, metadata, device, shape)
        self.int8 = metadata.get("precision") == "int8"

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return self.method.execute([torch.from_numpy(array)])[0].numpy().copy()


def program(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` exported on ``example`` and lowered to XNNPACK, as an ExecuTorch program's bytes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad():
        exported = torch.export.export(model.eval(), (example,))
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    return lowered.buffer


class ExecuTorchFormat(Format):
    name = "executorch"
    title = "ExecuTorch"
    runtime_title = "ExecuTorch XNNPACK"
    flag = "executorch"
    help = "also write an ExecuTorch program <stem>.pte (XNNPACK), with --int8 also <stem>_int8.pte"
    packages = (("executorch", "executorch"),)
    requirements = EDGE_REQUIREMENTS
    artefacts = (Artefact(".pte"), Artefact("_int8.pte", "int8"))
    shown_as = ".pte"

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        fp32, int8 = self.artefacts
        yield write_with_metadata(fp32.path(staged), program(inputs.model, inputs.example), "float32", inputs)
        if inputs.calibration is not None:
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            model = quantized_trunk(
                inputs.model, inputs.example, inputs.calibration_images, quantizer, inputs.float_modules
            )
            yield write_with_metadata(int8.path(staged), program(model, inputs.example), "int8", inputs)

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return ExecuTorchInferenceModel(path, device, threads)


FORMAT = ExecuTorchFormat()
