"""Where does re-parameterization pay? The branch study: each re-parameterized model against its own
3x3-only twin (the same graph with plain Conv+BN in every 3x3), seeded and paired.

    python -m bench.branches [--arms c3-silu plain-relu plain-relu-scale1 plain-silu plain-qa] [--seeds 5]
                             [--data data/shapes-hard.yaml] [--only-seeds 0 1] [--project runs/bench-plain]
                             [--threads 1] [--workers 0] [--json out.json] [--finished-only]

An arm is a pair (re-parameterized model, its twin): the C3 pair yolov5s / repyolov5s (residual C3
bottlenecks, SiLU: the graph the product started with), the plain pair yolov5s-plain / repyolov5s-plain
with ReLU (a single-path net, RepVGG's regime), the same with the side branches starting at BN scale 1
as in RepVGG (hyp rep_branch_gamma=1; the default 0 starts each block as its 3x3 alone), the plain pair
with SiLU (the activation switched by
the model YAML's key), and repyolov5s-plain-qa (QARepVGG blocks) against the same plain twin. Every model
trains with seeds 0..N-1 at the dataset's own budget through bench.accuracy (runs are reused and resumed
the same way, so processes may split the seeds with --only-seeds and a last call prints the whole).

Two tables follow: every model's mean mAP with its difference to yolov5s (paired by seed, 95% Student's t
interval), and every arm's branch gain, the re-parameterized model minus its twin, with its interval and
the number of seeds on which the branches won.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Sequence

import torch

from bench.accuracy import (
    Budget,
    Variant,
    add_run_arguments,
    add_seed_arguments,
    budget_line,
    paired_interval,
    train_seeds,
)
from utils.data.config import load_data_config
from utils.errors import USER_ERRORS, ConfigError
from utils.log import setup_logging

LOGGER = logging.getLogger("bench.branches")
REFERENCE = "yolov5s.yaml"  # every model is also compared with plain yolov5s
# arm: (re-parameterized model, its 3x3-only twin), as bench.accuracy model specs
ARMS = {
    "c3-silu": ("repyolov5s.yaml", "yolov5s.yaml"),
    "plain-relu": ("repyolov5s-plain.yaml", "yolov5s-plain.yaml"),
    "plain-relu-scale1": ("repyolov5s-plain.yaml:rep_branch_gamma=1", "yolov5s-plain.yaml"),
    "plain-silu": ("repyolov5s-plain.yaml:activation=SiLU", "yolov5s-plain.yaml:activation=SiLU"),
    "plain-qa": ("repyolov5s-plain-qa.yaml", "yolov5s-plain.yaml"),
}


def study_models(arms: Sequence[str]) -> list[str]:
    """The model specs the arms need, each once: yolov5s first (the reference), then twin before model."""
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm {unknown[0]!r}; use any of {', '.join(ARMS)}.")
    models = [REFERENCE]
    for arm in arms:
        for spec in reversed(ARMS[arm]):
            if spec not in models:
                models.append(spec)
    return models


def metric_entry(rows: dict[int, dict], reference: dict[int, dict], metric: str) -> dict:
    """mean, sd, and the paired difference [mean, low, high] to reference (None for itself or no seeds)."""
    values = [row[metric] for row in rows.values()]
    seeds = sorted(set(rows) & set(reference))
    delta = None
    if rows is not reference and seeds:
        delta = list(paired_interval([rows[s][metric] for s in seeds], [reference[s][metric] for s in seeds]))
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "delta": delta}  # fmt: skip


def summarize(runs: list[dict], arms: Sequence[str]) -> dict:
    """{"models": {spec: {runs, minutes, mAP50, mAP50_95}}, "arms": {arm: {mAP50, mAP50_95, wins, seeds}}}:
    every model against yolov5s, every arm's model against its twin; metrics as metric_entry's."""
    by_model: dict[str, dict[int, dict]] = {}
    for row in runs:
        by_model.setdefault(row["model"], {})[row["seed"]] = row
    reference = by_model.get(REFERENCE, {})
    models = {}
    for spec, rows in by_model.items():
        models[spec] = {"runs": len(rows), "minutes": statistics.fmean(r["minutes"] for r in rows.values())}
        for metric in ("mAP50", "mAP50_95"):
            models[spec][metric] = metric_entry(rows, reference, metric)
    gains = {}
    for arm in arms:
        model, twin = (by_model.get(spec, {}) for spec in ARMS[arm])
        seeds = sorted(set(model) & set(twin))
        if not seeds:
            continue
        gains[arm] = {
            "seeds": len(seeds),
            "wins": sum(model[s]["mAP50_95"] > twin[s]["mAP50_95"] for s in seeds),
        }
        for metric in ("mAP50", "mAP50_95"):
            gains[arm][metric] = metric_entry(
                {s: model[s] for s in seeds}, {s: twin[s] for s in seeds}, metric
            )
    return {"models": models, "arms": gains}


def _points(delta: list | None) -> str:
    """A difference of fractions as points of mAP (x100): mean [low, high]; "-" without paired seeds."""
    if delta is None:
        return "-"
    mean, low, high = delta
    return f"{100 * mean:+.2f}" + ("" if low is None else f" [{100 * low:+.2f}, {100 * high:+.2f}]")


def format_tables(summary: dict, header: str) -> str:
    width = max(len("model"), *(len(spec) for spec in summary["models"])) + 2
    lines = [header, f"{'model':{width}s}{'runs':>5s}{'mAP50 (sd)':>16s}{'mAP50-95 (sd)':>16s}"
             f"{'d mAP50-95 vs yolov5s, points':>32s}{'train min':>11s}"]  # fmt: skip
    for spec, entry in summary["models"].items():
        lines.append(f"{spec:{width}s}{entry['runs']:5d}{_mean_sd(entry['mAP50']):>16s}"
                     f"{_mean_sd(entry['mAP50_95']):>16s}"
                     f"{'reference' if spec == REFERENCE else _points(entry['mAP50_95']['delta']):>32s}"
                     f"{entry['minutes']:11.1f}")  # fmt: skip
    lines += ["", f"{'arm: model - its 3x3-only twin':52s}{'d mAP50-95 [95% CI], points':>32s}"
              f"{'d mAP50 [95% CI], points':>30s}{'seeds won':>11s}"]  # fmt: skip
    for arm, entry in summary["arms"].items():
        model, twin = ARMS[arm]
        label = f"{arm}: {Path(model.split(':')[0]).stem} - {Path(twin.split(':')[0]).stem}"
        won = f"{entry['wins']} / {entry['seeds']}"
        lines.append(f"{label:52s}{_points(entry['mAP50_95']['delta']):>32s}"
                     f"{_points(entry['mAP50']['delta']):>30s}{won:>11s}")  # fmt: skip
    return "\n".join(lines)


def _mean_sd(entry: dict) -> str:
    return f"{entry['mean']:.3f}" + ("" if entry["sd"] is None else f" ({entry['sd']:.3f})")


def run(
    arms: Sequence[str] = tuple(ARMS),
    seeds: int = 5,
    budget: Budget | None = None,
    project: str = "runs/bench-plain",
    only_seeds: Sequence[int] | None = None,
    json_path: str | None = None,
    threads: int = 0,
    finished_only: bool = False,
) -> dict:
    """Train (or reuse) every model of the arms at every seed; print and return the summary.
    finished_only: report the runs that have finished and train none."""
    budget = budget or Budget()
    if threads > 0:
        torch.set_num_threads(threads)
    specs = study_models(arms)
    variants = [Variant.parse(spec) for spec in specs]
    data_config = load_data_config(budget.data)
    chosen = list(only_seeds) if only_seeds else list(range(seeds))
    runs = train_seeds(variants, specs, chosen, budget, project, data_config, finished_only)
    summary = summarize(runs, arms)
    resolved = budget.options(variants[0], 0, project).resolve(data_config)
    seeds_text = ", ".join(map(str, sorted({row["seed"] for row in runs})))  # those that ran
    header = f"\n{budget_line(budget.data, resolved)}; seeds {seeds_text}; torch {torch.__version__}"
    print(format_tables(summary, header))
    result = {"data": budget.data, "seeds": chosen, "runs": runs, **summary}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help=f"any of {', '.join(ARMS)}")
    add_seed_arguments(parser, 5)
    parser.add_argument("--data", default="data/shapes-hard.yaml", help="dataset YAML (its budget is used)")
    parser.add_argument(
        "--finished-only", action="store_true", help="report the finished runs and train none"
    )
    add_run_arguments(parser, "runs/bench-plain")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    setup_logging()
    args = vars(parse_args(argv))
    fields = {f.name for f in dataclasses.fields(Budget)}
    budget = Budget(**{key: args.pop(key) for key in list(args) if key in fields})
    try:
        return run(budget=budget, **args)
    except USER_ERRORS as error:
        LOGGER.error(f"bench.branches: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
