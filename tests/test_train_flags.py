"""yolov5's train.py flags with yolov5's meaning, each checked by its effect on a tiny run or model:
--noval, --nosave, --save-period, --noautoanchor, --label-smoothing, --optimizer Adam, --freeze as a list,
and yolov5's hyperparameter files (their `anchors` key included) loading and training."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml

import train
import utils.train.trainer as trainer_module
from utils.errors import ConfigError
from utils.hyp import Hyp, load_hyp
from utils.train.optim import build_optimizer
from utils.train.options import TrainOptions
from utils.train.trainer import build_model

# The keys and values of yolov5's data/hyps files, as its repository documents them (its README's
# training commands name them). The test writes them; nothing is copied into the project.
SCRATCH_LOW = {
    "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
    "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
    "obj_pw": 1.0, "iou_t": 0.2, "anchor_t": 4.0, "fl_gamma": 0.0, "hsv_h": 0.015, "hsv_s": 0.7,
    "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0, "perspective": 0.0,
    "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0,
}  # fmt: skip
YOLOV5_HYPS = {
    "hyp.scratch-low.yaml": SCRATCH_LOW,
    "hyp.scratch-med.yaml": {**SCRATCH_LOW, "lrf": 0.1, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.1},
    "hyp.scratch-high.yaml": {
        **SCRATCH_LOW, "lrf": 0.1, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.1, "copy_paste": 0.1,
    },
    "hyp.VOC.yaml": {
        **SCRATCH_LOW, "lr0": 0.00334, "lrf": 0.15135, "momentum": 0.74832, "weight_decay": 0.00025,
        "warmup_epochs": 3.3835, "warmup_momentum": 0.59462, "warmup_bias_lr": 0.18657, "box": 0.02,
        "cls": 0.21638, "cls_pw": 0.5, "obj": 0.51728, "obj_pw": 0.67198, "anchor_t": 3.3744,
        "anchors": 3.412, "scale": 0.75544, "mixup": 0.04266,
    },
    "hyp.Objects365.yaml": {
        **SCRATCH_LOW, "lr0": 0.00258, "lrf": 0.17, "momentum": 0.779, "weight_decay": 0.00058,
        "warmup_epochs": 1.33, "warmup_momentum": 0.86, "warmup_bias_lr": 0.0711, "box": 0.0539,
        "cls": 0.299, "cls_pw": 0.825, "obj": 0.632, "anchor_t": 3.44, "anchors": 3.2, "translate": 0.0902,
        "scale": 0.491,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tiny_study_dataset):
    """(model YAML, the run keywords) of conftest's tiny dataset: 8 train and 4 val images at 64 px."""
    root, data_yaml, model_yaml = tiny_study_dataset
    runs = dict(img_size=64, batch_size=4, device="cpu", workers=0, repeat=1, plots=False, tensorboard=False)
    return model_yaml, dict(cfg=str(model_yaml), data=str(data_yaml), project=str(root / "runs"), **runs)


def spy(monkeypatch, name: str) -> list:
    """Record the calls of utils.train.trainer's ``name`` (their arguments), still calling it."""
    calls, real = [], getattr(trainer_module, name)

    def recorded(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, name, recorded)
    return calls


def saved_anchors(checkpoint) -> torch.Tensor:
    """The Detect layer's anchors (nl, na, 2) in a checkpoint."""
    state = torch.load(checkpoint, weights_only=True)["model"]
    return next(value for key, value in state.items() if key.endswith(".anchors"))


