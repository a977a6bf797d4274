"""Does one model beat another? A seeded accuracy study: every model trained with seeds 0..N-1 at one budget.

    python -m bench.accuracy [--models yolov5s.yaml repyolov5s.yaml ...] [--seeds 3]
                             [--data data/shapes-hard.yaml] [--epochs N] [--img N] [--batch-size N]
                             [--hyp H] [--json out.json] [--project runs/bench-accuracy] [--threads N]
                             [--workers N] [--device cpu]

Each run is train.py's own run() with plots off, saved as <project>/<model>-seed<k>/. The budget
(epochs, img, batch size, hyp) is the dataset YAML's ``defaults:`` unless given. One table follows, a row
per model: the mean and standard deviation over seeds of the final mAP50 and mAP50-95 (best.pt on the
validation split), the difference to the first model's mAP50-95 and mAP50 with a 95% interval paired
by seed (Student's t with n-1 degrees of freedom: an interval that excludes 0 is a difference the seeds
do not explain), training minutes per run (results.csv's time: the epochs and their validation), and
the fused model's batch-1 CPU latency at the study's image size. --json writes every run's row and
the summary.

A model may carry overrides after colons, so that a recipe lever or an activation is compared as a
model of its own; the values are read as YAML scalars:

    --models repyolov5s.yaml repyolov5s.yaml:hyp=data/hyps/hyp.scratch-low.yaml repyolov5s.yaml:cos_lr=true
    --models yolov5s-plain.yaml yolov5s-plain.yaml:activation=SiLU

The keys activation, width_multiple and depth_multiple change the model YAML (a copy with them is written
to <project>/cfgs/ and trained), a hyperparameter's name changes the run's hyp file (a copy in
<project>/hyps/: repyolov5s-plain.yaml:rep_branch_gamma=1);
any TrainOptions field may be overridden except those the study fixes (cfg, data, seed, project, name,
device, workers, resume, exist_ok, plots, tensorboard).

Interrupted studies resume: a run folder that holds a finished run (metrics.json and a final last.pt)
is reused, one with a resumable last.pt is resumed, and only missing runs are trained; each run's line
says which. A folder whose opt.yaml asks for a different budget is an error (use another --project).
A seed fixes a run: the same seed trains the same weights again on the same machine and torch build
(tests/test_accuracy_bench.py). A resumed run is the exception: its data order and augmentation start
afresh at the resumed epoch, so it is an equally valid sample of that seed's spread, not a copy of the
uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import yaml

from bench.blocks import measure_fused
from models.yolo import load_model_yaml
from utils.checkpoint import load_checkpoint
from utils.data.config import load_data_config
from utils.errors import USER_ERRORS, ConfigError
from utils.hyp import Hyp, load_hyp
from utils.log import setup_logging
from utils.paths import atomic_open
from utils.train.options import TrainOptions
from utils.train.results import ResultsTable

LOGGER = logging.getLogger("bench.accuracy")
MODELS = ("yolov5s.yaml", "repyolov5s.yaml")
MODEL_KEYS = ("activation", "width_multiple", "depth_multiple")  # model YAML keys a variant may override
DATA = "data/shapes-hard.yaml"
FIXED = ("cfg", "data", "seed", "project", "name", "device", "workers", "resume", "exist_ok", "plots",
         "tensorboard")  # fmt: skip
NOT_COMPARED = ("device", "workers", "project", "name", "exist_ok", "resume")  # may differ on reuse


# --- statistics ------------------------------------------------------------------------------------


def _t_two_sided_probability(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom (Abramowitz and Stegun
    26.7.3 and 26.7.4: finite sums in theta = atan(t / sqrt(dof)))."""
    theta = math.atan(t / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    term, total = 1.0, 1.0
    for k in range(1 if dof % 2 == 0 else 2, dof - 1, 2):  # the series' k-th ratio: k / (k + 1)
        term *= k / (k + 1) * cos2
        total += term
    if dof % 2 == 0:
        return math.sin(theta) * total
    if dof == 1:
        return 2 * theta / math.pi
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


def t_critical(confidence: float, dof: int) -> float:
    """t with P(|T| < t) = confidence for Student's t with dof degrees of freedom (t_{0.975} for 95%)."""
    low, high = 0.0, 1.0
    while _t_two_sided_probability(high, dof) < confidence:
        high *= 2
    for _ in range(100):  # bisection: the probability rises with t
        middle = (low + high) / 2
        low, high = (middle, high) if _t_two_sided_probability(middle, dof) < confidence else (low, middle)
    return (low + high) / 2


def paired_interval(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Mean of values[i] - reference[i] (paired: the same seed) and its confidence interval (low, high);
    the interval is None for fewer than two pairs."""
    differences = [v - r for v, r in zip(values, reference)]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None, None
    half = t_critical(confidence, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return mean, mean - half, mean + half


# --- models with overrides -------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A model of the study: a model YAML, model-YAML key overrides (activation, width_multiple,
    depth_multiple) and training-option overrides, named by its spec."""

    spec: str  # as given: cfg[:key=value...]
    cfg: str
    overrides: dict = field(default_factory=dict)  # TrainOptions fields
    model_overrides: dict = field(default_factory=dict)  # top-level keys of the model YAML
    hyp_overrides: dict = field(default_factory=dict)  # hyperparameters (utils.hyp.Hyp fields)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        cfg, *pairs = spec.split(":")
        known = {f.name for f in dataclasses.fields(TrainOptions)} - set(FIXED)
        hyp_keys = {f.name for f in dataclasses.fields(Hyp)}
        overrides, model_overrides, hyp_overrides = {}, {}, {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key not in known | set(MODEL_KEYS) | hyp_keys or not value:
                raise ConfigError(
                    f"model {spec!r}: {pair!r} is not key=value with a training option, a model YAML key or "
                    f"a hyperparameter as key; use one of {sorted(known | set(MODEL_KEYS))} or a "
                    "hyperparameter of data/hyps/."
                )
            kind = model_overrides if key in MODEL_KEYS else overrides if key in known else hyp_overrides
            kind[key] = yaml.safe_load(value)
        return cls(spec, cfg, overrides, model_overrides, hyp_overrides)

    def run_name(self, seed: int) -> str:
        """A folder name: the YAML's stem, the overrides, the seed (path separators made safe)."""
        extra = "".join(
            f"-{key}={value}"
            for key, value in {**self.model_overrides, **self.hyp_overrides, **self.overrides}.items()
        )
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", f"{Path(self.cfg).stem}{extra}") + f"-seed{seed}"

    def model_cfg(self, project: str) -> str:
        """The model YAML to train: cfg itself, or with model overrides a copy carrying them, written once
        to <project>/cfgs/ (the runs' opt.yaml name it, so a reused run finds the same file)."""
        if not self.model_overrides:
            return self.cfg
        config, _ = load_model_yaml(self.cfg)
        config.pop("yaml_file", None)
        return self._derived(Path(project) / "cfgs", {**config, **self.model_overrides})

    def hyp_file(self, project: str, base: str | None) -> str | None:
        """The hyperparameter YAML to train with: base, or with hyperparameter overrides a copy of base
        (None: the defaults) carrying them, written once to <project>/hyps/."""
        if not self.hyp_overrides:
            return base
        return self._derived(Path(project) / "hyps", {**load_hyp(base).to_dict(), **self.hyp_overrides})

    def _derived(self, folder: Path, values: dict) -> str:
        path = folder / f"{self.run_name(0).removesuffix('-seed0')}.yaml"
        text = yaml.safe_dump(values, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path) as file:
                file.write(text)
        return str(path)


# --- runs ------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """What every run shares; None takes the dataset YAML's ``defaults:`` (or yolov5's)."""

    data: str = DATA
    epochs: int | None = None
    img_size: int | None = None
    batch_size: int | None = None
    hyp: str | None = None
    device: str = ""
    workers: int = 2
    repeat: int = 0  # passes over the training set per epoch (0: automatic)

    def options(self, variant: Variant, seed: int, project: str) -> TrainOptions:
        values = dict(vars(self), seed=seed, project=project, name=variant.run_name(seed))
        values["cfg"] = variant.model_cfg(project)
        values.update(exist_ok=True, plots=False, tensorboard=False, **variant.overrides)
        if variant.hyp_overrides:  # on top of the hyp this run would train with otherwise
            base = TrainOptions(**values).resolve(load_data_config(self.data)).hyp
            values["hyp"] = variant.hyp_file(project, base)
        return TrainOptions(**values)


def _check_same_run(folder: Path, options: TrainOptions, data_config: dict) -> None:
    """The run in folder was started with these options (its opt.yaml holds them resolved) and these
    hyperparameters (its hyp.yaml; a key newer than the run is not compared)."""
    if not (folder / "opt.yaml").is_file():
        return
    resolved = options.resolve(data_config)
    stored = yaml.safe_load((folder / "opt.yaml").read_text()) or {}
    wanted = resolved.to_dict()
    defaults = TrainOptions().to_dict()  # an option newer than the stored run had its default there
    stored = {key: stored.get(key, defaults[key]) for key in wanted}
    changed = [key for key in wanted if key not in NOT_COMPARED and stored[key] != wanted[key]]
    if not changed and (folder / "hyp.yaml").is_file():  # the hyperparameters the run trained with
        stored = yaml.safe_load((folder / "hyp.yaml").read_text()) or {}
        wanted = load_hyp(resolved.hyp).to_dict()
        changed = [key for key in wanted if key in stored and stored[key] != wanted[key]]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{folder} holds a run with {key}={stored.get(key)!r} but this study asks for {wanted[key]!r}; "
            "name another --project, or remove that folder."
        )


def train_or_reuse(options: TrainOptions, data_config: dict) -> dict:
    """Reuse a finished run, resume an interrupted one, or train. -> {"mAP50", "mAP50_95", "minutes",
    "save_dir", "status"} with the final validation of best.pt."""
    import train  # the script's run(): the same entry point a user calls

    folder = Path(options.project) / options.name
    last = folder / "weights" / "last.pt"
    if folder.exists():
        _check_same_run(folder, options, data_config)
    epoch = load_checkpoint(last)["epoch"] if last.is_file() else None  # -1: the run finished
    if epoch == -1 and (folder / "metrics.json").is_file():
        status = "reused"
    elif epoch is not None and epoch >= 0:
        status = "resumed"
        train.run(resume=str(last), device=options.device, workers=options.workers)
    else:
        status = "trained"
        train.run(options)
    final = json.loads((folder / "metrics.json").read_text())
    rows = ResultsTable(folder / "results.csv").rows()
    minutes = float(rows[-1]["time"]) / 60 if rows else float("nan")
    return {"mAP50": final["mAP50"], "mAP50_95": final["mAP50_95"], "minutes": minutes,
            "save_dir": str(folder), "status": status}  # fmt: skip


def train_seeds(
    variants: Sequence[Variant],
    names: Sequence[str],
    seeds: Sequence[int],
    budget: Budget,
    project: str,
    data_config: dict,
    finished_only: bool = False,
) -> list[dict]:
    """Train (or reuse) every variant at every seed, seed-major (an interrupted study has every model at
    the same seeds), a line each; -> rows {"model": its name, "seed", and train_or_reuse's keys}.
    finished_only: reuse the finished runs and train nothing (a report while the study is under way)."""
    runs = []
    for seed in seeds:
        for variant, name in zip(variants, names):
            if finished_only and not (Path(project) / variant.run_name(seed) / "metrics.json").is_file():
                continue
            row = {"model": name, "seed": seed}
            row.update(train_or_reuse(budget.options(variant, seed, project), data_config))
            runs.append(row)
            print(
                f"{row['status']:>8s} {name} seed {seed}: mAP50 {row['mAP50']:.4f} mAP50-95 "
                f"{row['mAP50_95']:.4f}, {row['minutes']:.1f} min ({row['save_dir']})",
                flush=True,
            )
    return runs


# --- the table -------------------------------------------------------------------------------------


def summarize(runs: list[dict], models: Sequence[str]) -> dict[str, dict]:
    """Per model: runs, mean and std of mAP50 / mAP50_95, minutes_mean, and delta_<metric> =
    [mean, low, high] versus models[0], paired by seed."""
    by_model = {model: {row["seed"]: row for row in runs if row["model"] == model} for model in models}
    reference = by_model[models[0]]
    summary = {}
    for model, rows in by_model.items():
        entry: dict = {
            "runs": len(rows),
            "minutes_mean": statistics.fmean(r["minutes"] for r in rows.values()),
        }
        for metric in ("mAP50", "mAP50_95"):
            values = [r[metric] for r in rows.values()]
            entry[f"{metric}_mean"] = statistics.fmean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
            seeds = sorted(set(rows) & set(reference))
            paired = [rows[s][metric] for s in seeds], [reference[s][metric] for s in seeds]
            entry[f"delta_{metric}"] = list(paired_interval(*paired)) if model != models[0] else None
        summary[model] = entry
    return summary


def budget_line(data: str, resolved: TrainOptions) -> str:
    """What every run of a study shares, for its table's header: data, epochs, size, batch, hyp."""
    return (
        f"{Path(data).name}: {resolved.epochs} epochs, {resolved.img_size} px, batch {resolved.batch_size}, "
        f"{resolved.hyp}"
    )


def _seed_list(seeds: Sequence[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 1:
        return f"{ordered[0]}..{ordered[-1]}"
    return ", ".join(map(str, ordered))


def _mean_std(entry: dict, metric: str) -> str:
    text, std = f"{entry[f'{metric}_mean']:.3f}", entry[f"{metric}_std"]
    return text if std is None else f"{text} ({std:.3f})"


def _delta(delta: list | None) -> str:
    if delta is None:
        return "reference"
    mean, low, high = delta
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" if low is not None else f"{mean:+.3f}"


def format_table(summary: dict[str, dict], header: str) -> str:
    """summary: see summarize, with "fused_ms" added to each entry."""
    width = max(len("model"), *(len(model) for model in summary)) + 2
    columns = (
        f"{'model':{width}s}{'runs':>5s}{'mAP50 (sd)':>16s}{'mAP50-95 (sd)':>16s}"
        f"{'d mAP50-95 [95% CI]':>27s}{'d mAP50 [95% CI]':>27s}{'train min':>11s}{'fused ms':>10s}"
    )
    lines = [header, columns]
    for model, entry in summary.items():
        lines.append(
            f"{model:{width}s}{entry['runs']:5d}{_mean_std(entry, 'mAP50'):>16s}"
            f"{_mean_std(entry, 'mAP50_95'):>16s}{_delta(entry['delta_mAP50_95']):>27s}"
            f"{_delta(entry['delta_mAP50']):>27s}{entry['minutes_mean']:11.1f}{entry['fused_ms']:10.1f}"
        )
    return "\n".join(lines)


def run(
    models: Sequence[str] = MODELS,
    seeds: int = 3,
    budget: Budget | None = None,
    project: str = "runs/bench-accuracy",
    json_path: str | None = None,
    threads: int = 0,
    only_seeds: Sequence[int] | None = None,
) -> dict:
    """Train (or reuse) every model x seed, print the table; -> {"budget", "runs", "summary"} (also
    written to json_path). threads > 0 sets torch's CPU threads for training and latency; only_seeds
    trains those seeds alone (processes splitting a study; a last call without it prints the whole)."""
    budget = budget or Budget()
    variants = [Variant.parse(spec) for spec in models]
    if len({v.spec for v in variants}) != len(variants):
        raise ConfigError(f"models {list(models)} name one model twice; list each once.")
    if threads > 0:
        torch.set_num_threads(threads)
    data_config = load_data_config(budget.data)
    resolved = budget.options(variants[0], 0, project).resolve(data_config)
    chosen = list(only_seeds) if only_seeds else list(range(seeds))
    runs = train_seeds(variants, [v.spec for v in variants], chosen, budget, project, data_config)
    cfgs = {variant.spec: variant.model_cfg(project) for variant in variants}
    fused = measure_fused(
        sorted(set(cfgs.values())), int(data_config["nc"]), resolved.img_size, threads, rounds=3
    )
    summary = summarize(runs, [v.spec for v in variants])
    for variant in variants:
        summary[variant.spec]["fused_ms"] = fused[cfgs[variant.spec]]["fused_ms"]
    header = (
        f"\n{budget_line(budget.data, resolved)}; seeds {_seed_list(chosen)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (fused ms: CPU, batch 1)"
    )
    print(format_table(summary, header))
    result = {"budget": {k: v for k, v in resolved.to_dict().items() if k in vars(budget)}, "runs": runs,
              "summary": summary}  # fmt: skip
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def add_run_arguments(parser: argparse.ArgumentParser, project: str) -> None:
    """The flags of where and how a study's runs train (bench.accuracy and bench.finetune)."""
    parser.add_argument("--json", dest="json_path", default=None, help="write runs and summary to this file")
    parser.add_argument("--project", default=project, help="where the runs are saved")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers per run")
    parser.add_argument("--device", default="", help="cpu, 0 (empty: first GPU if any)")


def add_seed_arguments(parser: argparse.ArgumentParser, seeds: int) -> None:
    """--seeds N (seeds 0..N-1) and --only-seeds (processes splitting a study), as every study takes them."""
    parser.add_argument("--seeds", type=int, default=seeds, help="train each model with seeds 0..N-1")
    parser.add_argument("--only-seeds", type=int, nargs="+", default=None, help="train only these seeds")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model YAMLs[:key=value...]")
    add_seed_arguments(parser, 3)
    parser.add_argument("--data", default=DATA, help="dataset YAML")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--img", "--img-size", dest="img_size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--hyp", default=None, help="hyperparameter YAML (bare names: data/hyps/)")
    add_run_arguments(parser, "runs/bench-accuracy")
    parser.add_argument("--repeat", type=int, default=0, help="passes over the train set per epoch (0: auto)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    setup_logging()
    args = vars(parse_args(argv))
    budget = Budget(**{key: args.pop(key) for key in [f.name for f in dataclasses.fields(Budget)]})
    try:
        return run(budget=budget, **args)
    except USER_ERRORS as error:
        LOGGER.error(f"bench.accuracy: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
