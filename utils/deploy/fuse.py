"""Fusing a trained checkpoint for deployment, the first steps of convert.py: the fused copy and its
check against the training form on real images (fuse), the fused checkpoint (save_fused), and the
before/after report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch
from torch import nn

from models import reparam
from models.blocks import BLOCKS, ReparamBlock
from models.yolo import count_gflops, count_parameters
from utils.checkpoint import make_checkpoint, model_from_checkpoint, save_checkpoint
from utils.data.config import image_files_from_sources
from utils.data.preprocess import check_img_size, image_to_tensor, letterbox
from utils.deploy.timing import channels_last_call, interleaved_latency
from utils.errors import ConversionError

LOGGER = logging.getLogger(__name__)

MAX_RELATIVE_ERROR = 1e-5
VERIFY_IMAGES = 8
# Checkpoint keys that describe the run and stay useful beside the fused weights.
CARRIED_KEYS = ("epoch", "best_fitness", "date", "hyp", "opt", "data", "results")


@dataclass
class FusionResult:
    """A checkpoint's training form, its fused copy and their comparison on ``images`` (B, 3, img_size,
    img_size), RGB 0..1, which ``input`` describes."""

    trained: nn.Module
    fused: nn.Module
    images: torch.Tensor
    input: str
    img_size: int  # the requested size rounded up to the stride
    max_abs: float
    max_rel: float


def count_modules(model: nn.Module) -> dict:
    """Parameters, Conv2d and BatchNorm modules, and "blocks": {registry name: {"multi_branch": n,
    "fused": n}} for each re-parameterizable block kind the model has."""
    modules = list(model.modules())
    counts = {
        "parameters": count_parameters(model),
        "conv": sum(isinstance(m, nn.Conv2d) for m in modules),
        "bn": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules),
        "blocks": {},
    }
    for name, cls in BLOCKS.items():
        if not (isinstance(cls, type) and issubclass(cls, ReparamBlock)):
            continue
        of_kind = [m for m in modules if type(m) is cls]  # exact: a subclass is its own kind
        multi_branch = sum(not m.deploy for m in of_kind)
        if of_kind:
            counts["blocks"][name] = {"multi_branch": multi_branch, "fused": len(of_kind) - multi_branch}
    return counts


def verification_input(ckpt: dict, img_size: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """Up to 8 validation images of the checkpoint's dataset, letterboxed to img_size, as a float
    (B, 3, img_size, img_size) RGB 0..1 batch; a seeded random (2, 3, img_size, img_size) batch
    when none of them is on this machine. Returns the batch and a description of it."""
    sources = (ckpt.get("data") or {}).get("val") or []
    files: list[str] = []
    try:
        files = image_files_from_sources(sources)[: 4 * VERIFY_IMAGES] if sources else []
    except (OSError, ValueError) as error:
        LOGGER.info("validation images of the checkpoint unavailable (%s); verifying on random input.", error)
    images = []
    for file in files:
        image = cv2.imread(file)
        if image is None:
            continue
        image = letterbox(image, img_size, auto=False)[0]
        images.append(image_to_tensor(image))
        if len(images) == VERIFY_IMAGES:
            break
    if images:
        batch = torch.stack(images).float().div(255).to(device)
        return batch, f"{len(images)} validation images from {Path(files[0]).parent}"
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(2, 3, img_size, img_size, generator=generator).to(device)
    return batch, f"random input (2, 3, {img_size}, {img_size}), seed 0"


def training_img_size(ckpt: dict) -> int:
    """The image size the checkpoint was trained at (its recorded options), else yolov5's 640."""
    return int((ckpt.get("opt") or {}).get("img_size") or 640)


def fuse(ckpt: dict, img_size: int, device: torch.device) -> FusionResult:
    """Build the training form of ``ckpt`` and its fused copy and compare them on real images (see
    verification_input) at img_size rounded up to the stride."""
    trained, images, described = load_with_images(ckpt, img_size, device)
    fused = reparam.reparameterized_copy(trained).eval()
    max_abs, max_rel = reparam.verify(trained, fused, images)
    return FusionResult(trained, fused, images, described, images.shape[-1], max_abs, max_rel)


