"""CoreML (``convert.py --coreml``: best_fused.mlpackage, an FP32 ML Program): coremltools converts the
traced model, the metadata in its user-defined metadata. Core ML predicts only on macOS: elsewhere
convert.py checks the written spec instead of running it, and loading it is refused in one sentence."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from utils.deploy.formats.base import EDGE_REQUIREMENTS, Artefact, ExportInputs, Format, Written
from utils.deploy.formats.common import import_quietly, traced
from utils.deploy.metadata import INPUT_NAME, OUTPUT_NAME, decoded, encoded
from utils.errors import ConversionError, WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel

OFF_MACOS = "Core ML runs models only on macOS"


def import_coremltools():
    """coremltools, without the warnings its import logs about the versions it was tested with and the
    native libraries it has only on macOS (it converts and reads specs without them)."""
    return import_quietly("coremltools", "coremltools")


class CoreMLInferenceModel(ArrayInferenceModel):
    """A CoreML ML Program, run by Core ML on macOS."""

    kind = "coreml"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        if platform.system() != "Darwin":
            raise WeightsError(
                f"{path} is a CoreML model, and {OFF_MACOS}; run it on a Mac, or pass another export of the "
                "checkpoint here."
            )
        FORMAT.require(f"running {path}", WeightsError)
        with FORMAT.refusing(path):
            self.mlmodel = import_coremltools().models.MLModel(str(path))
            metadata = decoded(self.mlmodel.get_spec().description.metadata.userDefined.items())
        metadata, shape = FORMAT.exported_metadata(path, metadata)
        super().__init__(path, metadata, device, shape)

    def run_array(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(self.mlmodel.predict({INPUT_NAME: array})[OUTPUT_NAME], dtype=np.float32)


@dataclass
class SpecCheck:
    """What is checked of a CoreML model off macOS: its declared input and output and its convolution count
    against the fused model's."""

    path: str
    kind: str
    inputs: dict[str, list[int]]
    outputs: list[str]
    convolutions: int
    ops: int

    def describe(self) -> str:
        inputs = ", ".join(f"{name} {tuple(shape)}" for name, shape in self.inputs.items())
        return (
            f"{self.kind} {self.path}: spec checked (input {inputs}, output {', '.join(self.outputs)}, "
            f"{self.convolutions} convolutions as the fused model, {self.ops} ops); not scored here: "
            f"{OFF_MACOS}"
        )


def check_spec(model: nn.Module, path: Path, name: Path) -> SpecCheck:
    """Read back the written ML Program's spec: one input 'images' of the example's shape, one output, as
    many convolutions as the fused model has. ConversionError (naming ``name``) when it is not so."""
    spec = import_coremltools().models.MLModel(str(path), skip_model_load=True).get_spec()
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    ops = [op.type for function in spec.mlProgram.functions.values()
           for block in function.block_specializations.values() for op in block.operations]  # fmt: skip
    convolutions = sum(op == "conv" for op in ops)
    expected = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    if list(inputs) != [INPUT_NAME] or outputs != [OUTPUT_NAME] or convolutions != expected:
        raise ConversionError(
            f"{name} declares inputs {list(inputs)}, outputs {outputs} and {convolutions} convolutions, not "
            f"'{INPUT_NAME}', '{OUTPUT_NAME}' and the fused model's {expected}; report the model's config."
        )
    return SpecCheck(str(name), "coreml", inputs, outputs, convolutions, sum(op != "const" for op in ops))


class CoreMLFormat(Format):
    name = "coreml"
    title = "CoreML"
    flag = "coreml"
    help = "also write a CoreML ML Program <stem>.mlpackage (runs on macOS only)"
    packages = (("coremltools", "coremltools"),)
    requirements = EDGE_REQUIREMENTS
    artefacts = (Artefact(".mlpackage"),)
    shown_as = ".mlpackage"

    def unavailable(self) -> str | None:
        return None if platform.system() == "Darwin" else f"written, spec checked; {OFF_MACOS}"

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        ct = import_coremltools()
        path = self.artefacts[0].path(staged)
        mlmodel = ct.convert(
            traced(inputs.model, inputs.example),
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(inputs.example.shape))],
            outputs=[ct.TensorType(name=OUTPUT_NAME)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS15,
        )
        for key, value in inputs.static_metadata.items():
            mlmodel.user_defined_metadata[key] = encoded(value)
        mlmodel.save(str(path))
        yield Written(path, "float32")

    def check(
        self, model: nn.Module, written: Written, images: torch.Tensor, final: Path, inputs: ExportInputs
    ):
        """Run beside PyTorch on macOS; its spec checked elsewhere (check_spec)."""
        if self.unavailable():
            return check_spec(model, written.path, final)
        return super().check(model, written, images, final, inputs)

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return CoreMLInferenceModel(path, device, threads)


FORMAT = CoreMLFormat()
