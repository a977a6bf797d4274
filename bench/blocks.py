"""The re-parameterization family side by side: plain yolov5s and every re-parameterized s-variant.

    python -m bench.blocks [--img 320] [--batch-size 8] [--threads 2] [--rounds 3] [--steps 5]
                           [--epochs N] [--json blocks.json] [--device cpu] [--models ...]

One table, one run on this machine. Per model:
  train img/s   images per second of the library's own training step (utils.train.epoch.train_step with
                an OptimizerStep, as train.py runs it; bench.train_throughput's Trainee) on one fixed
                batch, median over --rounds rounds interleaved model by model;
  peak MiB      peak memory of those training steps, measured in a fresh spawned process per model and
                round so the high-water mark is that model's alone: ru_maxrss on CPU (the whole
                process: interpreter, model, optimizer and EMA state, activations),
                torch.cuda.max_memory_allocated on CUDA; the median over rounds;
  params        training form and fused;
  fused ms      batch-1 latency of the fused model (utils.deploy.timing.interleaved_latency);
and the ratios of train img/s and peak memory to plain yolov5s.
With --epochs N each model is also trained for N epochs on the bundled dataset (train.py's run, img 160,
plots off) and its final mAP50 and mAP50-95 are added.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

from bench.train_throughput import build, measure_steps
from models.yolo import Model, count_parameters
from utils.data.config import load_data_config
from utils.deploy.timing import interleaved_latency
from utils.device import select_device

PLAIN = "yolov5s.yaml"
MODELS = (
    PLAIN,
    "repyolov5s.yaml",
    "repyolov5s-acb.yaml",
    "repyolov5s-dbb.yaml",
    "repyolov5s-orepa.yaml",
    "repyolov5s-mobileone.yaml",
    "repyolov5s-qa.yaml",
)
EPOCHS_IMG_SIZE = 160


def training_step_in_child(
    cfg: str, nc: int, img_size: int, batch_size: int, steps: int, threads: int, device: str
) -> dict:
    """Run in a fresh process: images/s of `steps` real training steps and that process's peak memory."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    target = select_device(device)
    trainee = build(cfg, nc, img_size, target)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    images_per_s = measure_steps(trainee, batch_size, img_size, steps, nc)
    if target.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(target) / 2**20
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return {"images_per_s": images_per_s, "peak_mib": peak_mib}


def measure_training(
    models: Sequence[str],
    nc: int,
    img_size: int,
    batch_size: int,
    steps: int,
    threads: int,
    rounds: int,
    device: str,
) -> dict[str, dict[str, float]]:
    """{cfg: {"images_per_s", "peak_mib"}}: medians over rounds, each model in its own process each round."""
    context = multiprocessing.get_context("spawn")
    samples: dict[str, list[dict]] = {cfg: [] for cfg in models}
    for round_index in range(rounds):
        for cfg in models:
            with context.Pool(1) as pool:
                sample = pool.apply(
                    training_step_in_child, (cfg, nc, img_size, batch_size, steps, threads, device)
                )
            samples[cfg].append(sample)
            print(
                f"round {round_index + 1}/{rounds} {cfg:26s} {sample['images_per_s']:7.2f} img/s "
                f"{sample['peak_mib']:8.0f} MiB",
                flush=True,
            )
    return {
        cfg: {key: statistics.median(s[key] for s in runs) for key in ("images_per_s", "peak_mib")}
        for cfg, runs in samples.items()
    }


def measure_fused(
    models: Sequence[str], nc: int, img_size: int, threads: int, rounds: int
) -> dict[str, dict]:
    """{cfg: {"params", "params_fused", "fused_ms"}}: parameter counts and interleaved batch-1 latency."""
    torch.manual_seed(0)
    built = {cfg: Model(cfg, nc=nc).eval() for cfg in models}
    results = {cfg: {"params": count_parameters(model)} for cfg, model in built.items()}
    for cfg, model in built.items():
        results[cfg]["params_fused"] = count_parameters(model.reparameterize())
    x = torch.rand(1, 3, img_size, img_size)
    calls = {cfg: (lambda model=model: model(x)) for cfg, model in built.items()}
    for cfg, milliseconds in interleaved_latency(calls, max(rounds, 1) * 5, threads, warmup=2).items():
        results[cfg]["fused_ms"] = milliseconds
    return results


