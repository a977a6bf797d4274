"""LiteRT, formerly TFLite (``convert.py --tflite``: best_fused.tflite, best_fused_float16.tflite and with
--int8 best_fused_int8.tflite): litert-torch converts the fused model, ai-edge-quantizer casts its weights
to float16, and INT8 is PT2E of the trunk (utils.deploy.int8.pt2e) with the stem conv float too (LiteRT's
converter would otherwise make the graph's input itself INT8). The metadata is a zip appended to each file;
run by the LiteRT interpreter with its XNNPACK delegate."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.deploy.formats.base import EDGE_REQUIREMENTS, Artefact, ExportInputs, Format, Written
from utils.deploy.formats.common import flatbuffer_identifier, write_with_metadata
from utils.deploy.int8.pt2e import quantized_trunk
from utils.deploy.metadata import read_zip_metadata
from utils.errors import WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel

IDENTIFIER = b"TFL3"  # the flatbuffer's file identifier


class TFLiteInferenceModel(ArrayInferenceModel):
    """A LiteRT model (FP32, float16 weights or INT8) run by the LiteRT interpreter."""

    kind = "tflite"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        if flatbuffer_identifier(path) != IDENTIFIER:
            raise FORMAT.corrupt(path)
        metadata, shape = FORMAT.exported_metadata(path, read_zip_metadata(path, "--tflite"))
        FORMAT.require(f"running {path}", WeightsError)
        from ai_edge_litert.interpreter import Interpreter

        with FORMAT.refusing(path):  # ValueError / RuntimeError for a broken flatbuffer
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        super().__init__(path, metadata, device, shape)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.int8 = metadata.get("precision") == "int8"

    def run_array(self, array: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, array)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


def float16_weights(fp32: bytes) -> bytes:
    """The FP32 LiteRT model with float16 weights (dequantized to float32 when loaded, as TFLite's
    float16 quantization)."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    casting = quantizer.Quantizer(bytearray(fp32))
    casting.add_weight_only_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )  # fmt: skip
    return bytes(casting.quantize().quantized_model)


def int8_model(inputs: ExportInputs) -> bytes:
    from litert_torch import convert
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    float_modules = ("model.0", *inputs.float_modules)  # the stem stays float (see the module docstring)
    composite = quantized_trunk(
        inputs.model, inputs.example, inputs.calibration_images, quantizer, float_modules, fold_quantize=False
    )
    quant_config = QuantConfig(pt2e_quantizer=quantizer)
    return convert(composite, (inputs.example,), quant_config=quant_config).model_content()


class TFLiteFormat(Format):
    name = "tflite"
    title = "LiteRT (TFLite)"
    flag = "tflite"
    help = (
        "also write LiteRT models <stem>.tflite and <stem>_float16.tflite, with --int8 also "
        "<stem>_int8.tflite (litert-torch)"
    )
    packages = (("litert-torch", "litert_torch"), ("ai-edge-litert", "ai_edge_litert"),
                ("ai-edge-quantizer", "ai_edge_quantizer"))  # fmt: skip
    requirements = EDGE_REQUIREMENTS
    artefacts = (
        Artefact(".tflite"),
        Artefact("_float16.tflite", "float16"),
        Artefact("_int8.tflite", "int8"),
    )
    shown_as = ".tflite"

    def write(self, inputs: ExportInputs, staged: Path) -> Iterator[Written]:
        import litert_torch

        fp32 = litert_torch.convert(inputs.model.eval(), (inputs.example,)).model_content()
        contents = {"float32": fp32, "float16": float16_weights(fp32)}
        if inputs.calibration is not None:
            contents["int8"] = int8_model(inputs)
        for artefact in self.artefacts:
            if artefact.precision in contents:
                content = contents[artefact.precision]
                yield write_with_metadata(artefact.path(staged), content, artefact.precision, inputs)

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return TFLiteInferenceModel(path, device, threads)


FORMAT = TFLiteFormat()
