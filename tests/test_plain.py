"""The plain (single-path) detectors: yolov5{n,s}-plain and their re-parameterized twins build as plain
nets (no C3, no shortcut), fuse exactly into the plain file's parameter count, grow exactly from it, and
train, convert and export end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from models.blocks import C3, Bottleneck, Conv, QARepVGGBlock, ReparamBlock, RepVGGBlock
from models.blocks.repvgg import PointwiseConv2d, conv_bn
from models.grow import transfer_weights
from models.reparam import reparameterized_copy, verify
from models.yolo import Model, count_gflops, count_parameters, load_model_yaml
from tests.helpers import make_tiny_dataset, tiny_model, write_tiny_checkpoint
from tests.test_grow import exactness
from tests.test_reparam import randomize_batch_norms
from utils.checkpoint import load_model

# (re-parameterized file, its plain twin, the block in every 3x3 of the re-parameterized file)
PAIRS = [
    ("repyolov5n-plain.yaml", "yolov5n-plain.yaml", RepVGGBlock),
    ("repyolov5s-plain.yaml", "yolov5s-plain.yaml", RepVGGBlock),
    ("repyolov5s-plain-qa.yaml", "yolov5s-plain.yaml", QARepVGGBlock),
]
PLAIN_FILES = sorted({name for pair in PAIRS for name in pair[:2]})


def spatial_convs(model: nn.Module) -> list[nn.Module]:
    """The modules that hold a 3x3 (or larger) kernel: plain Convs and re-parameterizable blocks."""
    found = []
    for module in model.modules():
        if isinstance(module, ReparamBlock) or (isinstance(module, Conv) and module.conv.kernel_size[0] > 1):
            found.append(module)
    return found


@pytest.mark.parametrize("cfg", PLAIN_FILES)
def test_a_plain_file_builds_a_single_path_net_with_relu(cfg):
    model = Model(cfg, nc=80)
    assert not any(isinstance(m, (C3, Bottleneck)) for m in model.modules()), "a C3 or shortcut in the net"
    assert model.yaml["activation"] == "ReLU"
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    wanted = {rep: block for rep, _, block in PAIRS}.get(cfg, Conv)  # a plain file: Conv in every 3x3
    assert all(isinstance(m, wanted) for m in spatial_convs(model))
    assert model.stride.tolist() == [8, 16, 32]


def test_the_activation_key_switches_the_plain_net_to_silu():
    config = dict(load_model_yaml("repyolov5n-plain.yaml")[0], activation="SiLU")
    model = Model(config, nc=3)
    assert any(isinstance(m, nn.SiLU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_plain_s_costs_what_yolov5s_costs_fused():
    """The plain s file is sized to fused yolov5s: GFLOPs at 640 within 15%, parameters within 5%."""
    yolov5s = Model("yolov5s.yaml", nc=80).reparameterize()
    plain = Model("yolov5s-plain.yaml", nc=80).reparameterize()
    assert count_gflops(plain, 640) / count_gflops(yolov5s, 640) == pytest.approx(1.0, abs=0.15)
    assert count_parameters(plain) / count_parameters(yolov5s) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("rep, plain, block", PAIRS, ids=[pair[0] for pair in PAIRS])
def test_the_rep_file_fuses_exactly_into_the_plain_files_parameters(rep, plain, block):
    torch.manual_seed(0)
    model = randomize_batch_norms(Model(rep, nc=5), keep_scale=True).double().eval()
    assert sum(isinstance(m, block) for m in model.modules()) == len(spatial_convs(Model(plain, nc=5)))
    fused = reparameterized_copy(model)
    x = torch.rand(1, 3, 64, 96, dtype=torch.float64)
    _, max_rel = verify(model, fused, x)
    assert max_rel < 1e-10
    twin = Model(plain, nc=5).reparameterize()
    assert count_parameters(fused) == count_parameters(twin)
    assert [p.shape for p in fused.parameters()] == [p.shape for p in twin.parameters()]


@pytest.mark.parametrize("rep, plain, block", PAIRS, ids=[pair[0] for pair in PAIRS])
def test_the_rep_file_grows_exactly_from_its_plain_twin(rep, plain, block, tmp_path):
    source = tiny_model(cfg=plain).double()
    grown = Model(dict(load_model_yaml(rep)[0], width_multiple=0.125, nc=source.nc)).double().eval()
    report = transfer_weights(source, grown)
    assert report.grown == len(spatial_convs(source)) and report.fraction == 1.0
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        assert exactness(source.eval(), grown, x) < 1e-10
        assert exactness(source, grown.reparameterize(), x) < 1e-9  # fusion rounds a little
    # the same through a checkpoint, as a user asks for it: load_model(plain.pt, cfg=rep)
    path = write_tiny_checkpoint(tmp_path / "plain.pt", cfg=plain)
    checkpoint_plain, _ = load_model(path)
    config = dict(load_model_yaml(rep)[0], width_multiple=0.125)
    checkpoint_grown, _ = load_model(path, cfg=config)
    assert any(isinstance(m, block) for m in checkpoint_grown.modules())
    with torch.no_grad():
        assert exactness(checkpoint_plain, checkpoint_grown, torch.rand(1, 3, 64, 64)) < 1e-5


@pytest.mark.parametrize("in_channels", [3, 8, 32])
def test_a_strided_1x1_branch_trains_in_channels_last(in_channels):
    """torch 2.14's CPU kernel for the weight gradient of a strided 1x1 conv in channels_last with under
    16 input channels corrupts the heap; PointwiseConv2d computes the same function without it, and only
    there, so wider branches keep torch's own kernel (and a trained model its result)."""
    torch.manual_seed(0)
    branch = conv_bn(in_channels, 16, 1, 2, 1).to(memory_format=torch.channels_last)
    assert isinstance(branch.conv, PointwiseConv2d) == (in_channels < 16) and branch.conv.stride == (2, 2)
    x = torch.rand(4, in_channels, 33, 31).to(memory_format=torch.channels_last)
    for _ in range(3):
        branch(x).sum().backward()
    reference = nn.functional.conv2d(x, branch.conv.weight, None, 2)
    assert torch.equal(branch.conv(x), reference)


