"""Training options and their resolution, and a tiny end-to-end train -> interrupt -> resume run."""

import csv
import math

import pytest
import torch
import yaml

import train
from tests.helpers import SHAPE_NAMES, make_tiny_dataset
from utils.errors import CheckpointError, ConfigError
from utils.train.options import TrainOptions

# --- options -----------------------------------------------------------------------------------


def test_cli_and_defaults_of_the_bundled_dataset():
    args = train.parse_args(["--cfg", "repyolov5s.yaml", "--resume", "--cache", "--cos-lr", "--img", "320"])
    assert args.resume is True and args.cache == "ram" and args.cos_lr and args.img_size == 320
    assert train.parse_args(["--resume", "a/last.pt"]).resume == "a/last.pt"
    data = {
        "yaml_file": "shapes.yaml",
        "defaults": {"img_size": 160, "epochs": 30, "batch_size": 16, "hyp": "h.yaml"},
    }
    options = TrainOptions(img_size=320)
    bundled = options.resolve(data)
    assert (bundled.img_size, bundled.epochs, bundled.batch_size, bundled.hyp) == (320, 30, 16, "h.yaml")
    user = TrainOptions(img_size=320, data="mine.yaml").resolve(data)
    assert (user.epochs, user.batch_size, user.hyp) == (100, 16, "hyp.scratch-low.yaml")
    generated = TrainOptions(data="data/shapes-hard.yaml").resolve(dict(data, generate={"img_size": 128}))
    assert (generated.img_size, generated.epochs, generated.hyp) == (160, 30, "h.yaml")  # named, yet bundled
    assert TrainOptions.from_dict(user.to_dict()) == user  # stored in checkpoints as plain data


# --- end to end ----------------------------------------------------------------------------------


def read_results(run_dir):
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    data_yaml, model_yaml = make_tiny_dataset(root)
    common = dict(
        data=str(data_yaml), img_size=64, batch_size=4, device="cpu", workers=0, project=str(root), repeat=1
    )
    return model_yaml, common


def test_train_interrupt_and_resume_ends_with_all_epochs(tiny_setup):
    model_yaml, common = tiny_setup
    first = train.run(cfg=str(model_yaml), epochs=3, stop_after_epochs=1, **common)
    run_dir = first["save_dir"]
    assert not first["finished"] and [int(r["epoch"]) for r in read_results(run_dir)] == [0]
    ckpt = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and {"optimizer", "raw_model", "ema_updates", "opt"} <= set(ckpt)
    assert ckpt["ema_updates"] == 2  # 8 images at batch 4, no accumulation

    resumed = train.run(resume=str(run_dir / "weights" / "last.pt"), device="cpu", workers=0)
    assert resumed["finished"] and resumed["save_dir"] == run_dir
    rows = read_results(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(math.isfinite(float(r["train/box_loss"])) for r in rows)
    for name in ("last.pt", "best.pt"):
        final = torch.load(run_dir / "weights" / name, weights_only=True)
        assert final["epoch"] == -1 and "optimizer" not in final and final["names"] == SHAPE_NAMES
    for name in ("hyp.yaml", "opt.yaml", "results.png", "labels.jpg", "train_batch0.jpg"):
        assert (run_dir / name).is_file(), name
    assert yaml.safe_load((run_dir / "opt.yaml").read_text())["epochs"] == 3
    with pytest.raises(CheckpointError, match="already finished"):
        train.run(resume=str(run_dir / "weights" / "last.pt"), device="cpu", workers=0)


def test_weights_transfer_and_freeze(tiny_setup):
    model_yaml, common = tiny_setup
    source = train.run(cfg=str(model_yaml), epochs=1, name="source", **common)
    tuned = train.run(weights=str(source["last"]), epochs=1, freeze=3, name="tuned", **common)
    before = torch.load(source["last"], weights_only=True)["model"]
    after = torch.load(tuned["last"], weights_only=True)["model"]
    frozen = [k for k in before if k.startswith("model.0.") and k.endswith("conv.weight")]
    trained = [k for k in before if k.startswith("model.23.") and k.endswith("conv.weight")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not all(torch.equal(before[k], after[k]) for k in trained)
    with pytest.raises(ConfigError, match="no model given; name a model YAML as cfg"):
        train.run(epochs=1, name="nomodel", **common)
