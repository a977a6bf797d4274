"""Fuse a trained RepYOLO checkpoint for deployment, verify it, and optionally export ONNX.

    python convert.py --weights runs/train/exp/weights/best.pt [--img 640] [--onnx] [--dynamic]

Every RepVGG block and every Conv+BN of the training form becomes one conv. The fused model is
checked against the training form on real images from the checkpoint's dataset (random input
when those are not on this machine) and is saved only when the relative error is at most 1e-5,
as ``best_fused.pt`` beside the input (``deploy: True``: loading builds the fused graph directly).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import cv2
import torch
from torch import nn

from models.blocks.repvgg import RepVGGBlock
from models.yolo import count_gflops, count_parameters
from utils.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from utils.log import setup_logging
from utils.timing import interleaved_latency

LOGGER = logging.getLogger(__name__)

MAX_RELATIVE_ERROR = 1e-5
MAX_ONNX_RELATIVE_ERROR = 1e-4  # a different runtime with different kernels: round-off only
VERIFY_IMAGES = 8
# Checkpoint keys that describe the run and stay useful beside the fused weights.
CARRIED_KEYS = ("epoch", "best_fitness", "date", "hyp", "opt", "data", "results")


class ConversionError(RuntimeError):
    """Conversion refused; the message is one sentence naming the file and the fix."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="training-form checkpoint, e.g. best.pt")
    parser.add_argument(
        "--output", default=None, help="fused checkpoint path (default: <stem>_fused.pt beside it)"
    )
    parser.add_argument(
        "--img",
        "--img-size",
        dest="img_size",
        type=int,
        default=None,
        help="verification and ONNX input size (default: the training image size, else 640)",
    )
    parser.add_argument("--onnx", action="store_true", help="also export <output stem>.onnx and check it")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--dynamic", action="store_true", help="ONNX with dynamic batch, height and width")
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model for the latency rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for the latency rows, PyTorch and ORT alike (0: defaults)",
    )
    return parser.parse_args(argv)


def count_modules(model: nn.Module) -> dict[str, int]:
    """Parameters and the module kinds fusion removes or keeps."""
    modules = list(model.modules())
    return {
        "parameters": count_parameters(model),
        "conv": sum(isinstance(m, nn.Conv2d) for m in modules),
        "bn": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules),
        "repvgg": sum(isinstance(m, RepVGGBlock) and not m.deploy for m in modules),
        "repvgg_fused": sum(isinstance(m, RepVGGBlock) and m.deploy for m in modules),
    }


