"""ultralytics/yolov5 checkpoints: read safely (nothing in them runs), as the same function, by every entry
point; foreign and hostile files refused in one sentence; grown into re-parameterized models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

import convert
import detect
import hubconf
import train
import val
from models.yolo import Model, load_model_yaml
from tests.helpers import (
    NAMES,
    SHAPE_NAMES,
    make_tiny_dataset,
    randomize_batch_norms,
    tiny_model,
    write_images,
)
from tests.yolov5_format import (
    write_foreign_checkpoint,
    write_hostile_checkpoint,
    write_yolov5_checkpoint,
)
from utils.checkpoint import load_checkpoint, load_model
from utils.deploy.detector import Detector
from utils.errors import CheckpointError

# yolov5's P6 graph (yolov5n6-like, at a tiny width) and the v5.0 graph (Focus stem, SPP), as rows.
P6_BACKBONE = [
    [-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]], [-1, 1, "C3", [512]],
    [-1, 1, "Conv", [768, 3, 2]], [-1, 1, "C3", [768]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 1, "C3", [1024]],
    [-1, 1, "SPPF", [1024, 5]],
]  # fmt: skip
P6_HEAD = [
    [-1, 1, "Conv", [768, 1, 1]], [-1, 1, "Upsample", [None, 2, "nearest"]], [[-1, 8], 1, "Concat", [1]],
    [-1, 1, "C3", [768, False]], [-1, 1, "Conv", [512, 1, 1]], [-1, 1, "Upsample", [None, 2, "nearest"]],
    [[-1, 6], 1, "Concat", [1]], [-1, 1, "C3", [512, False]], [-1, 1, "Conv", [256, 1, 1]],
    [-1, 1, "Upsample", [None, 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 1, "C3", [256, False]],
    [-1, 1, "Conv", [256, 3, 2]], [[-1, 20], 1, "Concat", [1]], [-1, 1, "C3", [512, False]],
    [-1, 1, "Conv", [512, 3, 2]], [[-1, 16], 1, "Concat", [1]], [-1, 1, "C3", [768, False]],
    [-1, 1, "Conv", [768, 3, 2]], [[-1, 12], 1, "Concat", [1]], [-1, 1, "C3", [1024, False]],
    [[23, 26, 29, 32], 1, "Detect", ["nc", "anchors"]],
]  # fmt: skip
P6_ANCHORS = [[19, 27, 44, 40, 38, 94], [96, 68, 86, 152, 180, 137], [140, 301, 303, 264, 238, 542],
              [436, 615, 739, 380, 925, 792]]  # fmt: skip
V5_BACKBONE = [
    [-1, 1, "Focus", [64, 3]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C3", [128]],
    [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]], [-1, 1, "C3", [512]],
    [-1, 1, "Conv", [1024, 3, 2]], [-1, 1, "SPP", [1024, [5, 9, 13]]], [-1, 1, "C3", [1024, False]],
]  # fmt: skip


def graph(backbone, head, anchors=None) -> dict:
    config, _ = load_model_yaml("yolov5n.yaml")
    config = dict(config, backbone=backbone, head=head, width_multiple=0.125, nc=len(NAMES))
    if anchors:
        config["anchors"] = anchors
    return config


def rounded(model: Model) -> Model:
    """The model with its weights rounded to float16 and back, as a yolov5 checkpoint stores them."""
    return copy.deepcopy(model).half().float().eval()


def assert_same_function(reference: Model, candidate: torch.nn.Module, size=(64, 96), rtol=1e-4):
    x = torch.rand(2, 3, *size, dtype=next(reference.parameters()).dtype)
    with torch.no_grad():
        expected, actual = reference.eval()(x), candidate.eval()(x)
    assert ((expected - actual).abs().max() / expected.abs().max()).item() <= rtol


@pytest.fixture(scope="module")
def plain() -> Model:
    return tiny_model(cfg="yolov5n.yaml")


@pytest.fixture(scope="module")
def yolov5_file(plain, tmp_path_factory) -> Path:
    """A 3-class yolov5 checkpoint (the tiny dataset has 5 classes: a new head where it trains)."""
    return write_yolov5_checkpoint(plain, tmp_path_factory.mktemp("yolov5") / "yolov5n.pt")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    data_yaml, _ = make_tiny_dataset(tmp_path_factory.mktemp("data"), train_images=4, val_images=2)
    return data_yaml


def test_load_model_reads_a_yolov5_checkpoint_as_the_same_function(plain, yolov5_file):
    model, ckpt = load_model(yolov5_file)
    assert ckpt["source_format"] == "ultralytics/yolov5" and ckpt["names"] == NAMES and not ckpt["deploy"]
    assert model.yaml["head"][1][2] == "Upsample" and model.yaml["activation"] == "SiLU"
    torch.testing.assert_close(model.detect.anchors, plain.detect.anchors)  # grid units -> pixels
    assert_same_function(rounded(plain), model)


def test_the_ema_is_taken_when_set_else_the_model(plain, tmp_path):
    other = tiny_model(seed=1, cfg="yolov5n.yaml")
    both = write_yolov5_checkpoint(plain, tmp_path / "both.pt", ema=other)
    assert_same_function(rounded(other), load_model(both)[0])
    released = write_yolov5_checkpoint(plain, tmp_path / "released.pt", ema=False)  # ema None
    assert_same_function(rounded(plain), load_model(released)[0])


def test_batch_norm_eps_is_carried_over(tmp_path):
    model = tiny_model(cfg="yolov5n.yaml")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 0.05  # large, so that the default 1e-3 would show in the outputs
    loaded, ckpt = load_model(write_yolov5_checkpoint(model, tmp_path / "eps.pt"))
    assert ckpt["bn_eps"] == pytest.approx(0.05)
    assert_same_function(rounded(model), loaded)


@pytest.mark.parametrize(
    "name, config, model_class, size",
    [
        ("p6", graph(P6_BACKBONE, P6_HEAD, P6_ANCHORS), "models.yolo.DetectionModel", (128, 128)),
        (
            "v5.0",
            graph(V5_BACKBONE, load_model_yaml("yolov5n.yaml")[0]["head"]),
            "models.yolo.Model",
            (64, 96),
        ),
    ],
)
def test_p6_and_v5_releases_load(name, config, model_class, size, tmp_path):
    torch.manual_seed(0)
    model = randomize_batch_norms(Model(config)).eval()
    path = write_yolov5_checkpoint(model, tmp_path / f"{name}.pt", ema=False, model_class=model_class)
    loaded, _ = load_model(path)
    assert_same_function(rounded(model), loaded, size)


def test_every_entry_point_runs_on_a_yolov5_checkpoint(tiny_data, tmp_path):
    plain = tiny_model(cfg="yolov5n.yaml", names=SHAPE_NAMES)
    yolov5_file = write_yolov5_checkpoint(plain, tmp_path / "yolov5n.pt")
    image = write_images(tmp_path / "images", count=1)[0]
    metrics = val.run(weights=yolov5_file, data=tiny_data, img_size=64, project=tmp_path / "val")
    assert 0.0 <= metrics["mAP50"] <= 1.0
    detect.run(weights=yolov5_file, source=image, img_size=64, project=tmp_path / "detect")
    assert any((tmp_path / "detect").rglob("*.jpg"))
    report = convert.run(yolov5_file, output=tmp_path / "fused.pt", img_size=64, onnx=True, runs=1)
    assert report["max_rel_error"] <= 1e-5 and (tmp_path / "fused.onnx").is_file()
    fused, _ = load_model(tmp_path / "fused.pt")
    assert_same_function(rounded(plain), fused)
    for detector in (
        Detector(yolov5_file, device="cpu"),
        hubconf.custom(path=str(yolov5_file), device="cpu"),
    ):
        assert detector.names == SHAPE_NAMES and len(detector(str(image), size=64).xyxy) == 1


def test_growing_a_yolov5_checkpoint_into_every_block(plain, yolov5_file):
    """The library path in float32 (tests/test_grow.py shows exactness in float64)."""
    reference = rounded(plain)
    for block in ("", "-acb", "-dbb", "-orepa", "-mobileone", "-qa"):
        config = dict(load_model_yaml(f"repyolov5n{block}.yaml")[0], width_multiple=0.125)
        grown, _ = load_model(yolov5_file, cfg=config)
        assert_same_function(reference, grown, rtol=1e-6)  # QA's kernel minus identity rounds in float32


HOSTILE = ["os.system", "eval", "class"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_pickle_naming_any_other_global_is_refused_and_never_runs(kind, tmp_path):
    marker = tmp_path / "ran"
    path = write_hostile_checkpoint(tmp_path / f"{kind}.pt", marker, kind)
    with pytest.raises(CheckpointError, match="refused and nothing in the file was run|no yolov5 v4.0"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", HOSTILE)
def test_every_entry_point_refuses_a_hostile_pickle(kind, tiny_data, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = write_hostile_checkpoint(tmp_path / "evil.pt", marker, kind)
    data_yaml = tiny_data
    calls = [
        (train.main, ["--weights", str(path), "--data", str(data_yaml), "--project", str(tmp_path / "t")]),
        (val.main, ["--weights", str(path), "--data", str(data_yaml), "--project", str(tmp_path / "v")]),
        (detect.main, ["--weights", str(path), "--source", str(tmp_path), "--project", str(tmp_path / "d")]),
        (convert.main, ["--weights", str(path)]),
    ]
    for main, argv in calls:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "evil.pt" in last and "Traceback" not in last
    for call in (lambda: Detector(path, device="cpu"), lambda: hubconf.custom(path=str(path), device="cpu")):
        with pytest.raises(CheckpointError):
            call()
    assert not marker.exists() and not any((tmp_path / name).exists() for name in ("t", "v", "d"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]  # nothing written


@pytest.mark.parametrize(
    "model_class, expected",
    [
        ("ultralytics.nn.tasks.DetectionModel", "ultralytics package (YOLOv8"),
        ("models.yolo.SegmentationModel", "yolov5 segmentation checkpoint"),
        ("models.yolo.ClassificationModel", "yolov5 classification checkpoint"),
        ("models.yolo.IDetect", "YOLOv7"),
    ],
)
def test_a_foreign_checkpoint_says_what_it_is(model_class, expected, tmp_path):
    path = write_foreign_checkpoint(tmp_path / "other.pt", model_class)
    with pytest.raises(CheckpointError, match="reads its own checkpoints and ultralytics/yolov5") as error:
        load_checkpoint(path)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_missing_release_file_is_never_downloaded(tiny_data, tmp_path, capsys):
    missing = tmp_path / "yolov5s.pt"
    with pytest.raises(CheckpointError, match="downloads nothing: download yolov5s.pt yourself") as error:
        load_checkpoint(missing)
    assert "github.com/ultralytics/yolov5/releases" in str(error.value)
    data_yaml = tiny_data
    for main, argv in (
        (train.main, ["--weights", str(missing), "--data", str(data_yaml), "--project", str(tmp_path / "t")]),
        (val.main, ["--weights", str(missing), "--data", str(data_yaml), "--project", str(tmp_path / "v")]),
        (
            detect.main,
            ["--weights", str(missing), "--source", str(tmp_path), "--project", str(tmp_path / "d")],
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and "downloads nothing" in capsys.readouterr().err
    assert not missing.exists() and not any(tmp_path.iterdir())


def test_val_refuses_a_yolov5_checkpoint_for_another_class_count(yolov5_file, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the data has 5 classes, the model 3
        val.main(["--weights", str(yolov5_file), "--data", str(tiny_data), "--project", str(tmp_path / "v")])
    assert exit_info.value.code == 2
    assert "predicts 3 classes" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "v").exists()


def test_train_grows_a_yolov5_checkpoint_and_says_what_it_transferred(
    yolov5_file, tiny_data, tmp_path, caplog
):
    data_yaml = tiny_data  # 5 classes: a new head
    config = dict(load_model_yaml("repyolov5n.yaml")[0], width_multiple=0.125)
    cfg = tmp_path / "tiny_rep.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    caplog.set_level("INFO")
    result = train.run(
        cfg=str(cfg), weights=str(yolov5_file), data=str(data_yaml), img_size=64, epochs=1, batch_size=4,
        device="cpu", workers=0, project=str(tmp_path / "runs"), repeat=1, plots=False, tensorboard=False,
    )  # fmt: skip
    assert result["finished"]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Transferred from"))
    assert "an ultralytics/yolov5 checkpoint" in line and "plain convs grown into re-parameterized" in line
    assert "not transferred: model.24.level_convs.0, model.24.level_convs.1, model.24.level_convs.2" in line


def test_a_transfer_that_fits_almost_nothing_is_an_error(yolov5_file):
    wide = dict(load_model_yaml("repyolov5n.yaml")[0], width_multiple=0.25)  # other channel counts
    with pytest.raises(
        CheckpointError,
        match=r"fits repyolov5n.yaml badly: only 0% of its weights .*model.0.conv: weight is \[8, 3, 6, 6\]",
    ):
        load_model(yolov5_file, cfg=wide)
