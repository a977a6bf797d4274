"""convert.py --int8 --max-drop for ONNX Runtime: the search keeps layers float until the score is within
bounds, the layers it keeps really read float inputs, and un-quantizing a layer in the QDQ graph is what
excluding it from quantization gives."""

from __future__ import annotations

import onnx
import pytest
import torch

import convert
from tests.helpers import write_images, write_tiny_checkpoint
from utils.deploy.formats.onnx import FORMAT as ONNX
from utils.deploy.formats.onnx import OnnxInferenceModel
from utils.deploy.graph import conv_layers
from utils.deploy.int8.bounded import AccuracyTarget
from utils.deploy.int8.onnx_layers import without_quantization
from utils.deploy.int8.onnx_runtime import quantize_onnx, quantize_onnx_within
from utils.errors import ConfigError, DataError

pytest.importorskip("onnxruntime")


def error_scorer(fp32_path):
    """A stand-in metric: minus 100x the relative output error to the float model (float scores 0)."""
    reference = OnnxInferenceModel(fp32_path, torch.device("cpu"))

    def score(predictor, batches) -> float:
        errors = [
            (predictor(batch) - reference(batch)).norm() / reference(batch).norm().clamp_min(1e-12)
            for batch in batches
        ]
        return -100 * float(torch.stack(errors).mean())

    return score


def dequantized_inputs(model: onnx.ModelProto, name: str) -> list[str]:
    producers = {output: node for node in model.graph.node for output in node.output}
    node = next(node for node in model.graph.node if node.name == name)
    return [i for i in node.input[:2] if i in producers and producers[i].op_type == "DequantizeLinear"]


def test_a_loose_bound_keeps_every_layer_int8(tiny_onnx_export, tmp_path):
    fp32, files, batches = tiny_onnx_export
    result = quantize_onnx_within(
        fp32,
        tmp_path / "q.onnx",
        files,
        64,
        AccuracyTarget(batches, error_scorer(fp32), 1e9),
        ONNX.cpu_session,
    )
    assert result.kept_float == [] and result.float_score == 0
    assert result.int8_score == pytest.approx(result.all_layers_score)


def test_a_tight_bound_keeps_layers_float_until_it_holds(tiny_onnx_export, tmp_path):
    fp32, files, batches = tiny_onnx_export
    score = error_scorer(fp32)
    everything = quantize_onnx_within(
        fp32, tmp_path / "all.onnx", files, 64, AccuracyTarget(batches, score, 1e9), ONNX.cpu_session
    )
    bound = 0.5 * everything.drop  # half the all-INT8 error: some layers, not all, must stay float
    result = quantize_onnx_within(
        fp32, tmp_path / "q.onnx", files, 64, AccuracyTarget(batches, score, bound), ONNX.cpu_session
    )
    assert result.drop <= bound and 0 < len(result.kept_float) <= len(conv_layers(onnx.load(str(fp32))))
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    for conv in result.kept_float:
        assert dequantized_inputs(quantized, conv) == [], conv
    others = set(conv_layers(quantized)) - set(result.kept_float)
    assert all(len(dequantized_inputs(quantized, conv)) == 2 for conv in others)


def test_a_float_layer_leaves_no_dead_nodes(tiny_onnx_export, tmp_path):
    fp32, files, _ = tiny_onnx_export
    quantize_onnx(fp32, tmp_path / "all.onnx", files, 64)
    quantized, original = onnx.load(str(tmp_path / "all.onnx")), onnx.load(str(fp32))
    layers = conv_layers(original)
    model = without_quantization(quantized, original, {node for nodes in layers.values() for node in nodes})
    used = {name for node in model.graph.node for name in node.input} | {"output"}
    assert all(any(name in used for name in node.output) for node in model.graph.node)
    assert all(init.name in used for init in model.graph.initializer)
    assert not any(dequantized_inputs(model, conv) for conv in layers)
    onnx.checker.check_model(model)


def test_max_drop_bad_input_is_one_sentence(tmp_path):
    write_images(tmp_path / "images", count=2, size=(64, 64))
    checkpoint = write_tiny_checkpoint(tmp_path / "best.pt", data={"train": [str(tmp_path / "images")]})
    with pytest.raises(ConfigError, match="add --int8"):
        convert.run(checkpoint, img_size=64, runs=1, max_drop=1.0)
    with pytest.raises(ConfigError, match="non-negative"):
        convert.run(checkpoint, img_size=64, runs=1, int8=True, max_drop=-1.0)
    with pytest.raises(DataError, match="has none on this machine .* pass the dataset YAML with --data"):
        convert.run(checkpoint, img_size=64, runs=1, int8=True, max_drop=1.0)
    assert not (tmp_path / "best_fused.pt").exists()  # refused before any work