def verification_input(ckpt: dict, img_size: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """Up to 8 validation images of the checkpoint's dataset, letterboxed to img_size, as a float
    (B, 3, img_size, img_size) RGB 0..1 batch; a seeded random (2, 3, img_size, img_size) batch
    when none of them is on this machine. Returns the batch and a description of it."""
    from utils.augment import image_to_tensor, letterbox
    from utils.dataset import image_files_from_sources

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


def default_output(weights: Path) -> Path:
    return weights.with_name(f"{weights.stem}_fused.pt")


def fuse_and_verify(ckpt: dict, img_size: int, device: torch.device) -> dict:
    """Build the training form and its fused copy, verify them; raise when the error is too big."""
    from models.reparam import verify

    trained = model_from_checkpoint(ckpt).to(device).float().eval()
    fused = copy.deepcopy(trained).reparameterize().eval()
    images, described = verification_input(ckpt, img_size, device)
    with torch.no_grad():
        max_abs, max_rel = verify(trained, fused, images)
    return {
        "trained": trained,
        "fused": fused,
        "images": images,
        "input": described,
        "abs": max_abs,
        "rel": max_rel,
    }


def run(
    weights: str | Path,
    output: str | Path | None = None,
    img_size: int | None = None,
    onnx: bool = False,
    opset: int = 17,
    dynamic: bool = False,
    device: str = "cpu",
    runs: int = 10,
    threads: int = 0,
) -> dict:
    """Convert ``weights``; returns the report as a dict (also printed). Raises ConversionError.

    runs: timed calls per model for the latency rows; threads: CPU threads while timing (0: defaults).
    """
    from utils.device import select_device

    weights = Path(weights)
    device = select_device(device)
    ckpt = load_checkpoint(weights)
    img_size = img_size or training_img_size(ckpt)
    if ckpt.get("deploy"):
        LOGGER.info("%s is already fused (deploy: True); nothing to convert.", weights)
        report = {"status": "already fused", "weights": str(weights), "output": None}
        if onnx:
            model = model_from_checkpoint(ckpt).to(device).float().eval()
            images = verification_input(ckpt, img_size, device)[0]
            report["onnx"] = export_and_check(
                model, weights.with_suffix(".onnx"), images, opset, dynamic, runs, threads
            )
        return report
    output = Path(output) if output else default_output(weights)
    result = fuse_and_verify(ckpt, img_size, device)
    if not result["rel"] <= MAX_RELATIVE_ERROR:
        raise ConversionError(
            f"fused model of {weights} differs from the training form by relative error {result['rel']:.3g} "
            f"(limit {MAX_RELATIVE_ERROR:g}) on {result['input']}; not saved — check the checkpoint's BN "
            f"statistics for NaN/inf or report the model config."
        )
    trained, fused = result["trained"], result["fused"]
    fused_ckpt = make_checkpoint(fused, **{key: ckpt[key] for key in CARRIED_KEYS if key in ckpt})
    fused_ckpt["converted_from"] = str(weights)
    save_checkpoint(fused_ckpt, output)

    single = result["images"][:1]
    latency = interleaved_latency(
        {"trained": lambda: trained(single), "fused": lambda: fused(single)}, runs, threads
    )
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
    print(format_report(report))
    print(f"Saved the fused checkpoint to {output}")
    if onnx:
        report["onnx"] = export_and_check(
            fused, output.with_suffix(".onnx"), result["images"], opset, dynamic, runs, threads
        )
    return report


def format_report(report: dict) -> str:
    before, after = report["before"], report["after"]
    rows = [
        ("parameters", f"{before['parameters']:,}", f"{after['parameters']:,}"),
        ("GFLOPs", f"{before['gflops']:.2f}", f"{after['gflops']:.2f}"),
        ("Conv2d modules", before["conv"], after["conv"]),
        ("BatchNorm modules", before["bn"], after["bn"]),
        ("RepVGG multi-branch", before["repvgg"], after["repvgg"]),
        ("RepVGG fused (1 conv)", before["repvgg_fused"], after["repvgg_fused"]),
        (
            f"CPU latency, batch 1, {report['threads']} thr",
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


def export_and_check(
    model: nn.Module, path: Path, images: torch.Tensor, opset: int, dynamic: bool, runs: int, threads: int = 0
) -> dict:
    """Export ONNX, compare onnxruntime with PyTorch on ``images``, count ops, time both at batch 1."""
    import onnx

    from utils.backend import load_inference_model
    from utils.export import classify_add_nodes, count_ops, export_onnx, format_op_counts

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
    with torch.no_grad():
        reference = model(images).cpu()
    predicted = session(images.cpu())
    max_abs = float((predicted - reference).abs().max())
    max_rel = max_abs / max(float(reference.abs().max()), 1e-12)
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
            f"(limit {MAX_ONNX_RELATIVE_ERROR:g}); do not deploy it — try another --opset."
        )
    single = images[:1]
    latency = interleaved_latency(
        {"pytorch": lambda: model(single), "onnxruntime": lambda: session(single.cpu())}, runs, threads
    )
    threads_used = f"{threads} thr" if threads else "default threads"
    print(
        f"  CPU latency, batch 1, {threads_used}: PyTorch fused {latency['pytorch']:.1f} ms, ONNX Runtime "
        f"{latency['onnxruntime']:.1f} ms (ORT / PyTorch {latency['onnxruntime'] / latency['pytorch']:.2f}x)"
    )
    return {
        "path": str(path),
        "ops": dict(counts),
        "add_kinds": dict(add_kinds),
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "latency_ms": latency,
    }


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        run(**vars(args))
    except (ConversionError, FileNotFoundError, ValueError) as error:
        LOGGER.error("ERROR: %s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
