"""Growing a plain network into a re-parameterized one keeps its function exactly: every registered block
through its own grow_from_plain, whole models through models/grow.py, before and after fusion."""

from __future__ import annotations

import copy

import pytest
import torch

from models.blocks import BLOCKS, Conv, QARepVGGBlock, ReparamBlock, block_examples
from models.grow import transfer_weights
from models.yolo import Model, load_model_yaml
from tests.helpers import tiny_model, write_tiny_checkpoint
from utils.checkpoint import load_model

GROWABLE = sorted(
    name for name, cls in BLOCKS.items() if isinstance(cls, type) and issubclass(cls, ReparamBlock)
)
VARIANTS = ("", "-acb", "-dbb", "-orepa", "-mobileone", "-qa")


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and BN statistic away from its initial value, so that a branch left on shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.copy_(values + 0.5 if name.endswith("running_var") else values - 0.5)
    return module


def exactness(reference, candidate, x) -> float:
    expected, actual = reference(x), candidate(x)
    if isinstance(expected, list):
        expected, actual = (
            torch.cat([e.flatten() for e in expected]),
            torch.cat([a.flatten() for a in actual]),
        )
    return ((expected - actual).abs().max() / expected.abs().max()).item()


def train_mode_exact(block: ReparamBlock) -> bool:
    """QARepVGG's kxk branch has a BN of its own before the block's BN: grown, it is the identity with its
    running statistics only, so in training mode (batch statistics) the grown block differs a little."""
    return not isinstance(block, QARepVGGBlock)


def test_every_registered_block_has_its_own_growth():
    assert GROWABLE == ["ACBlock", "DiverseBranchBlock", "MobileOneBlock", "OREPABlock", "QARepVGGBlock",
                        "RepVGGBlock"]  # fmt: skip
    for name in GROWABLE:
        assert BLOCKS[name].grow_from_plain is not ReparamBlock.grow_from_plain, name


@pytest.mark.parametrize("name", GROWABLE)
def test_a_grown_block_computes_the_plain_conv(name):
    for index, example in enumerate(block_examples(name)):
        block = randomize(BLOCKS[name](**example).double(), seed=index)
        geometry = (example["in_channels"], example["out_channels"], example.get("kernel_size", 3))
        plain = randomize(
            Conv(*geometry, example["stride"], groups=example.get("groups", 1)).double(), index + 1
        )
        block.check_plain(plain)
        block.grow_from_plain(plain)
        x = torch.randn(2, example["in_channels"], 9, 11, dtype=torch.float64)
        assert exactness(plain.eval(), block.eval(), x) < 1e-10, example
        if train_mode_exact(block):
            assert exactness(copy.deepcopy(plain).train(), copy.deepcopy(block).train(), x) < 1e-10, example
        assert exactness(plain, block.reparameterize(), x) < 1e-10, example


@pytest.mark.parametrize("name", GROWABLE)
def test_a_conv_of_another_geometry_is_refused(name):
    example = block_examples(name)[0]
    block = BLOCKS[name](**example)
    wrong = Conv(example["in_channels"], example["out_channels"] + 2, 3, example["stride"])
    with pytest.raises(ValueError, match="does not fit"):
        block.check_plain(wrong)


def tiny_config(cfg: str) -> dict:
    return dict(load_model_yaml(cfg)[0], width_multiple=0.125, nc=3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_whole_model_grown_from_plain_weights_is_the_same_function(variant):
    plain = tiny_model(cfg="yolov5n.yaml").double()
    grown = Model(tiny_config(f"repyolov5n{variant}.yaml")).double()
    report = transfer_weights(plain, grown)
    assert report.grown > 0 and report.fraction == 1.0 and not report.not_transferred
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        assert exactness(plain.eval(), grown.eval(), x) < 1e-10
        if all(train_mode_exact(m) for m in grown.modules() if isinstance(m, ReparamBlock)):
            assert exactness(copy.deepcopy(plain).train(), copy.deepcopy(grown).train(), x) < 1e-10
        assert exactness(plain.eval(), grown.reparameterize().eval(), x) < 1e-9  # fusion rounds a little


def test_our_own_plain_checkpoint_grows_too(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "plain.pt", cfg="yolov5n.yaml")
    plain, _ = load_model(path)
    grown, _ = load_model(path, cfg=dict(load_model_yaml("repyolov5n-dbb.yaml")[0], width_multiple=0.125))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert exactness(plain, grown, x) < 1e-5
    assert any(type(m).__name__ == "DiverseBranchBlock" for m in grown.modules())


def test_a_new_head_is_reported_and_initialized_as_from_scratch():
    plain = tiny_model(cfg="yolov5n.yaml")  # 3 classes
    grown = Model(dict(tiny_config("repyolov5n.yaml"), nc=5))
    fresh_bias = grown.detect.level_convs[0].bias.clone()
    report = transfer_weights(plain, grown)
    assert report.not_transferred == [f"model.24.level_convs.{i}" for i in range(3)]
    assert report.initialized == 6 and 0.9 < report.fraction < 1.0
    assert torch.equal(grown.detect.level_convs[0].bias, fresh_bias)  # yolov5's prior biases kept
    assert "level_convs.0: weight is [24, 32, 1, 1] in the weights but [30, 32, 1, 1]" in report.mismatches[0]
