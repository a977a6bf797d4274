"""CPU latency at batch 1: RepYOLOv5s training form vs fused vs plain YOLOv5s fused.

    python -m bench.latency [--img 320 640] [--rounds 15] [--threads 2]

All models run in one process, interleaved round-robin (one forward of each per round), so drift in
machine load hits every model alike; the median over rounds is reported with the ratios
fused/plain (expected 1.00 within noise) and training-form/fused (expected well above 1).
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

import torch
from torch import nn

from models.yolo import Model
from utils.deploy.timing import interleaved_latency

LOGGER = logging.getLogger(__name__)


def build_models(nc: int = 80) -> dict[str, nn.Module]:
    """The three forms compared, all in eval mode."""
    torch.manual_seed(0)
    train_form = Model("repyolov5s.yaml", nc=nc).eval()
    fused = Model("repyolov5s.yaml", nc=nc).eval()
    fused.load_state_dict(train_form.state_dict())
    return {
        "repyolov5s train-form": train_form,
        "repyolov5s fused": fused.reparameterize(),
        "yolov5s fused": Model("yolov5s.yaml", nc=nc).eval().reparameterize(),
    }


def measure(models: dict[str, nn.Module], img_size: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per forward for each model at batch 1, img_size x img_size."""
    x = torch.rand(1, 3, img_size, img_size)
    calls = {name: (lambda model=model: model(x)) for name, model in models.items()}
    return interleaved_latency(calls, rounds, warmup=warmup)


def run(
    img_sizes: Sequence[int] = (320, 640), rounds: int = 15, warmup: int = 3, threads: int | None = None
) -> dict[int, dict[str, float]]:
    """Print and return {img_size: {model name: median ms}}."""
    if threads:
        torch.set_num_threads(threads)
    models = build_models()
    threads_used = torch.get_num_threads()
    print(f"CPU batch 1, torch {torch.__version__}, {threads_used} threads, median of {rounds} rounds")
    results = {}
    for img_size in img_sizes:
        results[img_size] = latencies = measure(models, img_size, rounds, warmup)
        train_form, fused = latencies["repyolov5s train-form"], latencies["repyolov5s fused"]
        plain = latencies["yolov5s fused"]
        print(f"\n{img_size}x{img_size}")
        for name, milliseconds in latencies.items():
            print(f"  {name:<24}{milliseconds:9.1f} ms")
        print(f"  {'fused / plain':<24}{fused / plain:9.2f}")
        print(f"  {'train-form / fused':<24}{train_form / fused:9.2f}")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img", "--img-size", dest="img_sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forwards per model and size")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run(args.img_sizes, args.rounds, args.warmup, args.threads)


if __name__ == "__main__":
    main()
