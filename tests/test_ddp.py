"""A 2-process torchrun run on CPU (gloo): one epoch of a tiny model on a tiny dataset."""

import csv
import os
import subprocess
import sys

import torch

from tests.helpers import make_tiny_dataset
from utils.paths import ROOT


def test_torchrun_two_processes_on_cpu_complete_one_epoch(tmp_path):
    data_yaml, model_yaml = make_tiny_dataset(tmp_path)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "train.py",
        "--cfg",
        str(model_yaml),
        "--data",
        str(data_yaml),
        "--epochs",
        "1",
        "--img",
        "64",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--sync-bn",
        "--repeat",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1  # only rank 0 creates the run folder and writes files
    with open(run_dirs[0] / "results.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]
    ckpt = torch.load(run_dirs[0] / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == -1 and ckpt["names"][0] == "circle"
    # 8 images split over 2 ranks at 2 images per rank and batch: 2 batches each (4 without DDP)
    assert "2 batches per epoch" in result.stdout + result.stderr
