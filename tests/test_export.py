"""ONNX export: the fused graph has no BatchNormalization nor branch Adds, passes onnx.checker, and
onnxruntime (through utils.deploy.backend) reproduces PyTorch, static and dynamic."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch

from models.blocks.common import Bottleneck
from models.yolo import Model, load_model_yaml
from tests.helpers import NAMES, tiny_model
from utils.deploy.backend import load_inference_model
from utils.deploy.formats.onnx import export_onnx
from utils.deploy.graph import classify_add_nodes, count_ops
from utils.deploy.metadata import read_metadata


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    trained = tiny_model()
    return trained, copy.deepcopy(trained).reparameterize().eval()


def export(model: torch.nn.Module, path: Path, dynamic: bool, img_hw=(64, 64)) -> Path:
    metadata = {"names": NAMES, "nc": 3, "stride": 32, "deploy": bool(model.deploy)}
    return export_onnx(model, path, img_hw, dynamic=dynamic, metadata=metadata)


def test_fused_graph_has_no_batchnorm_or_branch_adds(models, tmp_path: Path):
    trained, fused = models
    trained_graph = onnx.load(str(export(trained, tmp_path / "trained.onnx", dynamic=False)))
    fused_graph = onnx.load(str(export(fused, tmp_path / "fused.onnx", dynamic=False)))
    onnx.checker.check_model(fused_graph)
    # The classifier does see the training form's branch sums, so zero on the fused graph means something.
    assert classify_add_nodes(trained_graph)["branch"] > 0
    ops, adds = count_ops(fused_graph), classify_add_nodes(fused_graph)
    assert ops.get("BatchNormalization", 0) == 0
    assert adds["branch"] == 0
    bottlenecks_with_shortcut = sum(isinstance(m, Bottleneck) and m.add for m in fused.modules())
    assert adds["residual"] == bottlenecks_with_shortcut > 0
    assert ops["Conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules())


@pytest.mark.parametrize("variant", ["acb", "dbb", "orepa", "mobileone", "qa"])
def test_every_fused_variant_exports_without_batchnorm_or_branch_adds(variant, tmp_path: Path):
    torch.manual_seed(0)
    config, _ = load_model_yaml(f"repyolov5n-{variant}.yaml")
    trained = Model(dict(config, width_multiple=0.125, nc=3))
    fused = copy.deepcopy(trained).reparameterize().eval()
    graph = onnx.load(str(export(fused, tmp_path / f"{variant}.onnx", dynamic=False)))
    onnx.checker.check_model(graph)
    ops, adds = count_ops(graph), classify_add_nodes(graph)
    assert ops.get("BatchNormalization", 0) == 0 and adds["branch"] == 0
    assert adds["residual"] == sum(isinstance(m, Bottleneck) and m.add for m in fused.modules()) > 0
    assert ops["Conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_inference_model(tmp_path / f"{variant}.onnx")(x), fused(x))


def test_static_onnx_matches_torch_and_carries_metadata(models, tmp_path: Path):
    _, fused = models
    path = export(fused, tmp_path / "fused.onnx", dynamic=False, img_hw=(64, 96))
    metadata = read_metadata(onnx.load(str(path)))
    assert metadata["names"] == NAMES and metadata["stride"] == 32 and metadata["img_size"] == [64, 96]
    assert metadata["dynamic"] is False
    model = load_inference_model(path)
    assert (model.names, model.nc, model.stride, model.fixed_input_hw) == (NAMES, 3, 32, (64, 96))
    x = torch.rand(3, 3, 64, 96)  # batch 3 through a batch-1 graph
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused(x), rtol=1e-4, atol=1e-3)
    # A smaller input is padded at the bottom/right; coordinates stay in the input's frame.
    small = torch.rand(1, 3, 32, 64)
    padded = torch.nn.functional.pad(small, (0, 32, 0, 32), value=114 / 255)
    with torch.no_grad():
        torch.testing.assert_close(model(small), fused(padded), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="fixed 64x96"):
        model(torch.rand(1, 3, 128, 96))


def test_dynamic_onnx_matches_torch_at_other_sizes(models, tmp_path: Path):
    _, fused = models
    with torch.no_grad():
        fused(torch.rand(1, 3, 64, 64))  # a cached decode grid must not be baked into the graph
    model = load_inference_model(export(fused, tmp_path / "dynamic.onnx", dynamic=True))
    assert model.fixed_input_hw is None
    for shape in ((1, 3, 64, 64), (2, 3, 96, 128)):
        x = torch.rand(*shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), fused(x), rtol=1e-4, atol=1e-3)


def test_backend_rejects_unknown_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_inference_model(tmp_path / "missing.onnx")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.bin"):
        load_inference_model(tmp_path / "weights.bin")
