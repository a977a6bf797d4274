"""train.py --evolve on Optuna with tiny trials: two processes share one SQLite study, a study killed with
kill -9 mid-trial finishes when the same command runs again, a pruned trial stops early, the best hyp file
trains, and without Optuna the search says how to install it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_tiny_dataset
from utils.errors import ConfigError
from utils.paths import ROOT

OPTUNA_MISSING = "needs Optuna: pip install -r requirements-evolve.txt"
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("evolve"))


def evolve_command(tiny_data, project: Path, trials: int, epochs: int = 1, *extra: str) -> list[str]:
    data_yaml, model_yaml = tiny_data
    return [
        sys.executable, "train.py", "--cfg", str(model_yaml), "--data", str(data_yaml), "--img", "64",
        "--batch-size", "4", "--epochs", str(epochs), "--device", "cpu", "--workers", "0", "--repeat", "1",
        "--noautoanchor", "--noplots", "--no-tensorboard", "--project", str(project), "--name", "study",
        "--evolve", str(trials), *extra,
    ]  # fmt: skip


def start(command: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, output[-4000:]
    return output


def load_trials(folder: Path) -> list:
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{folder / 'study.db'}")
    return study.get_trials(deepcopy=False)


def finished(trials: list) -> list:
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]


def test_two_processes_share_one_sqlite_study_and_finish_n_trials_in_all(tiny_data, tmp_path):
    pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    command = evolve_command(tiny_data, tmp_path, 4, 1, "--evolve-pruner", "none")
    workers = [start(command), start(command)]
    for worker in workers:
        finish(worker)
    folder = tmp_path / "study"
    trials = load_trials(folder)
    done = finished(trials)
    assert len(done) == 4 and all(t.state.name == "COMPLETE" for t in done)
    assert {t.user_attrs["worker"]["pid"] for t in done} == {worker.pid for worker in workers}
    # no trial run twice: each finished trial has its own run folder with one epoch's row, its own values
    runs = [Path(t.user_attrs["run"]) for t in done]
    assert len(set(runs)) == 4 and all(run.parent == folder for run in runs)
    for run in runs:
        with open(run / "results.csv", newline="") as f:
            assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4
    assert sorted(p.name for p in folder.glob("trial*") if p.is_dir()) == sorted(run.name for run in runs)
    with open(folder / "trials.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(trials)
    assert all(
        (folder / name).stat().st_size > 0 for name in ("history.png", "importances.png", "parameters.png")
    )


def test_a_study_killed_mid_trial_finishes_when_the_same_command_runs_again(tiny_data, tmp_path):
    pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    command = evolve_command(tiny_data, tmp_path, 2, 4, "--evolve-pruner", "none")
    first = start(command)
    folder = tmp_path / "study"
    deadline = time.time() + TIMEOUT_S
    while not (folder / "trial1" / "results.csv").exists():  # trial 1 has finished its first epoch
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-4000:]
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    killed = load_trials(folder)
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"]

    output = finish(start(command))
    trials = load_trials(folder)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    assert len(finished(trials)) == 2 and "Trial 1: its process" in output
    best = yaml.safe_load((folder / "best_hyp.yaml").read_text())
    assert best["lr0"] == max(finished(trials), key=lambda t: t.value).params["lr0"]


def test_a_pruned_trial_stops_early_and_the_best_hyp_file_trains(tiny_data, tmp_path, monkeypatch):
    optuna = pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    import train
    import utils.train.evolve as evolve

    data_yaml, model_yaml = tiny_data
    common = dict(
        cfg=str(model_yaml), data=str(data_yaml), img_size=64, batch_size=4, device="cpu", workers=0,
        repeat=1, noautoanchor=True, plots=False, tensorboard=False, project=str(tmp_path), epochs=3,
    )  # fmt: skip

    def prune_after_the_first_trial(optuna_module, name, epochs):
        # trial 0 (the given hyp) completes; the next is pruned at its first report
        class PruneLaterTrials(optuna.pruners.BasePruner):
            def prune(self, study, trial):
                return trial.number > 0

        return PruneLaterTrials()

    monkeypatch.setattr(evolve, "make_pruner", prune_after_the_first_trial)
    summary = train.run(name="study", evolve=2, **common)
    trials = load_trials(tmp_path / "study")
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"] and summary["trials"] == 2
    with open(Path(trials[1].user_attrs["run"]) / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1  # stopped after its first of 3 epochs
    assert summary["best_hyp"] == tmp_path / "study" / "best_hyp.yaml"

    run = train.run(name="best", hyp=str(summary["best_hyp"]), **{**common, "epochs": 1})
    assert run["finished"] and (run["save_dir"] / "weights" / "best.pt").exists()


def test_a_study_is_not_continued_with_other_hyperparameters(tiny_data, tmp_path):
    pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    from utils.train.evolve import StudyPlan, import_optuna, open_storage, open_study
    from utils.train.options import TrainOptions

    data_yaml, model_yaml = tiny_data
    options = TrainOptions(
        cfg=str(model_yaml), data=str(data_yaml), project=str(tmp_path), name="s", evolve=3
    )
    optuna = import_optuna()
    plan = StudyPlan.from_options(options)
    plan.folder.mkdir(parents=True)
    open_study(optuna, plan, open_storage(optuna, plan.storage))
    other = StudyPlan.from_options(TrainOptions(**{**vars(options), "hyp": "hyp.shapes.yaml"}))
    with pytest.raises(ConfigError, match="was started from other hyperparameters"):
        open_study(optuna, other, open_storage(optuna, other.storage))


def test_evolve_without_optuna_says_how_to_install_it(tiny_data, monkeypatch, capsys):
    import train

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--cfg", str(tiny_data[1]), "--data", str(tiny_data[0]), "--evolve", "2"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("train.py: ") and last.endswith("pip install -r requirements-evolve.txt.")


def test_evolve_takes_an_optional_count_as_yolov5(tiny_data):
    import train

    assert train.parse_args(["--evolve"]).evolve == 300
    assert train.parse_args(["--evolve", "20"]).evolve == 20
    assert train.parse_args([]).evolve is None
    with pytest.raises(ConfigError, match="evolve is 0"):
        train.parse_args(["--evolve", "0"]).check()


def test_a_diverged_trial_counts_with_its_best_epoch_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("optuna", reason=OPTUNA_MISSING)
    import train
    import utils.train.evolve as evolve
    from utils.train.results import RESULTS_COLUMNS, ResultsTable

    def diverging_train(options, on_epoch=None):  # one epoch at mAP50 0.5, mAP50-95 0.2, then a NaN loss
        row = dict.fromkeys(RESULTS_COLUMNS, 0.0) | {
            "epoch": 0,
            "metrics/mAP_0.5": 0.5,
            "metrics/mAP_0.5:0.95": 0.2,
        }
        ResultsTable(Path(options.project) / options.name / "results.csv").append(row)
        raise FloatingPointError("loss is nan at iteration 3; lower lr0 in the hyp file.")

    monkeypatch.setattr(evolve, "train", diverging_train)
    data_yaml, model_yaml = tiny_data
    summary = train.run(
        cfg=str(model_yaml), data=str(data_yaml), project=str(tmp_path), name="study", evolve=2
    )
    trials = load_trials(tmp_path / "study")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and summary["trials"] == 2
    assert all(
        t.value == pytest.approx(0.1 * 0.5 + 0.9 * 0.2) and "loss is nan" in t.user_attrs["diverged"]
        for t in trials
    )
