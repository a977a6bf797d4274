"""ONNX Runtime's INT8: static quantization (QDQ, per-channel weights) calibrated on real images, and with
``--max-drop`` a search on top of it for the fewest convolutions to keep float (YOLOv6's partial
quantization, made automatic; ONNX Runtime has no such search of its own): every convolution is ranked by
how much of the INT8 model's output error goes away when that convolution alone is kept float
(utils.deploy.int8.onnx_layers), then the top-ranked ones are kept float in growing numbers (1, 2, 4, ...
then bisection) until the validation drop is within bounds.

What stays float in every case: the detection head, i.e. the last convolutions (the Detect layer's 1x1
convs, whose raw logits mix box offsets, objectness and class scores in one tensor) and every node after
them (the reshape, sigmoid, grid and anchor arithmetic and the concatenation). The decoded output holds
box coordinates in input pixels up to the image size next to scores in 0..1; one shared 8-bit scale for
both destroys the boxes (a naive quantization of YOLOv5 scores 0 mAP for exactly this reason). Every other
convolution, where the time goes, is quantized.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Sequence

import onnx
import torch

from utils.deploy.graph import conv_layers, decode_tail_nodes
from utils.deploy.int8.bounded import AccuracyTarget, BoundedResult, fewest_within
from utils.deploy.int8.calibration import calibration_batches
from utils.deploy.int8.onnx_layers import Loader, rank_onnx_layers, without_quantization
from utils.deploy.metadata import INPUT_NAME

LOGGER = logging.getLogger(__name__)
RANKING_IMAGES = 8  # calibration images on which each layer's share of the INT8 error is measured


def quantize_onnx(fp32_path: Path, int8_path: Path, files: list[str], img_size: int) -> None:
    """ONNX Runtime static quantization: QDQ format, per-channel int8 weights, uint8 activations
    calibrated on ``files``; the decode tail (decode_tail_nodes) stays float. The INT8 file carries the
    FP32 file's metadata."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_batches(files, img_size)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    model = onnx.load(str(fp32_path))
    kept_float = decode_tail_nodes(model)
    quantize_static(
        str(fp32_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=kept_float,
        # activation ranges averaged over the calibration images instead of their extremes: a few
        # outlier pixels would otherwise stretch the ranges of the fused RepVGG activations (1.65 points
        # of mAP50-95 lost on the bundled repyolov5s with plain min/max, 0.03 with the average)
        extra_options={"CalibMovingAverage": True},
    )
    quantized = onnx.load(str(int8_path))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)  # names, stride, input size: as the FP32 file
    onnx.save(quantized, str(int8_path))


def quantize_onnx_within(
    fp32_path: Path, int8_path: Path, files: list[str], img_size: int, target: AccuracyTarget, load: Loader
) -> BoundedResult:
    """ONNX Runtime INT8 of ``fp32_path`` written to ``int8_path`` with the fewest top-ranked convolutions
    kept float that hold the ``target`` (every convolution float, at worst), each candidate run as ``load``
    loads an ONNX file. One calibrated quantization; keeping a layer float then means its inputs read the
    float tensors and weights again in that graph."""
    original = onnx.load(str(fp32_path))
    layers = conv_layers(original)
    float_score = target.reference
    if float_score is None:
        float_score = target.score(load(fp32_path), target.batches)
    with tempfile.TemporaryDirectory(prefix="repyolo-int8-") as folder:
        workdir = Path(folder)
        quantize_onnx(fp32_path, workdir / "all.onnx", files, img_size)
        quantized = onnx.load(str(workdir / "all.onnx"))

        def keeping(convs: Sequence[str]) -> onnx.ModelProto:
            nodes = {node for conv in convs for node in layers[conv]}
            return without_quantization(quantized, original, nodes)

        scores: dict[int, float] = {}

        def drop_keeping(count: int) -> float:
            if count not in scores:
                onnx.save(keeping(ranking[:count]), str(workdir / "candidate.onnx"))
                candidate = load(workdir / "candidate.onnx")
                scores[count] = target.score(candidate, target.batches)
                LOGGER.info("INT8 ONNX, %d convolutions float: mAP50-95 %.2f", count, scores[count])
            return float_score - scores[count]

        ranking: list[str] = []
        count = 0
        if drop_keeping(0) > target.max_drop:
            probes = [torch.from_numpy(b) for b in calibration_batches(files[:RANKING_IMAGES], img_size)]
            ranking = [conv for conv, _ in rank_onnx_layers(quantized, original, probes, workdir, load)]
            count = fewest_within(drop_keeping, len(ranking), target.max_drop)
        drop_keeping(count)  # the graph written next, scored once in the search (or now)
        onnx.save(keeping(ranking[:count]), str(int8_path))
    kept = ranking[:count]
    return BoundedResult("ONNX Runtime", target.max_drop, float_score, scores[count], kept, scores[0])
