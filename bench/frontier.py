"""The speed/accuracy frontier: what each model gives per millisecond in each CPU runtime.

    python -m bench.frontier [--study runs/bench-plain] [--data data/shapes-hard.yaml] [--seed 0]
                             [--models SPEC ...] [--sizes 320 640] [--threads 2] [--rounds 10]
                             [--project runs/bench-frontier] [--json F]

For every model of the branch study (bench.branches; its runs must exist under --study), the study's
mAP50-95 (mean and sd over its seeds) sits beside what bench.quantization measures on the run of --seed:
the INT8 drop of ONNX Runtime and OpenVINO against their own FP32 model (val.py on the validation split,
at the training size), and the fused model's batch-1 latency at each of --sizes in every runtime and
precision (PyTorch FP32 and, on a CPU with native bfloat16, --half; ONNX Runtime FP32 and INT8;
OpenVINO FP32, INT8 and bf16), interleaved in one process on --threads threads. The last table gives,
per size, each model's fastest FP32, INT8 and half runtime and its time against yolov5s's fastest
runtime of that precision: each model at its best.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Sequence

from bench.accuracy import Variant
from utils.errors import USER_ERRORS, ConfigError
from utils.log import setup_logging

LOGGER = logging.getLogger("bench.frontier")
MODELS = (
    "yolov5s.yaml",
    "repyolov5s.yaml",
    "yolov5s-plain.yaml",
    "repyolov5s-plain.yaml",
    "repyolov5s-plain.yaml:activation=SiLU",
    "repyolov5s-plain-qa.yaml",
)
REFERENCE = "yolov5s"
FP32 = ("PyTorch channels_last", "ORT FP32", "OpenVINO FP32")
INT8 = ("ORT INT8", "OpenVINO INT8")
HALF = ("PyTorch half", "OpenVINO half")


def study_scores(variant: Variant, study: str) -> dict:
    """{"mAP50_95": [per seed], "seeds": [...]} from the finished runs of one model under study."""
    scores = {}
    for folder in sorted(Path(study).glob(f"{variant.run_name(0).removesuffix('-seed0')}-seed*")):
        metrics = folder / "metrics.json"
        seed = folder.name.rsplit("-seed", 1)[1]
        if metrics.is_file() and seed.isdigit():
            scores[int(seed)] = json.loads(metrics.read_text())["mAP50_95"]
    if not scores:
        raise ConfigError(
            f"{study} holds no finished run of {variant.spec}; train the study first "
            f"(python -m bench.branches --project {study}) or name its folder with --study."
        )
    return {"seeds": sorted(scores), "mAP50_95": [scores[s] for s in sorted(scores)]}


def fastest(latency: dict[str, float], labels: Sequence[str]) -> str | None:
    """The label of the fastest runtime among labels that were measured, or None."""
    present = [label for label in labels if label in latency]
    return min(present, key=latency.get) if present else None


def frontier_rows(results: dict, study: dict, sizes: Sequence[int]) -> list[dict]:
    """One row per model and size: study mAP, INT8 drops, the fastest FP32 / INT8 / half runtime and its
    time against the reference model's fastest runtime of the same precision (each at its best)."""
    rows = []
    reference = results["models"].get(REFERENCE, {}).get("latency_ms")
    for name, model in results["models"].items():
        scores = study[name]["mAP50_95"]
        drops = {label: model["map"][label].get("drop") for label in INT8 if label in model["map"]}
        for size in sizes:
            latency = model["latency_ms"][str(size)]
            row = {"model": name, "size": size, "mAP50_95": 100 * statistics.fmean(scores),
                   "sd": 100 * statistics.stdev(scores) if len(scores) > 1 else None, "seeds": len(scores),
                   "int8_drop": drops}  # fmt: skip
            for kind, labels in (("fp32", FP32), ("int8", INT8), ("half", HALF)):
                best = fastest(latency, labels)
                if best is None:
                    continue
                row[kind] = {"runtime": best, "ms": latency[best]}
                if reference is not None and fastest(reference[str(size)], labels):
                    their = reference[str(size)]
                    row[kind]["vs_reference"] = latency[best] / their[fastest(their, labels)]
            rows.append(row)
    return rows


def format_frontier(rows: list[dict], threads: int) -> str:
    lines = [
        f"\nfrontier: study mAP50-95 (points, mean (sd) over seeds), INT8 drop of the --seed run "
        f"(ORT / OpenVINO, points), fastest runtime per precision at batch 1, {threads} threads; "
        f"x = time / {REFERENCE}'s time in its fastest runtime of that precision",
        f"{'px':>4s}  {'model':34s}{'mAP50-95':>14s}{'INT8 drop':>14s}  {'best FP32':38s}{'best INT8':36s}"
        f"{'best half':34s}",
    ]
    for row in rows:
        drops = " / ".join("-" if v is None else f"{v:.2f}" for v in row["int8_drop"].values())
        score = f"{row['mAP50_95']:.1f}" + ("" if row["sd"] is None else f" ({row['sd']:.1f})")
        cells = []
        for kind, width in (("fp32", 38), ("int8", 36), ("half", 34)):
            cell = row.get(kind)
            text = "-" if cell is None else f"{cell['runtime']} {cell['ms']:.1f} ms"
            if cell and "vs_reference" in cell:
                text += f" {cell['vs_reference']:.2f}x"
            cells.append(f"{text:{width}s}")
        lines.append(f"{row['size']:4d}  {row['model']:34s}{score:>14s}{drops:>14s}  {''.join(cells)}")
    return "\n".join(lines)


def run(
    models: Sequence[str] = MODELS,
    study: str = "runs/bench-plain",
    seed: int = 0,
    sizes: Sequence[int] = (320, 640),
    threads: int = 2,
    rounds: int = 10,
    project: str = "runs/bench-frontier",
    data: str | None = None,
    json_path: str | None = None,
) -> dict:
    from bench import quantization

    variants = [Variant.parse(spec) for spec in models]
    cfgs = [variant.model_cfg(study) for variant in variants]
    names = [Path(cfg).stem for cfg in cfgs]  # bench.quantization names a model by its YAML's stem
    scores = {name: study_scores(variant, study) for name, variant in zip(names, variants)}
    weights = {}
    for name, variant in zip(names, variants):
        best = Path(study) / variant.run_name(seed) / "weights" / "best.pt"
        if not best.is_file():
            raise ConfigError(f"{best} does not exist; train seed {seed} of {variant.spec} or pick --seed.")
        weights[name] = str(best)
    results = quantization.run(weights=weights, sizes=sizes, threads=threads, rounds=rounds, project=project,
                               models=cfgs, data=data)  # fmt: skip
    rows = frontier_rows(results, scores, sizes)
    print(format_frontier(rows, threads))
    output = {"study": scores, "quantization": results, "frontier": rows}
    if json_path:
        Path(json_path).write_text(json.dumps(output, indent=2, default=str) + "\n")
    return output


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model specs of the study")
    parser.add_argument("--study", default="runs/bench-plain", help="the branch study's project folder")
    parser.add_argument("--seed", type=int, default=0, help="the study run whose checkpoint is converted")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640], help="latency image sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (median)")
    parser.add_argument("--project", default="runs/bench-frontier", help="where the exports are kept")
    parser.add_argument("--data", default=None, help="dataset YAML to score on (default: each run's own)")
    parser.add_argument("--json", dest="json_path", default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    setup_logging()
    try:
        return run(**vars(parse_args(argv)))
    except USER_ERRORS as error:
        LOGGER.error(f"bench.frontier: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