@pytest.mark.slow
def test_the_tiny_plain_pair_trains_converts_and_exports(tmp_path):
    import convert
    import detect
    import train
    import val

    torch.set_num_threads(1)
    data_yaml, _ = make_tiny_dataset(tmp_path)
    config = dict(load_model_yaml("repyolov5n-plain.yaml")[0], width_multiple=0.125)
    config.pop("yaml_file")
    model_yaml = tmp_path / "tiny-repyolov5n-plain.yaml"
    model_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    result = train.run(cfg=str(model_yaml), data=str(data_yaml), epochs=1, batch_size=4, img_size=64,
                       device="cpu", workers=0, project=str(tmp_path / "runs"), name="train", repeat=1,
                       plots=False, tensorboard=False)  # fmt: skip
    best = Path(result["best"])
    report = convert.run(best, img_size=64, onnx=True, int8=True, runs=1)
    assert report["max_rel_error"] <= 1e-5
    fused, _ = load_model(report["output"])
    twin = Model(dict(config, nc=fused.nc)).reparameterize()
    assert count_parameters(fused) == count_parameters(twin)
    onnx_path = Path(report["output"]).with_suffix(".onnx")
    for weights in (onnx_path, onnx_path.with_name(f"{onnx_path.stem}_int8.onnx")):
        metrics = val.run(data=str(data_yaml), weights=str(weights), img_size=64, batch_size=4,
                          device="cpu", workers=0, plots=False, quiet=True,
                          save_dir=str(tmp_path / weights.stem))  # fmt: skip
        assert 0.0 <= metrics["mAP50_95"] <= 1.0
    detect.run(onnx_path, data_yaml.parent / "shapes" / "images" / "val", img_size=64, device="cpu",
               project=str(tmp_path / "detect"), name="onnx")  # fmt: skip
    assert list((tmp_path / "detect" / "onnx").glob("*.jpg"))


def test_the_hub_entries_build_the_plain_models():
    import hubconf

    for cfg in PLAIN_FILES:
        model = getattr(hubconf, cfg.removesuffix(".yaml").replace("-", "_"))(classes=3, autoshape=False)
        assert model.yaml["yaml_file"] == cfg and model.nc == 3
