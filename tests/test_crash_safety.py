"""Crash safety in the spirit of SQLite's crash tests: a tiny training run is killed with SIGKILL at every
write point it has (each checkpoint, results and run-file write, before and after its rename, through the
end-of-run step), then resumed. Every time, last.pt loads, the resumed run completes with the epochs of an
uninterrupted run, and results.csv holds each epoch exactly once.

Each run counts its write points with a utils.paths.on_write_point callback (WritePoints) that kills it
at the chosen one. A kill inside an epoch, between two writes, leaves the same files as a kill at the
write point before it, so the write points cover every moment of the run.
Runs are forked from a fork server that has imported the trainer once, so each costs no interpreter or
torch start-up, and none inherits the threads of native runtimes other tests loaded into this process.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal

import pytest
import torch

import train
import utils.paths
from tests.helpers import make_tiny_dataset
from utils.checkpoint import load_checkpoint
from utils.data.config import image_files_from_sources, load_data_config
from utils.data.labels import scan_files

EPOCHS = 2


class WritePoints:
    """A write-point callback (utils.paths.on_write_point) that counts atomic_open's write points in this
    process and, at the kill_at-th (counted from 1), kills the process with SIGKILL, as a power cut would."""

    def __init__(self, kill_at: int | None = None):
        self.kill_at = kill_at
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _child(options: dict, kill_at: int | None, count_file: str | None) -> None:
    torch.set_num_threads(1)
    points = WritePoints(kill_at)
    remove = utils.paths.on_write_point(points)
    try:
        train.run(**options)
    finally:
        remove()
    if count_file:
        with open(count_file, "w") as f:
            f.write(str(points.count))


def run_forked(options: dict, kill_at: int | None = None, count_file: str | None = None) -> int:
    process = fork_server().Process(target=_child, args=(options, kill_at, count_file))
    process.start()
    process.join(120)
    return process.exitcode


def fork_server():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def epochs_in(results_csv) -> list[int]:
    with open(results_csv, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="forks the runs")
def test_killed_at_every_write_point_resumes_to_the_same_run(tmp_path):
    data_yaml, model_yaml = make_tiny_dataset(tmp_path, train_images=4, val_images=2)
    data = load_data_config(data_yaml)
    for split in ("train", "val"):  # the label caches exist before any counted run
        scan_files(image_files_from_sources(data[split]))
    common = dict(cfg=str(model_yaml), data=str(data_yaml), img_size=64, batch_size=2, epochs=EPOCHS,
                  device="cpu", workers=0, plots=False, tensorboard=False, repeat=1,  # event logs only append
                  project=str(tmp_path / "runs"))  # fmt: skip
    count_file = tmp_path / "points.txt"
    assert run_forked({**common, "name": "reference"}, count_file=str(count_file)) == 0
    points = int(count_file.read_text())
    reference = tmp_path / "runs" / "reference"
    assert epochs_in(reference / "results.csv") == list(range(EPOCHS))
    assert points >= 20  # run files, 2 epochs of results/best/last, the end-of-run step (no plots)

    outcomes = {"resumed": 0, "restarted": 0, "already finished": 0}
    for kill_at in range(1, points + 1):
        name = f"kill{kill_at}"
        run_dir = tmp_path / "runs" / name
        assert run_forked({**common, "name": name}, kill_at=kill_at) == -signal.SIGKILL, kill_at
        last = run_dir / "weights" / "last.pt"
        if not last.exists():  # killed before the first epoch's checkpoint: nothing to resume yet
            assert run_forked({**common, "name": f"{name}-again"}) == 0
            run_dir = tmp_path / "runs" / f"{name}-again"
            outcomes["restarted"] += 1
        elif load_checkpoint(last)["epoch"] == -1:  # killed after the very last write
            outcomes["already finished"] += 1
        else:
            assert run_forked({"resume": str(last), "device": "cpu", "workers": 0}) == 0, kill_at
            outcomes["resumed"] += 1
        final = load_checkpoint(run_dir / "weights" / "last.pt")
        assert final["epoch"] == -1 and "optimizer" not in final, kill_at
        assert epochs_in(run_dir / "results.csv") == list(range(EPOCHS)), kill_at
        assert (run_dir / "metrics.json").is_file(), kill_at
        assert not list(run_dir.rglob(".*.tmp")), kill_at
    print(f"{points} kill points: {outcomes}")
    assert outcomes["resumed"] >= points // 2
