"""Hyperparameter search (train.py --evolve N) on Optuna: N trials in all, each a normal training run in the
study's folder with hyperparameters sampled in yolov5's evolve ranges around the given hyp file, scored by
yolov5's fitness (0.1 mAP50 + 0.9 mAP50-95 on the validation split) and pruned on its per-epoch fitness.

The study lives in a database (a SQLite file in the study's folder unless a URL is given), so workers
started with the same storage and name share it, and a study cut off continues when the same command runs
again: a trial whose process died is marked failed and its hyperparameters are tried again, never counted.
Optuna is imported here only, and this module only when a search is asked for."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from utils.data.config import load_data_config
from utils.errors import ConfigError
from utils.hyp import Hyp, load_hyp
from utils.log import masked_url
from utils.paths import atomic_open, write_text_atomic
from utils.train.distributed import DistributedContext
from utils.train.options import TrainOptions
from utils.train.results import ResultsTable, row_fitness
from utils.train.trainer import train

LOGGER = logging.getLogger(__name__)

# The ranges yolov5's evolve keeps each hyperparameter in (its train.py `meta`), as name: (low, high, log).
# The learning rates span decades and are sampled on a log scale. Not searched: anchors (a count that
# changes the model's graph), rep_branch_gamma and label_smoothing (not in yolov5's search).
SEARCH_SPACE: dict[str, tuple[float, float, bool]] = {
    "lr0": (1e-5, 1e-1, True), "lrf": (0.01, 1.0, True), "momentum": (0.6, 0.98, False),
    "weight_decay": (0.0, 0.001, False), "warmup_epochs": (0.0, 5.0, False),
    "warmup_momentum": (0.0, 0.95, False), "warmup_bias_lr": (0.0, 0.2, False),
    "box": (0.02, 0.2, False), "cls": (0.2, 4.0, False), "cls_pw": (0.5, 2.0, False),
    "obj": (0.2, 4.0, False), "obj_pw": (0.5, 2.0, False), "iou_t": (0.1, 0.7, False),
    "anchor_t": (2.0, 8.0, False), "fl_gamma": (0.0, 2.0, False),
    "hsv_h": (0.0, 0.1, False), "hsv_s": (0.0, 0.9, False), "hsv_v": (0.0, 0.9, False),
    "degrees": (0.0, 45.0, False), "translate": (0.0, 0.9, False), "scale": (0.0, 0.9, False),
    "shear": (0.0, 10.0, False), "perspective": (0.0, 0.001, False), "flipud": (0.0, 1.0, False),
    "fliplr": (0.0, 1.0, False), "mosaic": (0.0, 1.0, False), "mixup": (0.0, 1.0, False),
    "copy_paste": (0.0, 1.0, False),
}  # fmt: skip
DEFAULT_PROJECT = "runs/evolve"  # yolov5's folder for a search, used when --project is left at runs/train
# A worker on another machine that stops beating for GRACE_S seconds is taken for dead and its trial failed.
HEARTBEAT_S, GRACE_S = 60, 300
FINISHED = ("COMPLETE", "PRUNED")
# The study's own files (best_hyp.yaml, trials.csv, the plots) are written atomically but not durably:
# workers ending at once write the same files, and a durable write first clears the other's temporary file
# (utils.paths.atomic_open). The database holds what they are made of.
STUDY_FILES_DURABLE = False


class SurplusTrial(Exception):
    """A trial begun after the study already had its N trials (two workers asked at once): not run."""


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "the hyperparameter search (evolve) runs on Optuna, which is not installed; install it with "
            "pip install -r requirements-evolve.txt."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats and the matplotlib plots are marked experimental; what they do is all this module needs
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """Where a study lives and what it asks: N finished trials of `options` (resolved) around `base`."""

    folder: Path
    storage: str
    name: str
    trials: int
    options: TrainOptions
    base: Hyp

    @classmethod
    def from_options(cls, options: TrainOptions) -> StudyPlan:
        if options.resume:
            raise ConfigError(
                "resume continues one training run, and a study continues when the same evolve command runs "
                "again; drop resume."
            )
        if DistributedContext.from_environment().distributed:
            raise ConfigError(
                "evolve runs its trials one process each, not under torchrun; start one worker per machine "
                "with the same storage URL and name instead."
            )
        resolved = options.resolve(load_data_config(options.data))
        project = DEFAULT_PROJECT if options.project == "runs/train" else options.project
        folder = (Path(project) / options.name).resolve()
        storage = options.evolve_storage or f"sqlite:///{folder / 'study.db'}"
        return cls(folder, storage, options.name, int(options.evolve), resolved, load_hyp(resolved.hyp))


def evolve(options: TrainOptions) -> dict:
    """Run trials until the study holds options.evolve finished (complete or pruned) ones, then write
    best_hyp.yaml, trials.csv and the plots in the study's folder; returns {"folder", "best_fitness",
    "best_hyp" (path, None until a trial completes), "trials" (finished), "ran" (trials this process ran)}."""
    optuna = import_optuna()
    plan = StudyPlan.from_options(options)
    plan.folder.mkdir(parents=True, exist_ok=True)
    storage = open_storage(optuna, plan.storage)
    study = open_study(optuna, plan, storage)
    LOGGER.info(f"Study {plan.name!r} in {plan.folder} ({masked_url(plan.storage)}): {plan.trials} trials.")
    ran = 0
    while True:
        reclaim_trials(optuna, study, storage)
        counts = _state_counts(study)
        finished = sum(counts.get(state, 0) for state in FINISHED)
        if finished + counts.get("RUNNING", 0) >= plan.trials:
            break
        study.optimize(lambda trial: run_trial(optuna, plan, trial), n_trials=1, catch=(SurplusTrial,))
        ran += 1
    return write_study_outputs(optuna, study, plan, ran)


def open_storage(optuna: Any, url: str, attempts: int = 5) -> Any:
    """Optuna's database storage with heartbeats (SQLite waits up to a minute for another worker's write).
    Workers that open a new database at once race to create its tables: the loser waits and opens again."""
    import sqlalchemy.exc

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt + 1 == attempts:
                raise
            time.sleep(0.5 + random.random())


def open_study(optuna: Any, plan: StudyPlan, storage: Any) -> Any:
    """The study (created on first use); its first trial is the given hyp itself, as yolov5 starts its
    search from it. A study started from other hyperparameters is refused rather than mixed."""
    study = optuna.create_study(
        study_name=plan.name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        pruner=make_pruner(optuna, plan.options.evolve_pruner, plan.options.epochs),
    )
    base = plan.base.to_dict()
    stored = study.user_attrs.get("base_hyp")
    if stored is None:
        study.set_user_attr("base_hyp", base)
        study.set_user_attr("epochs", plan.options.epochs)
        first = {name: min(max(base[name], low), high) for name, (low, high, _) in SEARCH_SPACE.items()}
        study.enqueue_trial(first, skip_if_exists=True)
    elif stored != base:
        changed = sorted(key for key in base if stored.get(key) != base[key])
        raise ConfigError(
            f"study {plan.name!r} in {masked_url(plan.storage)} was started from other hyperparameters "
            f"({', '.join(changed)} differ); give the hyp file it started from, or a new name."
        )
    return study


def make_pruner(optuna: Any, name: str, epochs: int) -> Any:
    """median: stop a trial whose fitness at an epoch is below the median of earlier trials' at that
    epoch (after 5 trials, from the second epoch); hyperband: successive halving over 1..epochs epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def run_trial(optuna: Any, plan: StudyPlan, trial: Any) -> float:
    """One training run with the trial's hyperparameters in folder/trial{number}; -> its best fitness
    (that of best.pt). Reports each epoch's fitness and stops when the pruner says so."""
    earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    if sum(t.state.name in (*FINISHED, "RUNNING") for t in earlier) >= plan.trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number} is past the study's {plan.trials} trials; not run.")
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
    values = {
        name: trial.suggest_float(name, low, high, log=log) for name, (low, high, log) in SEARCH_SPACE.items()
    }
    hyp = dataclasses.replace(plan.base, **values)
    run_dir = plan.folder / f"trial{trial.number}"
    hyp_file = write_text_atomic(run_dir / "trial_hyp.yaml", yaml.safe_dump(hyp.to_dict(), sort_keys=False))
    trial.set_user_attr("run", str(run_dir))
    options = dataclasses.replace(
        plan.options, hyp=str(hyp_file), project=str(plan.folder), name=run_dir.name, exist_ok=True,
        evolve=None, evolve_storage=None,
    )  # fmt: skip

    def on_epoch(epoch: int, fitness: float) -> None:
        trial.report(fitness, epoch)
        if trial.should_prune():
            LOGGER.info(f"Trial {trial.number} pruned after epoch {epoch + 1} (fitness {fitness:.4f}).")
            raise optuna.TrialPruned(f"fitness {fitness:.4f} at epoch {epoch + 1}")

    LOGGER.info(f"Trial {trial.number} in {run_dir}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    try:
        return float(train(options, on_epoch=on_epoch)["best_fitness"])
    except FloatingPointError as error:  # the loss diverged: a result of these values, not a failure to retry
        rows = ResultsTable(run_dir / "results.csv").rows()
        trial.set_user_attr("diverged", str(error))
        LOGGER.warning(f"Trial {trial.number}: {error} Its result is its best epoch before that.")
        return max((row_fitness(row) for row in rows), default=0.0)


def reclaim_trials(optuna: Any, study: Any, storage: Any) -> None:
    """Fail the running trials whose worker died (on this machine: its process is gone; elsewhere: no
    heartbeat for GRACE_S) and queue each failed trial's hyperparameters once more, so that a trial cut off
    is tried again and never counted."""
    host, state = socket.gethostname(), optuna.trial.TrialState
    for trial in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and worker.get("pid") != os.getpid() and not _alive(worker.get("pid")):
            storage.set_trial_state_values(trial._trial_id, state=state.FAIL)
            LOGGER.warning(f"Trial {trial.number}: its process {worker.get('pid')} is gone; marked failed.")
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for trial in trials:
        if trial.state == state.FAIL and trial.number not in retried and not trial.user_attrs.get("surplus"):
            if trial.params:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                LOGGER.info(f"Trial {trial.number} failed before its end; its hyperparameters go again.")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # not ours to judge: the heartbeat decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _state_counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# --- what a study leaves in its folder -------------------------------------------------------------


def write_study_outputs(optuna: Any, study: Any, plan: StudyPlan, ran: int) -> dict:
    """best_hyp.yaml (the base hyp with the best complete trial's values: a file train.py --hyp takes),
    trials.csv (every trial) and the plots; -> evolve()'s summary."""
    trials = study.get_trials(deepcopy=False)
    write_trials_csv(trials, plan.folder / "trials.csv")
    finished = sum(t.state.name in FINISHED for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    summary = {"folder": plan.folder, "best_fitness": None, "best_hyp": None, "trials": finished, "ran": ran}
    if not complete:
        LOGGER.warning(
            f"No trial of study {plan.name!r} has completed yet; no best hyperparameters to write."
        )
        return summary
    best = max(complete, key=lambda t: t.value)
    hyp = dataclasses.replace(plan.base, **best.params)
    header = (
        f"# Best of {len(complete)} complete trials of study {plan.name!r}: trial {best.number}, "
        f"fitness {best.value:.5f}\n"
    )
    text = header + yaml.safe_dump(hyp.to_dict(), sort_keys=False)
    path = write_text_atomic(plan.folder / "best_hyp.yaml", text, durable=STUDY_FILES_DURABLE)
    plot_study(optuna, study, plan.folder)
    LOGGER.info(
        f"Study {plan.name!r}: {finished} of {plan.trials} trials finished; best: trial {best.number}, "
        f"fitness {best.value:.5f} ({best.user_attrs.get('run')}). Best hyperparameters in {path}."
    )
    return {**summary, "best_fitness": float(best.value), "best_hyp": path}


def write_trials_csv(trials: list, path: Path) -> None:
    """One row per trial: number, state, fitness, epochs reported, seconds, its run folder, the trial it
    retries, then each hyperparameter."""
    columns = ["number", "state", "fitness", "epochs", "seconds", "run", "retry_of", *SEARCH_SPACE]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for trial in trials:
        seconds = None
        if trial.datetime_start and trial.datetime_complete:
            seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        writer.writerow({
            "number": trial.number, "state": trial.state.name, "fitness": trial.value,
            "epochs": len(trial.intermediate_values), "seconds": seconds, "run": trial.user_attrs.get("run"),
            "retry_of": trial.user_attrs.get("retry_of"), **trial.params,
        })  # fmt: skip
    write_text_atomic(path, buffer.getvalue(), durable=STUDY_FILES_DURABLE)


def plot_study(optuna: Any, study: Any, folder: Path) -> list[Path]:
    """history.png (fitness by trial, best so far), importances.png (PED-ANOVA: needs no
    scikit-learn) and parameters.png (each hyperparameter against fitness) in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    plots, PedAnova = optuna.visualization.matplotlib, optuna.importance.PedAnovaImportanceEvaluator
    written = []
    for name, draw in (
        ("history.png", plots.plot_optimization_history),
        ("importances.png", lambda s: plots.plot_param_importances(s, evaluator=PedAnova())),
        ("parameters.png", lambda s: plots.plot_slice(s, params=list(SEARCH_SPACE))),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as problem:  # e.g. too few complete trials for importances
                LOGGER.info(f"{name} not drawn: {problem}")
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        if name == "history.png":
            axes.set_ylabel("fitness (0.1 mAP50 + 0.9 mAP50-95)")
        if name == "parameters.png":  # one panel per hyperparameter, in a row
            figure.set_size_inches(2.2 * len(SEARCH_SPACE), 3.5)
        with atomic_open(folder / name, "wb", durable=STUDY_FILES_DURABLE) as file:
            figure.savefig(file, format="png", dpi=100, bbox_inches="tight")
        pyplot.close(figure)
        written.append(folder / name)
    return written
