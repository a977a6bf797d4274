"""Optimizer groups and schedules, EMA, option resolution, and a tiny end-to-end train -> resume run."""

import csv
import math

import pytest
import torch
import yaml
from torch import nn

import train
from utils.ema import ModelEMA
from utils.hyp import Hyp
from utils.optim import (
    EpochSchedule,
    accumulation_steps,
    apply_warmup,
    build_optimizer,
    lr_lambda,
    parameter_groups,
    scaled_weight_decay,
    warmup_iterations,
)
from utils.paths import ROOT
from utils.synthetic import generate_dataset
from utils.trainer import scale_loss_gains

NAMES = ["circle", "square", "triangle", "star", "cross"]


def make_tiny_dataset(root, train_images=8, val_images=4):
    """A 64 px synthetic dataset and a tiny yolov5n-shaped model YAML; -> (data yaml, model yaml)."""
    generate_dataset(
        root / "shapes", img_size=64, train_images=train_images, val_images=val_images, min_object_size=8
    )
    data_yaml = root / "tiny_data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(root / "shapes"), "train": "images/train",
                                         "val": "images/val", "names": NAMES}))  # fmt: skip
    config = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    config.update(depth_multiple=0.33, width_multiple=0.125)
    model_yaml = root / "tiny_model.yaml"
    model_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    return data_yaml, model_yaml


def small_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))


# --- optimizer, schedule, accumulation ---------------------------------------------------------


def test_parameter_groups_cover_every_parameter_once_with_decay_only_on_weights():
    net = small_net()
    biases, weights, norm_weights = parameter_groups(net)
    assert {id(p) for p in biases + weights + norm_weights} == {id(p) for p in net.parameters()}
    assert len(biases) == 2 and len(weights) == 2 and len(norm_weights) == 1
    for name in ("SGD", "AdamW"):
        optimizer = build_optimizer(net, name, lr=0.01, momentum=0.9, weight_decay=1e-3)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 1e-3, 0.0]
    assert build_optimizer(net, "SGD").param_groups[0]["nesterov"]
    with pytest.raises(ValueError, match="--optimizer"):
        build_optimizer(net, "Adam")


def test_accumulation_is_capped_for_small_datasets():
    assert accumulation_steps(16, 1000) == 4  # nominal batch 64
    assert accumulation_steps(8, 8) == 1  # 64 images at batch 8: every batch is an optimizer step
    assert accumulation_steps(8, 160) == 5  # capped so an epoch keeps 32 steps
    assert accumulation_steps(16, 38) == 1  # the bundled dataset: 600 images at batch 16
    assert accumulation_steps(128, 100) == 1
    assert scaled_weight_decay(5e-4, 16, 4) == pytest.approx(5e-4)
    assert scaled_weight_decay(5e-4, 8, 1) == pytest.approx(5e-4 / 8)


def test_lr_schedules_and_warmup():
    for cosine in (False, True):
        factor = lr_lambda(10, 0.01, cosine)
        assert factor(0) == pytest.approx(1.0) and factor(10) == pytest.approx(0.01)
        assert 0.01 < factor(5) < 1.0
    hyp = Hyp(warmup_epochs=3, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937, lr0=0.01)
    assert warmup_iterations(hyp, 1000, 100) == 3000
    assert warmup_iterations(hyp, 10, 100) == 100  # at least 100 iterations...
    assert warmup_iterations(hyp, 10, 4) == 20  # ...but never more than half of the run
    assert warmup_iterations(hyp, 8, 30) == 24  # 64 images at batch 8: the floor gives way to 1/10 of the run
    optimizer = build_optimizer(small_net(), "SGD", lr=0.01, momentum=0.937)
    schedule = EpochSchedule(optimizer, epochs=10, lrf=0.01)
    apply_warmup(optimizer, 0, 100, schedule.factor(0), hyp, "SGD")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.0, 0.0])
    assert optimizer.param_groups[1]["momentum"] == pytest.approx(0.8)
    apply_warmup(optimizer, 100, 100, schedule.factor(0), hyp, "SGD")
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01] * 3)
    schedule.set_epoch(5)
    restored = EpochSchedule(optimizer, epochs=10, lrf=0.01)
    restored.load_state_dict(schedule.state_dict())
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01 * lr_lambda(10, 0.01)(5)] * 3)


