"""TensorBoard logging of a training run: results.csv columns as scalars, the batch and plots as images."""

from __future__ import annotations

import csv

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from tests.helpers import make_tiny_dataset
from utils.train.options import TrainOptions
from utils.train.results import RESULTS_COLUMNS
from utils.train.tensorboard import TensorBoardLogger


def test_a_tiny_run_writes_the_results_columns_and_images(tmp_path):
    torch.set_num_threads(1)
    data_yaml, model_yaml = make_tiny_dataset(tmp_path, train_images=4, val_images=2)
    result = train.run(cfg=str(model_yaml), data=str(data_yaml), epochs=1, batch_size=4, img_size=64,
                       device="cpu", workers=0, project=str(tmp_path / "runs"), repeat=1)  # fmt: skip
    run_dir = result["save_dir"]
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = set(RESULTS_COLUMNS) - {"epoch"}
    assert expected <= scalars and {"x/lr0", "metrics/mAP_0.5:0.95", "train/box_loss"} <= scalars
    with open(run_dir / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    logged = events.Scalars("metrics/mAP_0.5")
    assert [e.step for e in logged] == [0]
    assert logged[0].value == pytest.approx(float(row["metrics/mAP_0.5"]), abs=1e-5)
    images = set(events.Tags()["images"])
    assert {"train_batch0", "results", "PR_curve", "confusion_matrix"} <= images


def test_tensorboard_can_be_turned_off():
    assert train.parse_args([]).tensorboard is True and TrainOptions().tensorboard is True
    assert train.parse_args(["--no-tensorboard"]).tensorboard is False
    assert TensorBoardLogger.create(None, enabled=False) is None