def test_noval_nosave_and_save_period(tiny, monkeypatch):
    """--noval validates the final epoch only (the others report zeros, as in yolov5); --nosave writes
    last.pt and best.pt at the final epoch only; --save-period 2 leaves epoch0.pt and epoch2.pt."""
    _, common = tiny
    evaluations, saves = spy(monkeypatch, "evaluate"), spy(monkeypatch, "save_checkpoint")
    result = train.run(epochs=3, noval=True, nosave=True, save_period=2, name="noval", **common)
    weights = result["save_dir"] / "weights"
    assert sorted(path.name for path in weights.iterdir()) == ["best.pt", "epoch0.pt", "epoch2.pt", "last.pt"]
    epochs = {ckpt["epoch"] for ckpt, path in saves if path.name in ("last.pt", "best.pt")}
    assert epochs == {2, -1}, "last.pt/best.pt written before the final epoch (-1: the finished run's)"
    assert len(evaluations) == 2  # the final epoch, then best.pt's final validation
    with open(result["save_dir"] / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3
    assert all(float(row[key]) == 0.0 for row in rows[:2] for key in row if key.startswith("metrics/"))


def test_label_smoothing_flag_overrides_the_hyp_file(tiny):
    _, common = tiny
    result = train.run(epochs=1, label_smoothing=0.1, name="smooth", **common)
    assert yaml.safe_load((result["save_dir"] / "hyp.yaml").read_text())["label_smoothing"] == 0.1
    with pytest.raises(ConfigError, match="label_smoothing is 1.5"):
        TrainOptions(label_smoothing=1.5).check()


def test_noautoanchor_keeps_the_models_anchors_and_the_hyp_anchors_key_asks_autoanchor(tiny, tmp_path):
    model_yaml, common = tiny
    cfg_anchors = yaml.safe_load(model_yaml.read_text()).get("anchors")
    kept = train.run(epochs=1, noautoanchor=True, name="kept", **common)
    saved = torch.load(kept["last"], weights_only=True)["model_yaml"]["anchors"]
    assert cfg_anchors is None or saved == cfg_anchors
    hyp = tmp_path / "two_anchors.yaml"
    hyp.write_text(yaml.safe_dump({"anchors": 2.4}))  # rounded as yolov5 rounds it: 2 per level
    computed = train.run(epochs=1, hyp=str(hyp), name="two", **common)
    anchors = saved_anchors(computed["last"])
    placeholders = torch.arange(1.0, 5.0).view(2, 2)
    assert anchors.shape[1] == 2 and not torch.equal(anchors[0], placeholders), "AutoAnchor did not run"
    with pytest.raises(ConfigError, match="--noautoanchor"):
        train.run(epochs=1, hyp=str(hyp), noautoanchor=True, name="refused", **common)


def test_freeze_takes_a_count_or_layer_indices(tiny):
    model_yaml, _ = tiny

    def frozen(freeze) -> set[int]:
        model = build_model(TrainOptions(cfg=str(model_yaml), freeze=freeze), 3, ["a", "b", "c"], None)
        return {int(name.split(".")[1]) for name, p in model.named_parameters() if not p.requires_grad}

    assert frozen([0]) == set() and frozen([3]) == {0, 1, 2} and frozen(3) == {0, 1, 2}  # an int: a count
    assert frozen([0, 2]) == {0, 2} and frozen([4, 1]) == {1, 4}
    assert train.parse_args(["--freeze", "0", "1", "2"]).freeze == [0, 1, 2]
    assert train.parse_args(["--freeze", "10"]).freeze == [10]
    with pytest.raises(ConfigError, match="freeze"):
        TrainOptions(freeze=[-1]).check()


def test_adam_is_adam_with_decay_on_the_weights_only(tiny):
    model_yaml, _ = tiny
    model = build_model(TrainOptions(cfg=str(model_yaml)), 3, ["a", "b", "c"], None)
    optimizer = build_optimizer(model, "Adam", lr=0.001, momentum=0.9, weight_decay=5e-4)
    assert type(optimizer) is torch.optim.Adam
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 5e-4, 0.0]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert train.parse_args(["--optimizer", "Adam"]).optimizer == "Adam"


@pytest.mark.parametrize("name", sorted(YOLOV5_HYPS))
def test_yolov5_hyp_files_load_and_train(tiny, tmp_path, name):
    _, common = tiny
    path = tmp_path / name
    path.write_text(yaml.safe_dump(YOLOV5_HYPS[name]))
    hyp = load_hyp(path)
    assert hyp.lr0 == YOLOV5_HYPS[name]["lr0"] and hyp.anchors == YOLOV5_HYPS[name].get("anchors", 0.0)
    result = train.run(epochs=1, hyp=str(path), name=name.removesuffix(".yaml"), **common)
    assert result["finished"]
    anchors = saved_anchors(result["last"])
    assert anchors.shape[1] == round(YOLOV5_HYPS[name].get("anchors", 3))


def test_old_checkpoints_freeze_count_reads_as_a_list():
    assert TrainOptions.from_dict({"freeze": 3}).freeze == [3]
    assert Hyp().anchors == 0.0
