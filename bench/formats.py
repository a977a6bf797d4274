"""Every deployment format of one checkpoint in one table (our yolov5 benchmarks.py): file size, mAP50-95
and its drop against the FP32 ONNX graph at the same input, and batch-1 latency at each of --sizes.

    python -m bench.formats [--weights runs/train/exp/weights/best.pt] [--sizes 320 640] [--threads 2]
                            [--rounds 20] [--calib 128] [--project runs/bench-formats] [--json F]

convert.py writes every format whose packages are installed (ONNX, OpenVINO IR, TorchScript, NCNN,
LiteRT FP32/FP16/INT8, ExecuTorch FP32/INT8, MNN, CoreML; INT8 ONNX and OpenVINO too) at the training
image size, calibrated on --calib images, and val.py's own run() scores each file on the validation
split. Every static export is scored at that size with square letterboxes, so the drop column is the
format's, not the input shape's; the fused .pt row is val.py's score with yolov5's rectangular batches,
as a user sees it, and has no drop. Then each format is written again at each of --sizes (16
calibration images: those are only timed) and every runtime is timed in one process, interleaved round
by round, --threads threads each. CoreML is written and its spec checked but not run: Core ML predicts
only on macOS. A format whose converter is not installed is a row that says so.

Artefacts are kept under --project and reused when the bench runs again (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Sequence

import torch

from bench.quantization import LATENCY_CALIB, converted, cpu_features, scores

PRECISIONS = {"float32": "FP32", "float16": "FP16", "int8": "INT8"}


def rows() -> list[tuple[str, object, object]]:
    """(row key, format, artefact) of every artefact of every format in the registry (utils.deploy.formats),
    in its order; a runtime of another format's artefacts (OpenCV DNN) is a row of its own."""
    from utils.deploy.formats import REGISTRY

    return [
        (f"{fmt.name}{artefact.suffix}", fmt, artefact)
        for fmt in REGISTRY.values()
        for artefact in fmt.artefacts
    ]


REFERENCE = "onnx.onnx"  # the drops are against the FP32 ONNX graph at the same input


def label(fmt) -> str:
    """The row's runtime; the .pt is scored as val.py scores it for a user, with rectangular batches."""
    return f"{fmt.runtime_label} (rect batches)" if fmt.name == "pytorch" else fmt.runtime_label


def installed_flags() -> dict[str, bool]:
    """{convert.py flag: True} of each format whose packages are installed (convert.py's keywords)."""
    from utils.deploy.formats import REGISTRY

    return {fmt.flag: True for fmt in REGISTRY.values() if fmt.flag and not fmt.missing()}


def missing_note(fmt) -> str | None:
    missing = fmt.missing()
    return f"not installed: {', '.join(missing)}" if missing else fmt.unavailable()


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def exports(checkpoint: Path, folder: Path, img_size: int, calib: int) -> Path:
    """convert.py --int8 and every installed format of ``checkpoint`` into ``folder`` (reused when done);
    the base name of the artefacts (the fused .pt without its suffix)."""
    return Path(converted(checkpoint, folder, img_size, calib, None, installed_flags())["fused"]).with_suffix(
        ""
    )


def latency_calls(base: Path, img_size: int, threads: int) -> dict[str, object]:
    """{row key: a batch-1 call} of every runnable artefact of ``base``."""
    from utils.deploy.backend import load_inference_model

    x = torch.rand(1, 3, img_size, img_size)
    calls = {}
    for key, fmt, artefact in rows():
        path = artefact.path(base)
        if missing_note(fmt) or not path.exists():
            continue
        model = load_inference_model(path, threads=threads, runtime=fmt.name)
        calls[key] = lambda model=model: model(x)
    return calls


