"""Which convolutions of an ONNX Runtime INT8 (QDQ) graph cost the most accuracy, and the graph with some
of them float again: what utils.deploy.int8.onnx_runtime's --max-drop search is built from."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from utils.deploy.graph import conv_layers, producers_of
from utils.inference import InferenceModel


def _relative_output_error(reference: np.ndarray, output: np.ndarray, img_size: int) -> float:
    """Relative L2 error of decoded outputs, box columns in image units so that they weigh like scores."""
    scale = np.ones(reference.shape[-1], dtype=np.float64)
    scale[:4] = 1.0 / img_size
    difference = (output.astype(np.float64) - reference) * scale
    return float(np.linalg.norm(difference) / max(np.linalg.norm(reference * scale), 1e-12))


Loader = Callable[[Path], InferenceModel]  # an ONNX file -> its ONNX Runtime predictor


def rank_onnx_layers(
    quantized: onnx.ModelProto,
    original: onnx.ModelProto,
    probes: list[torch.Tensor],
    workdir: Path,
    load: Loader,
) -> list[tuple[str, float]]:
    """[(conv name, share of the INT8 output error on ``probes`` that keeping its layer float removes)],
    most sensitive first; each graph run as ``load`` loads it from a file in ``workdir``."""
    img_size = int(probes[0].shape[-1])

    def outputs(model: onnx.ModelProto) -> np.ndarray:
        onnx.save(model, str(workdir / "probe.onnx"))
        session = load(workdir / "probe.onnx")
        return np.concatenate([session(image).numpy() for image in probes]).astype(np.float64)

    reference = outputs(original)
    full_error = _relative_output_error(reference, outputs(quantized), img_size)
    gains = []
    for conv, nodes in conv_layers(original).items():
        output = outputs(without_quantization(quantized, original, set(nodes)))
        gains.append((conv, full_error - _relative_output_error(reference, output, img_size)))
    return sorted(gains, key=lambda item: -item[1])


def without_quantization(
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
