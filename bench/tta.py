"""Test-time augmentation against plain inference on one model, side by side in this process.

    python -m bench.tta --weights runs/train/exp/weights/best_fused.pt [--data data/shapes.yaml] [--img 160]

Validates the weights twice on the validation split, plain and with --augment (utils.deploy.tta: scales 1,
0.83 mirrored and 0.67, merged before NMS), alternating --repeats times so that neither run gets the warmer
caches, and prints one Markdown row per mode (mAP50, mAP50-95, inference + NMS ms per image, the best of
the repeats) and the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Sequence

import val
from utils.deploy.backend import load_inference_model
from utils.deploy.tta import AugmentedInference


def measure(options: argparse.Namespace) -> dict[str, dict]:
    """{"plain" | "augment": {"mAP50", "mAP50_95", "ms"}}: ms is inference + NMS per image, the best of the
    repeats."""
    model = load_inference_model(options.weights, "cpu")
    models = {"plain": model, "augment": AugmentedInference(model)}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as folder:
        for _ in range(options.repeats):
            for mode, inference in models.items():
                metrics = val.run(model=inference, data=options.data, img_size=options.img_size, device="cpu",
                                  workers=0, plots=False, quiet=True, save_dir=folder)  # fmt: skip
                ms = metrics["speed_ms"]["inference"] + metrics["speed_ms"]["nms"]
                best = results.get(mode, {}).get("ms", float("inf"))
                results[mode] = {
                    "mAP50": metrics["mAP50"],
                    "mAP50_95": metrics["mAP50_95"],
                    "ms": min(ms, best),
                }
    return results


def report(results: dict[str, dict]) -> None:
    print("| inference | mAP50 | mAP50-95 | ms per image (inference + NMS) |")
    print("|---|---|---|---|")
    for mode, row in results.items():
        print(f"| {mode} | {row['mAP50']:.4f} | {row['mAP50_95']:.4f} | {row['ms']:.2f} |")
    plain, augment = results["plain"], results["augment"]
    print(
        f"\n--augment: mAP50-95 {100 * (augment['mAP50_95'] - plain['mAP50_95']):+.2f} points, "
        f"{augment['ms'] / plain['ms']:.2f}x the time"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="any weights val.py takes")
    parser.add_argument("--data", default=None, help="dataset YAML (default: the bundled one)")
    parser.add_argument("--img", dest="img_size", type=int, default=None, help="val.py --img")
    parser.add_argument("--repeats", type=int, default=2, help="validations per mode, alternating")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    results = measure(parse_args(argv))
    report(results)
    return results


if __name__ == "__main__":
    main()
