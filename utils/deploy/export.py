"""ONNX export of a detection model, op counting, and a check against onnxruntime.

The exported graph has one input ``images`` (B, 3, H, W) float32 RGB in 0..1 and one output
``output`` (B, N, 5 + nc) with the decoded predictions (cx, cy, w, h in input pixels,
objectness, class scores), the same as ``Model`` in eval mode. What a loader needs to run it
(class names, stride, input size, whether the axes are dynamic) travels in the model's
``metadata_props``, so the .onnx file stands alone.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import torch
import yaml
from torch import nn

from utils.deploy.timing import channels_last_call, interleaved_latency
from utils.errors import ConversionError
from utils.paths import write_text_atomic

LOGGER = logging.getLogger(__name__)

MAX_ONNX_RELATIVE_ERROR = 1e-4  # a different runtime with different kernels: round-off only

INPUT_NAME = "images"
OUTPUT_NAME = "output"
# ONNX ops whose output is an activation (the tensor a residual connection adds).
_ACTIVATION_OPS = {"Relu", "LeakyRelu", "HardSwish", "Elu", "Selu", "PRelu", "Mish", "Swish"}
# ONNX ops whose output is a pre-activation branch (what a RepVGG training-form block sums).
_BRANCH_OPS = {"Conv", "BatchNormalization"}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_hw: tuple[int, int],
    opset: int = 17,
    dynamic: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` (eval mode) to ``path`` and check it with onnx.checker.

    img_hw: (height, width) of the example input; with ``dynamic`` batch, height and width are
    free axes, otherwise the graph takes exactly (1, 3, height, width).
    metadata: extra key/values stored as strings (JSON for non-strings) in metadata_props.
    """
    path = Path(path)
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, *img_hw, device=device)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 1: "anchors"},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The torch.export-based exporter needs onnxscript, which we do not depend on; the
        # TorchScript exporter handles this model fully.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx_model = onnx.load(str(path))
    values = {"dynamic": dynamic, "img_size": list(img_hw), **(metadata or {})}
    for key, value in values.items():
        entry = onnx_model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))
    return path


def openvino_folder(onnx_path: Path) -> Path:
    """yolov5's naming: best_fused.onnx -> best_fused_openvino_model/ beside it."""
    return onnx_path.with_name(f"{onnx_path.stem}_openvino_model")


def export_openvino(onnx_path: Path, folder: Path | None = None) -> Path:
    """Convert an ONNX export to an OpenVINO IR (FP32 weights) in ``folder`` (default: openvino_folder),
    with the ONNX file's metadata (names, stride, input size) as metadata.yaml beside the .xml.
    Returns the .xml path."""
    import openvino as ov

    folder = folder or openvino_folder(onnx_path)
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{onnx_path.stem}.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    write_openvino_metadata(folder, read_metadata(onnx.load(str(onnx_path), load_external_data=False)))
    return xml


def write_openvino_metadata(folder: Path, metadata: dict[str, Any]) -> Path:
    return write_text_atomic(folder / "metadata.yaml", yaml.safe_dump(metadata, sort_keys=False))


def read_metadata(onnx_model: onnx.ModelProto) -> dict[str, Any]:
    """metadata_props as a dict, JSON values decoded (strings that are not JSON stay strings)."""
    out: dict[str, Any] = {}
    for entry in onnx_model.metadata_props:
        try:
            out[entry.key] = json.loads(entry.value)
        except json.JSONDecodeError:
            out[entry.key] = entry.value
    return out


def count_ops(onnx_model: onnx.ModelProto) -> Counter:
    """Number of nodes per op type in the main graph."""
    return Counter(node.op_type for node in onnx_model.graph.node)


def classify_add_nodes(onnx_model: onnx.ModelProto) -> Counter:
    """Sort the Add nodes by what they sum: {"branch": n, "residual": n, "other": n}.

    branch: an input comes straight from a Conv or BatchNormalization (or from another branch
    sum), i.e. parallel pre-activation branches, which a fused RepVGG graph must not have.
    residual: both inputs are activation outputs (or residual sums), i.e. a shortcut such as the
    C3 bottlenecks'.
    other: arithmetic with constants or shapes (the Detect head's grid decode).
    """
    producers = {output: node for node in onnx_model.graph.node for output in node.output}

    def is_activation(tensor: str) -> bool:
        node = producers.get(tensor)
        if node is None:
            return False
        if node.op_type in _ACTIVATION_OPS:
            return True
        if node.op_type == "Mul" and len(node.input) == 2:  # SiLU exported as x * sigmoid(x)
            a, b = node.input
            for gate, value in ((a, b), (b, a)):
                gate_node = producers.get(gate)
                if gate_node is not None and gate_node.op_type == "Sigmoid" and gate_node.input[0] == value:
                    return True
        return False

    kinds: Counter = Counter({"branch": 0, "residual": 0, "other": 0})
    branch_outputs: set[str] = set()
    residual_outputs: set[str] = set()  # a chain of bottlenecks adds onto the previous sum
    for node in onnx_model.graph.node:  # nodes are topologically sorted
        if node.op_type != "Add":
            continue
        input_ops = [producers[t].op_type if t in producers else None for t in node.input]
        if any(op in _BRANCH_OPS for op in input_ops) or any(t in branch_outputs for t in node.input):
            kinds["branch"] += 1
            branch_outputs.update(node.output)
        elif all(is_activation(t) or t in residual_outputs for t in node.input):
            kinds["residual"] += 1
            residual_outputs.update(node.output)
        else:
            kinds["other"] += 1
    return kinds


