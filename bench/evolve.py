"""What a train.py --evolve study found and what its pruning saved, from the study's folder and runs of the
default hyp at the same epochs.

    python train.py --cfg repyolov5s.yaml --epochs 5 --evolve 20 --name shapes-e5          # the study
    python train.py --cfg repyolov5s.yaml --epochs 5 --seed S --name default-e5-sS         # S = 0, 1, 2
    python -m bench.evolve --study runs/evolve/shapes-e5 --defaults runs/train/default-e5-s*

Prints Markdown: the best trial's fitness against the default hyp's (each default run, and the study's
trial 0, which is the given hyp itself), and the time the pruned trials took against the same trials run
to the end. That second figure is derived, not rerun: each pruned trial's skipped epochs times its own
mean epoch time (results.csv's time column), plus the final validation of best.pt that a finished trial
adds (the mean of the complete trials' time after their last epoch).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Sequence

from utils.evaluation.metrics import fitness


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_fitness(run: Path) -> float:
    """The best epoch's fitness of a run folder (what best.pt holds), from its results.csv."""
    rows = read_rows(run / "results.csv")
    return max(fitness(float(r["metrics/mAP_0.5"]), float(r["metrics/mAP_0.5:0.95"])) for r in rows)


def epoch_seconds(run: Path) -> list[float]:
    """Each epoch's seconds (training and validation) from the cumulative time column."""
    times = [float(r["time"]) for r in read_rows(run / "results.csv")]
    return [b - a for a, b in zip([0.0] + times, times)]


def pruning_time(trials: list[dict], epochs: int) -> dict:
    """{"measured": seconds of every finished trial, "unpruned": the same trials run to the end (derived),
    "pruned": how many, "epochs_skipped"}."""
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    tails = [float(t["seconds"]) - sum(epoch_seconds(Path(t["run"]))) for t in complete]
    final_validation = sum(tails) / len(tails) if tails else 0.0
    measured = unpruned = 0.0
    pruned = skipped = 0
    for trial in trials:
        if trial["state"] not in ("COMPLETE", "PRUNED"):
            continue
        measured += float(trial["seconds"])
        unpruned += float(trial["seconds"])
        if trial["state"] == "PRUNED":
            done = epoch_seconds(Path(trial["run"]))
            pruned, skipped = pruned + 1, skipped + epochs - len(done)
            unpruned += (epochs - len(done)) * sum(done) / len(done) + final_validation
    return {"measured": measured, "unpruned": unpruned, "pruned": pruned, "epochs_skipped": skipped}


def report(study: Path, defaults: list[Path], epochs: int) -> str:
    trials = read_rows(study / "trials.csv")
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: float(t["fitness"]))
    given = next(t for t in trials if t["number"] == "0")
    default_values = [run_fitness(run) for run in defaults]
    lines = [
        "| hyp | fitness (0.1 mAP50 + 0.9 mAP50-95) |",
        "|---|---|",
        f"| best of {len(finished)} trials (trial {best['number']}) | {float(best['fitness']):.4f} |",
        f"| the given hyp, the study's trial 0 | {float(given['fitness'] or 0):.4f} "
        f"({given['state'].lower()}) |",
    ]
    for run, value in zip(defaults, default_values):
        lines.append(f"| the given hyp, {run.name} | {value:.4f} |")
    if default_values:
        mean = sum(default_values) / len(default_values)
        spread = f"{min(default_values):.4f} to {max(default_values):.4f}"
        lines.append(f"| the given hyp, mean of {len(default_values)} runs | {mean:.4f} ({spread}) |")
        lines.append(f"\nBest trial against that mean: {float(best['fitness']) - mean:+.4f}.")
    times = pruning_time(trials, epochs)
    saved = 1 - times["measured"] / times["unpruned"] if times["unpruned"] else 0.0
    lines.append(
        f"\nTrials' time: {times['measured'] / 60:.1f} min with pruning ({times['pruned']} trials pruned, "
        f"{times['epochs_skipped']} epochs skipped); {times['unpruned'] / 60:.1f} min for the same trials "
        f"unpruned (derived from the pruned trials' epoch times), {saved:.0%} saved."
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, required=True, help="the study's folder (trials.csv, trial*/)")
    parser.add_argument("--defaults", type=Path, nargs="*", default=[], help="run folders of the given hyp")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    print(report(options.study, options.defaults, options.epochs))


if __name__ == "__main__":
    main()
