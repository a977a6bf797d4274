"""Checks of an exported file against the PyTorch model it came from: its largest deviation on real
images, and for the ONNX graph also what it is made of (a fused graph has no BatchNormalization and no
branch sums) and its latency beside PyTorch's. A check that fails raises ConversionError."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from utils.deploy.graph import classify_add_nodes, count_ops, format_op_counts
from utils.deploy.metadata import read_metadata
from utils.deploy.timing import channels_last_call, interleaved_latency
from utils.errors import ConversionError
from utils.inference import InferenceModel

MAX_RELATIVE_ERROR = 1e-4  # a different runtime with different kernels: round-off only


@dataclass
class RuntimeCheck:
    """An exported artefact run beside PyTorch on the same images (kind: its format's name)."""

    path: str
    kind: str
    max_abs_error: float
    max_rel_error: float

    def describe(self) -> str:
        return (
            f"{self.kind} {self.path}: vs PyTorch max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g}"
        )


@dataclass
class OnnxCheck:
    """The ONNX export's check: op counts (Add nodes by kind, see classify_add_nodes), its deviation from
    PyTorch, and batch-1 CPU latency in ms of PyTorch (channels_last) and ONNX Runtime."""

    path: str
    exported_as: str  # "opset 17, static (1, 3, H, W)" or "opset 17, dynamic (batch, 3, height, width)"
    ops: dict[str, int]
    add_kinds: dict[str, int]
    max_abs_error: float
    max_rel_error: float
    latency_ms: dict[str, float]
    threads: int  # 0: each runtime's default

    def describe(self) -> str:
        pytorch, ort = self.latency_ms["pytorch"], self.latency_ms["onnxruntime"]
        threads = f"{self.threads} thr" if self.threads else "default threads"
        return "\n".join(
            [
                f"ONNX {self.path} ({self.exported_as}): onnx.checker passed",
                f"  ops: {format_op_counts(self.ops, self.add_kinds)}",
                f"  onnxruntime vs PyTorch: max abs error {self.max_abs_error:.3g}, "
                f"max rel error {self.max_rel_error:.3g}",
                f"  CPU latency, batch 1, {threads}: PyTorch fused (channels_last) {pytorch:.1f} ms, "
                f"ONNX Runtime {ort:.1f} ms (ORT / PyTorch {ort / pytorch:.2f}x)",
            ]
        )


def deviation(model: nn.Module, runtime: InferenceModel, images: torch.Tensor) -> tuple[float, float]:
    """(max abs error, max rel error) of ``runtime``'s output against the PyTorch model's on ``images``;
    relative to the largest reference output, which stays meaningful where outputs are near zero."""
    with torch.no_grad():
        reference = model(images).cpu()
    predicted = runtime(images.cpu())
    max_abs = float((predicted - reference).abs().max())
    return max_abs, max_abs / max(float(reference.abs().max()), 1e-12)


def compare_with_model(
    model: nn.Module, runtime: InferenceModel, images: torch.Tensor, limit: float | None, name: Path
) -> RuntimeCheck:
    """Run an exported artefact (``runtime``, loaded from its temporary name: utils.deploy.staging) and the
    PyTorch model on ``images``. limit: the relative error above which the export is refused (None for
    INT8, whose deviation is the quantization's and is judged by its mAP). name: the artefact's final path,
    which the check and its refusal name."""
    max_abs, max_rel = deviation(model, runtime, images)
    if limit is not None and not max_rel <= limit:
        raise ConversionError(
            f"{name} differs from PyTorch by relative error {max_rel:.3g} (limit {limit:g}); "
            "report the model's config and the converter's version."
        )
    return RuntimeCheck(str(name), runtime.kind, max_abs, max_rel)


def check_onnx(
    model: nn.Module, session: InferenceModel, images: torch.Tensor, runs: int, threads: int, name: Path
) -> OnnxCheck:
    """Check the ONNX export of ``model`` that ``session`` runs (ONNX Runtime, ``threads`` CPU threads, 0:
    its default): no BatchNormalization nor branch Add left, within MAX_RELATIVE_ERROR of PyTorch on
    ``images``; then time both at batch 1 (``runs`` timed calls). name: as compare_with_model's."""
    graph = onnx.load(str(session.path))
    counts, add_kinds = count_ops(graph), classify_add_nodes(graph)
    if counts.get("BatchNormalization", 0) or add_kinds["branch"]:
        raise ConversionError(
            f"{name} still has {counts.get('BatchNormalization', 0)} BatchNormalization and "
            f"{add_kinds['branch']} branch Add nodes; the model is not fully fused — report its config."
        )
    max_abs, max_rel = deviation(model, session, images)
    if not max_rel <= MAX_RELATIVE_ERROR:
        raise ConversionError(
            f"onnxruntime output of {name} differs from PyTorch by relative error {max_rel:.3g} "
            f"(limit {MAX_RELATIVE_ERROR:g}); try another ONNX opset."
        )
    single = images[:1]
    calls = {"pytorch": channels_last_call(model, single), "onnxruntime": lambda: session(single.cpu())}
    latency = interleaved_latency(calls, runs, threads)
    ops, adds = dict(counts), dict(add_kinds)
    return OnnxCheck(str(name), exported_as(graph), ops, adds, max_abs, max_rel, latency, threads)


def exported_as(onnx_model: onnx.ModelProto) -> str:
    """The opset and input of the graph as export_onnx recorded them: 'opset 17, static (1, 3, H, W)'."""
    opset = next(entry.version for entry in onnx_model.opset_import if entry.domain in ("", "ai.onnx"))
    metadata = read_metadata(onnx_model)
    if metadata.get("dynamic"):
        return f"opset {opset}, dynamic (batch, 3, height, width)"
    height, width = metadata["img_size"]
    return f"opset {opset}, static (1, 3, {height}, {width})"