def format_op_counts(counts: Counter, add_kinds: Counter) -> str:
    """One line: 'Conv 60, Mul 57, ..., Add 7 (residual 7, branch 0, other 0), BatchNormalization 0'."""
    parts = []
    for op, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if op == "Add":
            detail = ", ".join(f"{kind} {add_kinds[kind]}" for kind in ("residual", "branch", "other"))
            parts.append(f"Add {n} ({detail})")
        else:
            parts.append(f"{op} {n}")
    if "BatchNormalization" not in counts:
        parts.append("BatchNormalization 0")
    return ", ".join(parts)


def export_and_check(
    model: nn.Module, path: Path, images: torch.Tensor, opset: int, dynamic: bool, runs: int, threads: int = 0
) -> dict:
    """Export ONNX, compare onnxruntime with PyTorch on ``images``, count ops, time both at batch 1."""
    from utils.deploy.backend import load_inference_model

    img_hw = tuple(images.shape[-2:])
    metadata = {
        "names": list(model.names),
        "nc": int(model.nc),
        "stride": int(model.stride.max()),
        "deploy": True,
    }
    export_onnx(model, path, img_hw, opset=opset, dynamic=dynamic, metadata=metadata)
    graph = onnx.load(str(path))
    counts, add_kinds = count_ops(graph), classify_add_nodes(graph)
    session = load_inference_model(path, "cpu", threads=threads)
    max_abs, max_rel = deviation(model, session, images)
    shape = "dynamic (batch, 3, height, width)" if dynamic else f"static (1, 3, {img_hw[0]}, {img_hw[1]})"
    print(f"ONNX {path} (opset {opset}, {shape}): onnx.checker passed")
    print(f"  ops: {format_op_counts(counts, add_kinds)}")
    print(f"  onnxruntime vs PyTorch: max abs error {max_abs:.3g}, max rel error {max_rel:.3g}")
    if counts.get("BatchNormalization", 0) or add_kinds["branch"]:
        raise ConversionError(
            f"{path} still has {counts.get('BatchNormalization', 0)} BatchNormalization and "
            f"{add_kinds['branch']} branch Add nodes; the model is not fully fused — report its config."
        )
    if not max_rel <= MAX_ONNX_RELATIVE_ERROR:
        raise ConversionError(
            f"onnxruntime output of {path} differs from PyTorch by relative error {max_rel:.3g} "
            f"(limit {MAX_ONNX_RELATIVE_ERROR:g}); do not deploy it — try another ONNX opset."
        )
    single = images[:1]
    calls = {"pytorch": channels_last_call(model, single), "onnxruntime": lambda: session(single.cpu())}
    latency = interleaved_latency(calls, runs, threads)
    threads_used = f"{threads} thr" if threads else "default threads"
    pytorch, ort = latency["pytorch"], latency["onnxruntime"]
    print(
        f"  CPU latency, batch 1, {threads_used}: PyTorch fused (channels_last) {pytorch:.1f} ms, "
        f"ONNX Runtime {ort:.1f} ms (ORT / PyTorch {ort / pytorch:.2f}x)"
    )
    return {
        "path": str(path),
        "ops": dict(counts),
        "add_kinds": dict(add_kinds),
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "latency_ms": latency,
    }


def deviation(model: nn.Module, runtime, images: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max rel error) of ``runtime``'s output against the PyTorch model's on ``images``;
    relative to the largest reference output, which stays meaningful where outputs are near zero."""
    with torch.no_grad():
        reference = model(images).cpu()
    predicted = runtime(images.cpu())
    max_abs = float((predicted - reference).abs().max())
    return max_abs, max_abs / max(float(reference.abs().max()), 1e-12)


def compare_with_model(model: nn.Module, weights: Path, images: torch.Tensor, limit: float | None) -> dict:
    """Run an exported artefact (any weights load_inference_model takes) and the PyTorch model on
    ``images``; print and return the largest deviation. limit: the relative error above which the export
    is refused (None for INT8, whose deviation is the quantization's and is judged by its mAP)."""
    from utils.deploy.backend import load_inference_model

    runtime = load_inference_model(weights, "cpu")
    max_abs, max_rel = deviation(model, runtime, images)
    print(f"{runtime.kind} {weights}: vs PyTorch max abs error {max_abs:.3g}, max rel error {max_rel:.3g}")
    if limit is not None and not max_rel <= limit:
        raise ConversionError(
            f"{weights} differs from PyTorch by relative error {max_rel:.3g} (limit {limit:g}); "
            "do not deploy it."
        )
    return {"path": str(weights), "kind": runtime.kind, "max_abs_error": max_abs, "max_rel_error": max_rel}