def train_and_evaluate(models: Sequence[str], epochs: int, device: str, project: str) -> dict[str, dict]:
    """{cfg: {"mAP50", "mAP50_95"}} after `epochs` epochs on the bundled dataset at img 160, plots off."""
    import train  # the script's run(): the same entry point a user calls

    results = {}
    for cfg in models:
        summary = train.run(
            cfg=cfg,
            epochs=epochs,
            img_size=EPOCHS_IMG_SIZE,
            device=device,
            project=project,
            name=f"blocks-{Path(cfg).stem}",
            plots=False,
            tensorboard=False,
        )
        final = summary.get("final") or {}
        results[cfg] = {"mAP50": final.get("mAP50"), "mAP50_95": final.get("mAP50_95")}
        print(
            f"trained {cfg}: mAP50 {results[cfg]['mAP50']}, mAP50-95 {results[cfg]['mAP50_95']}", flush=True
        )
    return results


def format_table(results: dict[str, dict], header: str) -> str:
    plain = results[PLAIN]
    with_map = any("mAP50" in row for row in results.values())
    columns = f"{'model':26s}{'train img/s':>12s}{'x plain':>8s}{'peak MiB':>10s}{'x plain':>8s}"
    columns += f"{'params':>12s}{'fused':>12s}{'fused ms':>10s}"
    columns += f"{'mAP50':>8s}{'mAP50-95':>10s}" if with_map else ""
    lines = [header, columns]
    for cfg, row in results.items():
        line = (
            f"{cfg:26s}{row['images_per_s']:12.2f}{row['images_per_s'] / plain['images_per_s']:8.2f}"
            f"{row['peak_mib']:10.0f}{row['peak_mib'] / plain['peak_mib']:8.2f}"
            f"{row['params']:12,}{row['params_fused']:12,}{row['fused_ms']:10.1f}"
        )
        if with_map:
            line += "".join(
                f"{row[key]:{width}.3f}" if row.get(key) is not None else f"{'-':>{width}s}"
                for key, width in (("mAP50", 8), ("mAP50_95", 10))
            )
        lines.append(line)
    return "\n".join(lines)


def run(
    img_size: int = 320,
    batch_size: int = 8,
    threads: int = 2,
    rounds: int = 3,
    steps: int = 5,
    epochs: int = 0,
    json_path: str | None = None,
    device: str = "cpu",
    project: str = "runs/bench-blocks",
    models: Sequence[str] = MODELS,
) -> dict[str, dict]:
    """Measure, print the table and return {cfg: {column: value}} (also written to json_path)."""
    models = [PLAIN, *(cfg for cfg in models if cfg != PLAIN)]  # the ratios' reference is always measured
    nc = int(load_data_config(None)["nc"])
    training = measure_training(models, nc, img_size, batch_size, steps, threads, rounds, device)
    torch.set_num_threads(threads)
    fused = measure_fused(models, nc, img_size, threads, rounds)
    results = {cfg: {**training[cfg], **fused[cfg]} for cfg in models}
    if epochs > 0:
        for cfg, scores in train_and_evaluate(models, epochs, device, project).items():
            results[cfg].update(scores)
    header = (
        f"\n{img_size} px, batch {batch_size} (latency: batch 1, fused), {device}, {threads} threads, "
        f"torch {torch.__version__}, median of {rounds} interleaved rounds"
        + (f"; mAP after {epochs} epochs on the bundled dataset at {EPOCHS_IMG_SIZE} px" if epochs else "")
    )
    print(format_table(results, header))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--img", dest="img_size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in every measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model and round")
    parser.add_argument("--epochs", type=int, default=0, help="also train each model N epochs, add mAP")
    parser.add_argument("--json", dest="json_path", default=None, help="write the results to this file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--project", default="runs/bench-blocks", help="where --epochs runs are saved")
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), help=f"model YAMLs (default: all; the first is {PLAIN})"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    main()
