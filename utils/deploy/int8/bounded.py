"""INT8 with a bounded accuracy drop (``convert.py --int8 --max-drop P``): what the INT8 models must hold
(their validation mAP50-95 within P points of the FP32 ONNX graph's, scored once for every format) and
what each search or check made of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from utils.evaluation.evaluate import evaluate
from utils.evaluation.loader import validation_loader
from utils.inference import InferenceModel

Scorer = Callable[[InferenceModel, list], float]  # (predictor, validation batches) -> points


@dataclass
class AccuracyTarget:
    """What a partial quantization must hold: ``score`` (points, e.g. map_scorer's mAP50-95) of the INT8
    model on the validation ``batches`` (as the loader yields them) within ``max_drop`` points of the
    float model's; ``reference``: the FP32 ONNX graph's score, where it was scored (accuracy_target)."""

    batches: list
    score: Scorer
    max_drop: float
    reference: float | None = None


def accuracy_target(
    reference: InferenceModel, data_config: dict, img_size: int, max_drop: float
) -> AccuracyTarget:
    """mAP50-95 within ``max_drop`` points of the ``reference`` predictor's (the FP32 ONNX graph, scored here
    once for every INT8 artefact of a conversion) on the val split of ``data_config``, loaded as val.py loads
    it for that predictor (square letterboxes for a static graph)."""
    batches = list(validation_loader(data_config, "val", img_size, 32, 0, reference))
    target = AccuracyTarget(batches, map_scorer(list(data_config["names"])), max_drop)
    target.reference = target.score(reference, batches)
    return target


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


def bounded_int8(
    label: str, predictor: InferenceModel, target: AccuracyTarget, kept: list[str]
) -> BoundedResult:
    """The INT8 ``predictor``'s mAP50-95 on the target's batches against the FP32 ONNX graph's; ``kept``: the
    convolutions it keeps float (ONNX Runtime's search chose them: they are applied, not searched again)."""
    return BoundedResult(
        label, target.max_drop, target.reference, target.score(predictor, target.batches), kept
    )
