"""Does re-parameterization pay when fine-tuning? The accuracy study in the regime yolov5 users live in.

    python -m bench.finetune [--data data/shapes-hard-64.yaml] [--seeds 5] [--epochs N]
                             [--models SPEC ...] [--only-seeds 0 2 4] [--project runs/bench-finetune]
                             [--json out.json] [--threads N] [--workers N]

1. Pretrain plain yolov5s once on data/shapes-source.yaml (our stand-in for COCO: five other classes in
   the same world), with that YAML's defaults, as <project>/pretrain-yolov5s; a finished pretraining is
   reused, an interrupted one resumed.
2. Train every arm with seeds 0..N-1 on the target at one budget (the target YAML's defaults unless
   given). An arm is a bench.accuracy model spec in which ``{pretrained}`` stands for the pretrained
   best.pt; the default arms: plain yolov5s fine-tuned (the reference), plain and repyolov5s from
   scratch, and repyolov5s, repyolov5s-dbb and repyolov5s-acb grown from the pretrained plain weights
   (train.py --cfg repyolov5s.yaml --weights best.pt: each plain Conv placed in the main branch of its
   block, every side branch at zero) and fine-tuned.
3. Print bench.accuracy's table: mean and sd over seeds, and each arm's difference to plain fine-tuned
   with a 95% interval paired by seed.

Runs are reused and resumed as in bench.accuracy, so two processes may split the seeds (--only-seeds)
and a last call over all seeds prints the whole table without training anything again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from bench.accuracy import (
    Budget,
    Variant,
    add_run_arguments,
    add_seed_arguments,
    budget_line,
    format_table,
    summarize,
    train_or_reuse,
    train_seeds,
)
from utils.data.config import load_data_config
from utils.errors import USER_ERRORS
from utils.log import setup_logging

LOGGER = logging.getLogger("bench.finetune")
SOURCE = "data/shapes-source.yaml"
TARGET = "data/shapes-hard-64.yaml"
PRETRAINED = "{pretrained}"
ARMS = (
    f"yolov5s.yaml:weights={PRETRAINED}",
    "yolov5s.yaml",
    "repyolov5s.yaml",
    f"repyolov5s.yaml:weights={PRETRAINED}",
    f"repyolov5s-dbb.yaml:weights={PRETRAINED}",
    f"repyolov5s-acb.yaml:weights={PRETRAINED}",
)


@dataclass
class Pretraining:
    """What the arms fine-tune from: `cfg` trained once on `budget.data` with seed 0."""

    budget: Budget = field(default_factory=lambda: Budget(data=SOURCE))
    cfg: str = "yolov5s.yaml"


def pretrain(project: str, pretraining: Pretraining) -> Path:
    """Train (or reuse, or resume) the pretraining as <project>/pretrain-<cfg stem>; its best.pt."""
    options = pretraining.budget.options(Variant.parse(pretraining.cfg), 0, project)
    options.name = f"pretrain-{Path(pretraining.cfg).stem}"
    row = train_or_reuse(options, load_data_config(pretraining.budget.data))
    metrics = f"mAP50 {row['mAP50']:.4f} mAP50-95 {row['mAP50_95']:.4f}"
    print(f"{row['status']:>8s} pretraining on {pretraining.budget.data}: {metrics}")
    return Path(row["save_dir"]) / "weights" / "best.pt"


def run(
    models: Sequence[str] = ARMS,
    seeds: int = 5,
    budget: Budget | None = None,
    project: str = "runs/bench-finetune",
    only_seeds: Sequence[int] | None = None,
    json_path: str | None = None,
    threads: int = 0,
    pretraining: Pretraining | None = None,
) -> dict:
    """Pretrain (or reuse), train (or reuse) every arm x seed, print the table; -> {"budget", "runs",
    "summary"} over the seeds trained here (also written to json_path). pretraining: default plain
    yolov5s on data/shapes-source.yaml with its defaults."""
    budget = budget or Budget(data=TARGET)
    if threads > 0:
        torch.set_num_threads(threads)
    pretrained = None
    if any(PRETRAINED in spec for spec in models):
        if pretraining is None:
            pretraining = Pretraining(Budget(data=SOURCE, workers=budget.workers, device=budget.device))
        pretrained = pretrain(project, pretraining)
    specs = [spec.replace(PRETRAINED, str(pretrained)) for spec in models]
    variants = [Variant.parse(spec) for spec in specs]
    data_config = load_data_config(budget.data)
    target_project = str(Path(project) / Path(budget.data).stem)
    chosen = list(only_seeds) if only_seeds else list(range(seeds))
    runs = train_seeds(variants, models, chosen, budget, target_project, data_config)
    summary = summarize(runs, list(models))
    for entry in summary.values():
        entry["fused_ms"] = float("nan")  # the fused models are those of bench.accuracy: not timed here
    resolved = budget.options(variants[0], 0, target_project).resolve(data_config)
    header = (
        f"\n{budget_line(budget.data, resolved)}; seeds {chosen}; pretrained: {pretrained}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(format_table(summary, header))
    result = {"budget": resolved.to_dict(), "pretrained": str(pretrained), "runs": runs, "summary": summary}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(ARMS), help="arms: model YAML[:key=value...]")
    add_seed_arguments(parser, 5)
    parser.add_argument("--data", default=TARGET, help="the target dataset YAML")
    parser.add_argument("--epochs", type=int, default=None)
    add_run_arguments(parser, "runs/bench-finetune")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    setup_logging()
    args = parse_args(argv)
    budget = Budget(data=args.data, epochs=args.epochs, workers=args.workers, device=args.device)
    try:
        return run(
            args.models, args.seeds, budget, args.project, args.only_seeds, args.json_path, args.threads
        )
    except USER_ERRORS as error:
        LOGGER.error(f"bench.finetune: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