def test_loss_gains_are_scaled_for_levels_classes_and_image_size():
    gains = scale_loss_gains(Hyp(box=0.05, cls=0.5, obj=1.0), nl=3, nc=5, img_size=320)
    assert (gains.box, gains.cls, gains.obj) == pytest.approx((0.05, 0.5 * 5 / 80, 0.25))


def test_ema_ramps_up_and_tracks_batchnorm_statistics():
    net = small_net()
    ema = ModelEMA(net, decay=0.9999, tau=2000)
    assert ema.current_decay() == 0.0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()
    net(torch.rand(2, 3, 8, 8))  # moves the BN running statistics and num_batches_tracked
    ema.update(net)  # decay is still tiny: the EMA follows the model almost exactly
    for (name, a), b in zip(net.state_dict().items(), ema.ema.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3), name
    ema.updates = 10**6
    assert ema.current_decay() == pytest.approx(0.9999)
    assert not any(p.requires_grad for p in ema.ema.parameters())


# --- options -----------------------------------------------------------------------------------


def test_cli_and_defaults_of_the_bundled_dataset():
    args = train.parse_args(["--cfg", "repyolov5s.yaml", "--resume", "--cache", "--cos-lr", "--img", "320"])
    assert args.resume is True and args.cache == "ram" and args.cos_lr and args.img_size == 320
    assert train.parse_args(["--resume", "a/last.pt"]).resume == "a/last.pt"
    data = {
        "yaml_file": "shapes.yaml",
        "defaults": {"img_size": 160, "epochs": 30, "batch_size": 16, "hyp": "h.yaml"},
    }
    opt = {"img_size": 320, "epochs": None, "batch_size": None, "hyp": None}
    bundled = train.resolve_options(opt, data, data_given=False)
    assert (bundled["img_size"], bundled["epochs"], bundled["batch_size"], bundled["hyp"]) == (
        320,
        30,
        16,
        "h.yaml",
    )
    user = train.resolve_options(opt, data, data_given=True)
    assert (user["epochs"], user["batch_size"], user["hyp"]) == (100, 16, "hyp.scratch-low.yaml")


# --- end to end ----------------------------------------------------------------------------------


def read_results(run_dir):
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    data_yaml, model_yaml = make_tiny_dataset(root)
    common = dict(data=str(data_yaml), img_size=64, batch_size=4, device="cpu", workers=0, project=str(root))
    return model_yaml, common


def test_train_interrupt_and_resume_ends_with_all_epochs(tiny_setup):
    model_yaml, common = tiny_setup
    first = train.run(cfg=str(model_yaml), epochs=3, stop_after_epochs=1, **common)
    run_dir = first["save_dir"]
    assert not first["finished"] and [int(r["epoch"]) for r in read_results(run_dir)] == [0]
    ckpt = torch.load(run_dir / "weights" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and {"optimizer", "raw_model", "ema_updates", "scheduler"} <= set(ckpt)
    assert ckpt["ema_updates"] == 2  # 8 images at batch 4, no accumulation

    resumed = train.run(resume=str(run_dir / "weights" / "last.pt"), device="cpu", workers=0)
    assert resumed["finished"] and resumed["save_dir"] == run_dir
    rows = read_results(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(math.isfinite(float(r["train/box_loss"])) for r in rows)
    for name in ("last.pt", "best.pt"):
        final = torch.load(run_dir / "weights" / name, weights_only=True)
        assert final["epoch"] == -1 and "optimizer" not in final and final["names"] == NAMES
    for name in ("hyp.yaml", "opt.yaml", "results.png", "labels.jpg", "train_batch0.jpg"):
        assert (run_dir / name).is_file(), name
    assert yaml.safe_load((run_dir / "opt.yaml").read_text())["epochs"] == 3
    with pytest.raises(SystemExit, match="already finished"):
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
    with pytest.raises(SystemExit, match="--cfg"):
        train.run(epochs=1, name="nomodel", **common)
