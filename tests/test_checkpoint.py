"""Checkpoint I/O: plain data, atomic writes, strict loads, clear errors."""

import pytest
import torch

from models.reparam import reparameterized_copy, verify
from models.yolo import Model
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Model("repyolov5n.yaml", nc=2)
    model.names = ["cat", "dog"]
    return model


@pytest.mark.parametrize("fused", [False, True], ids=["training-form", "fused"])
def test_round_trip(model, tmp_path, fused):
    source = reparameterized_copy(model) if fused else model
    path = save_checkpoint(make_checkpoint(source, epoch=3, hyp={"lr0": 0.01}), tmp_path / "weights" / "a.pt")
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["deploy"] is fused and raw["epoch"] == 3 and raw["names"] == ["cat", "dog"]
    loaded, ckpt = load_model(path)
    assert not loaded.training and loaded.deploy is fused and loaded.names == ["cat", "dog"]
    assert ckpt["hyp"] == {"lr0": 0.01}
    assert verify(model, loaded, torch.rand(1, 3, 64, 64))[1] < 1e-5


def test_half_precision_weights_load_as_float(model, tmp_path):
    ckpt = make_checkpoint(model)
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, tmp_path / "half.pt")
    loaded, _ = load_model(tmp_path / "half.pt")
    assert next(loaded.parameters()).dtype == torch.float32


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04broken"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        load_checkpoint(path)


def test_pickled_objects_are_refused(model, tmp_path):
    torch.save({"model": model}, tmp_path / "full.pt")
    with pytest.raises(CheckpointError, match="full.pt holds Python objects"):
        load_checkpoint(tmp_path / "full.pt")


def test_missing_keys(tmp_path):
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt lacks the keys \['model', 'model_yaml', 'deploy'\]"):
        load_checkpoint(tmp_path / "other.pt")


def test_deploy_flag_mismatch_is_reported(model):
    ckpt = make_checkpoint(reparameterized_copy(model))
    ckpt["deploy"] = False
    with pytest.raises(CheckpointError, match="x.pt: the 'model' weights do not fit the training-form graph"):
        model_from_checkpoint(ckpt, source="x.pt")


def test_shape_mismatch_is_reported(model):
    ckpt = make_checkpoint(model)
    ckpt["nc"] = 5
    with pytest.raises(CheckpointError, match="wrong shapes"):
        model_from_checkpoint(ckpt, source="x.pt")


def test_raw_model_key(model):
    ckpt = make_checkpoint(model, raw_model=model.state_dict())
    assert model_from_checkpoint(ckpt, weights_key="raw_model").nc == 2
