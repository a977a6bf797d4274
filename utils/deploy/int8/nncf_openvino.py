"""OpenVINO's INT8: NNCF's post-training quantization of an IR (mixed preset: symmetric weights, asymmetric
activations), calibrated on real images, the head kept float (as utils.deploy.int8.onnx_runtime says why);
with ``--max-drop``, NNCF's accuracy-controlled quantization (``nncf.quantize_with_accuracy_control``) does
the search: it ranks its quantizer groups by their effect on our metric and reverts them to float, most
harmful first, until the drop is within bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from utils.deploy.int8.bounded import AccuracyTarget, BoundedResult
from utils.deploy.int8.calibration import calibration_batches
from utils.inference import InferenceModel

Runtime = Callable[[Any], InferenceModel]  # an IR's .xml (Path) or a compiled model -> its predictor


def quantize_openvino(
    fp32_xml: Path, int8_xml: Path, files: list[str], img_size: int, kept_float: list[str]
) -> list[str]:
    """NNCF post-training quantization of an OpenVINO IR (mixed preset: symmetric weights, asymmetric
    activations), the ``kept_float`` nodes (ONNX names, kept by the conversion) left float; saved as
    ``int8_xml``. Returns the names it kept float."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(fp32_xml))
    ignored = openvino_names(model, kept_float)
    dataset = nncf.Dataset(list(calibration_batches(files, img_size)))
    quantized = nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(files),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    int8_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)
    return ignored


def openvino_names(model, onnx_names: list[str]) -> list[str]:
    """The ops of an OpenVINO model converted from ONNX that stand for ``onnx_names``: a Conv becomes
    "<name>/WithoutBiases" (the Convolution) and "<name>" (its bias Add); other ops keep their name."""
    present = {op.get_friendly_name() for op in model.get_ops()}
    wanted = [variant for name in onnx_names for variant in (name, f"{name}/WithoutBiases")]
    return [name for name in wanted if name in present]


def float_convolutions(model) -> list[str]:
    """Names of the Convolution ops of an OpenVINO model whose weights are float: no FakeQuantize and no
    8-bit constant on the weight input's path (NNCF's quantized weights come as either)."""

    def quantized(node) -> bool:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().bitwidth <= 8
        if kind in ("Convert", "Subtract", "Multiply", "Reshape"):
            return any(quantized(port.get_source_output().get_node()) for port in node.inputs())
        return False

    return [
        op.get_friendly_name().removesuffix("/WithoutBiases")
        for op in model.get_ops()
        if op.get_type_name() == "Convolution" and not quantized(op.input(1).get_source_output().get_node())
    ]


def quantize_openvino_within(
    fp32_xml: Path,
    int8_xml: Path,
    files: list[str],
    img_size: int,
    kept_float: list[str],
    target: AccuracyTarget,
    runtime: Runtime,
) -> BoundedResult:
    """NNCF's accuracy-controlled quantization of an OpenVINO IR against the ``target`` (its batches: one
    item per batch), the ``kept_float`` nodes (the head) always float; saved as ``int8_xml``. ``runtime``:
    the predictor of an IR's .xml or of a compiled model (the FP32 IR's names and stride)."""
    import nncf
    import openvino as ov

    def score_ir(xml: Path) -> float:
        return target.score(runtime(xml), target.batches)

    float_score = score_ir(fp32_xml)
    if float_score <= 0:  # nothing to lose (an untrained model); NNCF's search would divide by it
        quantize_openvino(fp32_xml, int8_xml, files, img_size, kept_float)
        return BoundedResult("OpenVINO", target.max_drop, float_score, score_ir(int8_xml))
    model = ov.Core().read_model(str(fp32_xml))

    def validate(compiled, items) -> tuple[float, None]:
        return target.score(runtime(compiled), list(items)), None

    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(list(calibration_batches(files, img_size))),
        nncf.Dataset(target.batches),
        validate,
        max_drop=target.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(files),
        ignored_scope=nncf.IgnoredScope(names=openvino_names(model, kept_float), validate=False),
    )
    int8_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)
    reverted = [name for name in float_convolutions(quantized) if name not in kept_float]
    return BoundedResult("OpenVINO", target.max_drop, float_score, score_ir(int8_xml), reverted)