def load_with_images(ckpt: dict, img_size: int, device: torch.device) -> tuple[nn.Module, torch.Tensor, str]:
    """The checkpoint's model as it is stored (training form or already fused), in eval mode, and the
    images to check it and its exports on (verification_input, at img_size rounded up to the stride),
    with their description."""
    model = model_from_checkpoint(ckpt).to(device).float().eval()
    img_size = check_img_size(img_size, int(model.stride.max()))
    return model, *verification_input(ckpt, img_size, device)


def save_fused(result: FusionResult, ckpt: dict, weights: Path, output: Path) -> Path:
    """Save the fused model of ``ckpt`` (read from ``weights``) to ``output``, with the run's CARRIED_KEYS,
    if it reproduces the training form within MAX_RELATIVE_ERROR; ConversionError otherwise. OSError
    when ``output`` cannot be written."""
    if not result.max_rel <= MAX_RELATIVE_ERROR:
        raise ConversionError(
            f"fused model of {weights} differs from the training form by relative error {result.max_rel:.3g} "
            f"(limit {MAX_RELATIVE_ERROR:g}) on {result.input}; not saved — check the checkpoint's BN "
            f"statistics for NaN/inf or report the model config."
        )
    carried = {key: ckpt[key] for key in CARRIED_KEYS if key in ckpt}
    save_checkpoint(make_checkpoint(result.fused, **carried, converted_from=str(weights)), output)
    return output


def format_report(report: dict) -> str:
    before, after = report["before"], report["after"]
    rows = [
        ("parameters", f"{before['parameters']:,}", f"{after['parameters']:,}"),
        ("GFLOPs", f"{before['gflops']:.2f}", f"{after['gflops']:.2f}"),
        ("Conv2d modules", before["conv"], after["conv"]),
        ("BatchNorm modules", before["bn"], after["bn"]),
        *block_rows(before["blocks"], after["blocks"]),
        (
            f"CPU latency, batch 1, {report['threads']} thr, channels_last",
            f"{before['latency_ms']:.1f} ms",
            f"{after['latency_ms']:.1f} ms",
        ),
    ]
    lines = [
        f"Conversion {report['weights']} -> {report['output']} at {report['img_size']}x{report['img_size']}",
        f"{'':30}{'training form':>16}{'fused':>16}",
        *(f"{name:30}{str(a):>16}{str(b):>16}" for name, a, b in rows),
        f"max abs error {report['max_abs_error']:.3g}, max rel error {report['max_rel_error']:.3g} "
        f"(limit {MAX_RELATIVE_ERROR:g}) on {report['input']}",
        f"training-form / fused latency: {report['latency_ratio']:.2f}x",
    ]
    return "\n".join(lines)


def block_rows(before: dict, after: dict) -> list[tuple[str, int, int]]:
    """Two report rows per block kind the model has: its multi-branch and its fused count."""
    rows = []
    for name in sorted(set(before) | set(after)):
        counts_before = before.get(name, {"multi_branch": 0, "fused": 0})
        counts_after = after.get(name, {"multi_branch": 0, "fused": 0})
        label = name.removesuffix("Block")
        rows.append((f"{label} multi-branch", counts_before["multi_branch"], counts_after["multi_branch"]))
        rows.append((f"{label} fused (1 conv)", counts_before["fused"], counts_after["fused"]))
    return rows


def fusion_report(result: FusionResult, weights: Path, output: Path, runs: int, threads: int) -> dict:
    """The before/after table's numbers: module counts, GFLOPs and interleaved batch-1 latency."""
    single = result.images[:1]
    calls = {
        "trained": channels_last_call(result.trained, single),
        "fused": channels_last_call(result.fused, single),
    }
    latency = interleaved_latency(calls, runs, threads)
    report = {
        "status": "converted",
        "weights": str(weights),
        "output": str(output),
        "input": result.input,
        "img_size": result.img_size,
        "threads": threads or torch.get_num_threads(),
        "max_abs_error": float(result.max_abs),
        "max_rel_error": float(result.max_rel),
    }
    for key, model in (("before", result.trained), ("after", result.fused)):
        report[key] = {**count_modules(model), "gflops": count_gflops(model, result.img_size)}
    report["before"]["latency_ms"], report["after"]["latency_ms"] = latency["trained"], latency["fused"]
    report["latency_ratio"] = latency["trained"] / latency["fused"]
    return report
