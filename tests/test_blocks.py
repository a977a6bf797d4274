"""Blocks, the registry and the YAML channel arithmetic."""

import pytest
import torch
from torch import nn

from models.blocks import (
    BLOCKS,
    C3,
    BuildContext,
    Conv,
    RepVGGBlock,
    Upsample,
    fusable_blocks,
    make_divisible,
)
from models.blocks.common import make_activation
from models.reparam import identity_kernel, pad_kernel_center


def test_registry_names_match_classes():
    for name, cls in BLOCKS.items():
        assert cls.__name__ == name
        assert callable(getattr(cls, "from_yaml", None)), f"{name} cannot be built from YAML"


def test_every_block_with_reparameterize_has_examples():
    for name, cls in BLOCKS.items():
        if callable(getattr(cls, "reparameterize", None)):
            assert name in fusable_blocks() and cls.example_configs(), f"{name} needs example_configs()"


def test_make_divisible_rounds_up_to_8():
    assert make_divisible(64 * 0.25) == 16
    assert make_divisible(1024 * 0.75) == 768
    assert make_divisible(100 * 0.33) == 40


def test_conv_from_yaml_scales_width():
    context = BuildContext(width_multiple=0.5, registry=BLOCKS)
    module, out_channels = Conv.from_yaml([3], [64, 6, 2, 2], 1, context)
    assert out_channels == 32
    assert module(torch.zeros(1, 3, 64, 64)).shape == (1, 32, 32, 32)


def test_stacked_repeats_and_repeats_as_argument():
    context = BuildContext(width_multiple=1.0, registry=BLOCKS)
    stacked, _ = RepVGGBlock.from_yaml([8], [16, 3, 1], 3, context)
    assert isinstance(stacked, nn.Sequential) and len(stacked) == 3
    c3, out_channels = C3.from_yaml([8], [16, False, "RepVGGBlock"], 2, context)
    assert out_channels == 16 and len(c3.bottlenecks) == 2
    assert isinstance(c3.bottlenecks[0].spatial, RepVGGBlock) and not c3.bottlenecks[0].add


def test_c3_unknown_block_name_lists_known_names():
    context = BuildContext(registry=BLOCKS)
    with pytest.raises(ValueError, match="known modules: .*RepVGGBlock"):
        C3.from_yaml([8], [16, True, "Nope"], 1, context)


def test_upsample_accepts_yaml_none_string():
    module, channels = Upsample.from_yaml([8], ["None", 2, "nearest"], 1, BuildContext())
    assert channels == 8
    assert module(torch.zeros(1, 8, 5, 7)).shape == (1, 8, 10, 14)


def test_activations():
    assert isinstance(make_activation("SiLU"), nn.SiLU)
    leaky = make_activation("LeakyReLU")
    assert isinstance(leaky, nn.LeakyReLU) and leaky.negative_slope == 0.1
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("Swish2")


@pytest.mark.parametrize(
    "in_channels, out_channels, stride, has_identity", [(8, 8, 1, True), (8, 8, 2, False), (4, 8, 1, False)]
)
def test_repvgg_branches(in_channels, out_channels, stride, has_identity):
    block = RepVGGBlock(in_channels, out_channels, stride=stride)
    assert (block.branch_identity is not None) == has_identity
    assert block.branch_1x1.conv.kernel_size == (1, 1)
    deploy = RepVGGBlock(in_channels, out_channels, stride=stride, deploy=True)
    assert set(deploy.state_dict()) == {"conv.weight", "conv.bias"}


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_identity_kernel_copies_input(groups):
    x = torch.randn(2, 8, 9, 11)
    kernel = identity_kernel(8, groups, 3)
    assert kernel.shape == (8, 8 // groups, 3, 3)
    y = nn.functional.conv2d(x, kernel, padding=1, groups=groups)
    torch.testing.assert_close(y, x)


def test_pad_kernel_center():
    kernel = torch.randn(4, 2, 1, 1)
    padded = pad_kernel_center(kernel, 3)
    assert padded.shape == (4, 2, 3, 3)
    assert torch.equal(padded[:, :, 1, 1], kernel[:, :, 0, 0])
    padded[:, :, 1, 1] = 0
    assert not padded.any()
