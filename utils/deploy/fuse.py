"""Fusing a trained checkpoint for deployment: the fused copy, its check against the training form on
real images, and the before/after report convert.py prints."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import torch
from torch import nn

from models import reparam
from models.blocks import BLOCKS, ReparamBlock
from models.yolo import count_gflops, count_parameters
from utils.checkpoint import model_from_checkpoint
from utils.data.config import image_files_from_sources
from utils.data.preprocess import check_img_size, image_to_tensor, letterbox
from utils.deploy.timing import channels_last_call, interleaved_latency

LOGGER = logging.getLogger(__name__)

MAX_RELATIVE_ERROR = 1e-5
VERIFY_IMAGES = 8
BLOCK_KINDS = {"ACBlock": "acb", "DiverseBranchBlock": "dbb"}  # report keys not derived from the name


def count_modules(model: nn.Module) -> dict:
    """Parameters, Conv2d and BatchNorm modules, and per registered re-parameterizable block kind its
    multi-branch and fused counts: flat keys such as "repvgg" / "repvgg_fused" ("acb", "dbb", ... for the
    others, see block_kind), and "blocks": {registry name: {"multi_branch": n, "fused": n}} for the kinds
    the model has."""
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
        kind = block_kind(name)
        counts[kind], counts[f"{kind}_fused"] = multi_branch, len(of_kind) - multi_branch
        if of_kind:
            counts["blocks"][name] = {"multi_branch": multi_branch, "fused": len(of_kind) - multi_branch}
    return counts


def block_kind(name: str) -> str:
    """The report key of a registered block: RepVGGBlock -> repvgg, DiverseBranchBlock -> dbb, ..."""
    return BLOCK_KINDS.get(name, name.removesuffix("Block").lower())


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


def fuse_and_verify(ckpt: dict, img_size: int, device: torch.device) -> dict:
    """Build the training form and its fused copy and compare them on real images (see verification_input)
    at img_size rounded up to the stride; -> {"trained", "fused", "images", "input" (what the images are),
    "img_size", "abs", "rel" (max errors)}."""
    trained = model_from_checkpoint(ckpt).to(device).float().eval()
    fused = reparam.reparameterized_copy(trained).eval()
    img_size = check_img_size(img_size, int(trained.stride.max()))
    images, described = verification_input(ckpt, img_size, device)
    max_abs, max_rel = reparam.verify(trained, fused, images)
    return {
        "trained": trained,
        "fused": fused,
        "images": images,
        "input": described,
        "img_size": img_size,
        "abs": max_abs,
        "rel": max_rel,
    }


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


def fusion_report(result: dict, weights: Path, output: Path, img_size: int, runs: int, threads: int) -> dict:
    """The before/after table's numbers: module counts, GFLOPs and interleaved batch-1 latency."""
    trained, fused = result["trained"], result["fused"]
    single = result["images"][:1]
    calls = {"trained": channels_last_call(trained, single), "fused": channels_last_call(fused, single)}
    latency = interleaved_latency(calls, runs, threads)
    report = {
        "status": "converted",
        "weights": str(weights),
        "output": str(output),
        "input": result["input"],
        "img_size": img_size,
        "threads": threads or torch.get_num_threads(),
        "max_abs_error": float(result["abs"]),
        "max_rel_error": float(result["rel"]),
    }
    for key, model in (("before", trained), ("after", fused)):
        report[key] = {**count_modules(model), "gflops": count_gflops(model, img_size)}
    report["before"]["latency_ms"], report["after"]["latency_ms"] = latency["trained"], latency["fused"]
    report["latency_ratio"] = latency["trained"] / latency["fused"]
    return report
