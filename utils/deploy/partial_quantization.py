"""INT8 with a bounded accuracy drop (``convert.py --int8 --max-drop P``): keep the most sensitive layers
float until the INT8 model's validation mAP50-95 is within P points of the float model's.

OpenVINO: NNCF's accuracy-controlled quantization (``nncf.quantize_with_accuracy_control``) does the
search: it ranks its quantizer groups by their effect on our metric and reverts them to float, most
harmful first, until the drop is within bounds.

ONNX Runtime has no such search, so this module runs one on top of its static quantization (YOLOv6's
partial quantization, made automatic): every convolution is ranked by how much of the INT8 model's output
error goes away when that convolution alone is kept float (measured on a few calibration images, with the
activation ranges calibrated once), then the top-ranked convolutions are kept float in growing numbers
(1, 2, 4, ... then bisection) until the validation drop is within bounds.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from utils.deploy.backend import OnnxInferenceModel, OpenVINOInferenceModel, openvino_cpu_config
from utils.deploy.graph import conv_layers, producers_of
from utils.deploy.quantize import calibration_batches, openvino_names, quantize_onnx, quantize_openvino
from utils.evaluation.evaluate import evaluate
from utils.inference import InferenceModel

LOGGER = logging.getLogger(__name__)
RANKING_IMAGES = 8  # calibration images on which each layer's share of the INT8 error is measured

Scorer = Callable[[InferenceModel, list], float]  # (predictor, validation batches) -> points


@dataclass
class AccuracyTarget:
    """What a partial quantization must hold: ``score`` (points, e.g. map_scorer's mAP50-95) of the INT8
    model on the validation ``batches`` (as the loader yields them) within ``max_drop`` points of the
    float model's."""

    batches: list
    score: Scorer
    max_drop: float


@dataclass
class BoundedResult:
    """What a bounded-drop quantization did: scores in mAP50-95 points on the validation split."""

    runtime: str
    max_drop: float
    float_score: float
    int8_score: float
    kept_float: list[str] = field(default_factory=list)  # convolutions kept float besides the head
    all_layers_score: float | None = None  # every convolution but the head quantized (ORT only)

    @property
    def drop(self) -> float:
        return self.float_score - self.int8_score

    def describe(self) -> str:
        layers = ", ".join(self.kept_float) if self.kept_float else "none"
        text = (
            f"{self.runtime} INT8 within {self.max_drop:g} points: mAP50-95 {self.int8_score:.2f} vs float "
            f"{self.float_score:.2f} (drop {self.drop:.2f} points)"
        )
        if self.all_layers_score is not None:
            text += f"; every layer INT8: {self.all_layers_score:.2f}"
        return text + f"; {len(self.kept_float)} convolutions kept float: {layers}"


def map_scorer(names: list[str]) -> Scorer:
    """mAP50-95 in points of a predictor on validation batches (as the loader yields them; val.py's
    thresholds)."""

    def score(predictor: InferenceModel, batches: list) -> float:
        return 100 * evaluate(predictor, batches, names, quiet=True).map50_95

    return score


def _relative_output_error(reference: np.ndarray, output: np.ndarray, img_size: int) -> float:
    """Relative L2 error of decoded outputs, box columns in image units so that they weigh like scores."""
    scale = np.ones(reference.shape[-1], dtype=np.float64)
    scale[:4] = 1.0 / img_size
    difference = (output.astype(np.float64) - reference) * scale
    return float(np.linalg.norm(difference) / max(np.linalg.norm(reference * scale), 1e-12))


def rank_onnx_layers(
    quantized: onnx.ModelProto, original: onnx.ModelProto, probes: list[torch.Tensor], workdir: Path
) -> list[tuple[str, float]]:
    """[(conv name, share of the INT8 output error on ``probes`` that keeping its layer float removes)],
    most sensitive first."""
    img_size = int(probes[0].shape[-1])
    reference = _outputs(original, probes, workdir)
    full_error = _relative_output_error(reference, _outputs(quantized, probes, workdir), img_size)
    gains = []
    for conv, nodes in conv_layers(original).items():
        output = _outputs(_without_quantization(quantized, original, set(nodes)), probes, workdir)
        gains.append((conv, full_error - _relative_output_error(reference, output, img_size)))
    return sorted(gains, key=lambda item: -item[1])


def _outputs(model: onnx.ModelProto, probes: list[torch.Tensor], workdir: Path) -> np.ndarray:
    path = workdir / "probe.onnx"
    onnx.save(model, str(path))
    session = OnnxInferenceModel(path, torch.device("cpu"))
    return np.concatenate([session(image).numpy() for image in probes]).astype(np.float64)


def _without_quantization(
    quantized: onnx.ModelProto, original: onnx.ModelProto, nodes: set[str]
) -> onnx.ModelProto:
    """A copy of the QDQ graph ``quantized`` in which the ``nodes`` read float inputs: an activation from
    before its QuantizeLinear, a weight or bias as the float initializer of the ``original`` graph."""
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    producers = producers_of(model.graph)
    float_inputs = {node.name: list(node.input) for node in original.graph.node if node.name in nodes}
    float_weights = {init.name: init for init in original.graph.initializer}
    present = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in nodes:
            continue
        for index, name in enumerate(node.input):
            dequantize = producers.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            source = float_inputs[node.name][index]  # the float tensor or initializer it came from
            # (an int32 bias keeps its dequantized name and stays: it is exact enough)
            node.input[index] = source
            if source in float_weights and source not in present and source not in producers:
                model.graph.initializer.append(float_weights[source])
                present.add(source)
    _remove_unused(model.graph)
    return model


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop the nodes whose outputs nothing reads any more (the bypassed Q/DQ pairs), then the
    initializers only they read."""
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for initializer in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(initializer)


def quantize_onnx_within(
    fp32_path: Path, int8_path: Path, files: list[str], img_size: int, target: AccuracyTarget
) -> BoundedResult:
    """ONNX Runtime INT8 of ``fp32_path`` written to ``int8_path`` with the fewest top-ranked convolutions
    kept float that hold the ``target`` (every convolution float, at worst). One calibrated quantization;
    keeping a layer float then means its inputs read the float tensors and weights again in that graph."""
    device = torch.device("cpu")
    original = onnx.load(str(fp32_path))
    layers = conv_layers(original)
    float_score = target.score(OnnxInferenceModel(fp32_path, device), target.batches)
    with tempfile.TemporaryDirectory(prefix="repyolo-int8-") as folder:
        workdir = Path(folder)
        quantize_onnx(fp32_path, workdir / "all.onnx", files, img_size)
        quantized = onnx.load(str(workdir / "all.onnx"))

        def keeping(convs: Sequence[str]) -> onnx.ModelProto:
            nodes = {node for conv in convs for node in layers[conv]}
            return _without_quantization(quantized, original, nodes)

        scores: dict[int, float] = {}

        def drop_keeping(count: int) -> float:
            if count not in scores:
                onnx.save(keeping(ranking[:count]), str(workdir / "candidate.onnx"))
                candidate = OnnxInferenceModel(workdir / "candidate.onnx", device)
                scores[count] = target.score(candidate, target.batches)
                LOGGER.info("INT8 ONNX, %d convolutions float: mAP50-95 %.2f", count, scores[count])
            return float_score - scores[count]

        ranking: list[str] = []
        count = 0
        if drop_keeping(0) > target.max_drop:
            probes = [torch.from_numpy(b) for b in calibration_batches(files[:RANKING_IMAGES], img_size)]
            ranking = [conv for conv, _ in rank_onnx_layers(quantized, original, probes, workdir)]
            count = fewest_within(drop_keeping, len(ranking), target.max_drop)
        drop_keeping(count)  # the graph written next, scored once in the search (or now)
        onnx.save(keeping(ranking[:count]), str(int8_path))
    kept = ranking[:count]
    return BoundedResult("ONNX Runtime", target.max_drop, float_score, scores[count], kept, scores[0])


def fewest_within(drop: Callable[[int], float], most: int, max_drop: float) -> int:
    """The smallest count in 1..most whose ``drop(count)`` is at most ``max_drop`` (``most`` when none is),
    for a drop that shrinks as the count grows: doubling, then bisection."""
    low, high = 0, 1
    while high < most and drop(high) > max_drop:
        low, high = high, min(2 * high, most)
    while high - low > 1:  # drop(high) is within bounds (or high is most)
        middle = (low + high) // 2
        if drop(middle) <= max_drop:
            high = middle
        else:
            low = middle
    return high


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
    metadata: dict,
) -> BoundedResult:
    """NNCF's accuracy-controlled quantization of an OpenVINO IR against the ``target`` (its batches: one
    item per batch), the ``kept_float`` nodes (the head) always float; saved as ``int8_xml``. ``metadata``:
    the IR's export metadata (names, stride)."""
    import nncf
    import openvino as ov

    device = torch.device("cpu")
    core = ov.Core()

    def score_ir(xml: Path) -> float:
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", openvino_cpu_config())
        predictor = OpenVINOInferenceModel.from_compiled(compiled, metadata, device, str(xml))
        return target.score(predictor, target.batches)

    float_score = score_ir(fp32_xml)
    if float_score <= 0:  # nothing to lose (an untrained model); NNCF's search would divide by it
        quantize_openvino(fp32_xml, int8_xml, files, img_size, kept_float)
        return BoundedResult("OpenVINO", target.max_drop, float_score, score_ir(int8_xml))
    model = core.read_model(str(fp32_xml))

    def validate(compiled, items) -> tuple[float, None]:
        predictor = OpenVINOInferenceModel.from_compiled(compiled, metadata, device, str(fp32_xml))
        return target.score(predictor, list(items)), None

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