def run(
    weights: str = "runs/train/exp/weights/best.pt",
    sizes: Sequence[int] = (320, 640),
    threads: int = 2,
    rounds: int = 20,
    calib: int = 128,
    project: str = "runs/bench-formats",
    json_path: str | None = None,
    data: str | None = None,
) -> dict:
    """Measure, print the table and return (and write to json_path) its numbers."""
    from utils.checkpoint import load_checkpoint
    from utils.deploy.fuse import training_img_size
    from utils.deploy.timing import interleaved_latency

    torch.set_num_threads(threads)
    checkpoint, root = Path(weights), Path(project)
    ckpt = load_checkpoint(checkpoint)
    map_size = training_img_size(ckpt)
    data_yaml = data or (ckpt.get("data") or {}).get("yaml_file")
    base = exports(checkpoint, root / f"score-{map_size}", map_size, calib)
    table: dict[str, dict] = {}
    for key, fmt, artefact in rows():
        path = artefact.path(base)
        row = table[key] = {
            "label": label(fmt),
            "precision": PRECISIONS[artefact.precision],
            "latency_ms": {},
        }
        row["note"] = missing_note(fmt)
        if path.exists():
            row["size_mb"] = size_mb(path)
            if not row["note"]:
                row.update(scores(path, data_yaml, map_size, runtime=fmt.name))
    for key, row in table.items():
        if "mAP50_95" in row and not key.startswith("pytorch"):
            row["drop"] = table[REFERENCE]["mAP50_95"] - row["mAP50_95"]
    for size in sizes:
        timed = exports(checkpoint, root / f"latency-{size}", size, LATENCY_CALIB)
        calls = latency_calls(timed, size, threads)
        for key, value in interleaved_latency(calls, rounds, threads, warmup=3).items():
            table[key]["latency_ms"][str(size)] = value
    results = {"cpu": platform.processor() or platform.machine(), "features": cpu_features(),
               "torch": torch.__version__, "threads": threads, "weights": str(checkpoint),
               "img_size": map_size, "sizes": list(sizes), "rounds": rounds, "rows": table}  # fmt: skip
    print(format_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def format_table(results: dict) -> str:
    sizes = [str(size) for size in results["sizes"]]
    features = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in results["features"].items())
    lines = [
        f"\n{results['weights']}: mAP50-95 (points) on the validation split at {results['img_size']} px, "
        f"drop against the FP32 ONNX graph at the same input; batch-1 ms, median of {results['rounds']} "
        f"interleaved rounds, {results['threads']} threads (torch {results['torch']}; CPU: {features})",
        f"{'format':28s}{'prec':>5s}{'MB':>7s}{'mAP50-95':>10s}{'drop':>7s}"
        + "".join(f"{size + ' px':>9s}" for size in sizes),
    ]
    for row in results["rows"].values():
        cells = f"{row['label']:28s}{row['precision']:>5s}"
        cells += f"{row['size_mb']:7.1f}" if "size_mb" in row else f"{'-':>7s}"
        cells += f"{row['mAP50_95']:10.2f}" if "mAP50_95" in row else f"{'-':>10s}"
        cells += f"{row['drop']:7.2f}" if "drop" in row else f"{'':7s}"
        latency = row["latency_ms"]
        cells += "".join(f"{latency[s]:9.1f}" if s in latency else f"{'-':>9s}" for s in sizes)
        lines.append(cells + (f"  ({row['note']})" if row.get("note") else ""))
    lines += fastest_lines(results["rows"], sizes)
    return "\n".join(lines)


def edge_keys() -> set[str]:
    """The rows of the edge runtimes (the formats of requirements-edge.txt)."""
    from utils.deploy.formats.base import EDGE_REQUIREMENTS

    return {key for key, fmt, _ in rows() if fmt.requirements == EDGE_REQUIREMENTS}


def fastest_lines(table: dict, sizes: Sequence[str]) -> list[str]:
    """Which runtime is fastest at each size, FP32 and INT8, and the best INT8 (and the best INT8 of an
    edge runtime, LiteRT or ExecuTorch) against FP32 ONNX Runtime."""
    lines = []
    for size in sizes:
        timed = {key: row["latency_ms"][size] for key, row in table.items() if size in row["latency_ms"]}
        for precision in ("FP32", "INT8"):
            of_precision = [key for key in timed if table[key]["precision"] == precision]
            if of_precision:
                best = min(of_precision, key=timed.get)
                lines.append(f"fastest {precision} at {size} px: {table[best]['label']} {timed[best]:.1f} ms")
        reference = timed.get(REFERENCE)
        int8 = {key: ms for key, ms in timed.items() if table[key]["precision"] == "INT8"}
        edge = {key: ms for key, ms in int8.items() if key in edge_keys()}
        for name, group in (("INT8", int8), ("edge INT8", edge)):
            if reference and group:
                best = min(group, key=group.get)
                lines.append(f"best {name} ({table[best]['label']}) / FP32 ONNX Runtime at {size} px: "
                             f"{group[best] / reference:.2f}x")  # fmt: skip
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default="runs/train/exp/weights/best.pt", help="the checkpoint")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="latency image sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calib", type=int, default=128, help="INT8 calibration images (scored exports)")
    parser.add_argument("--project", default="runs/bench-formats")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--data", default=None, help="dataset YAML (default: the checkpoint's own)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    from utils.log import setup_logging

    setup_logging()
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    main()
