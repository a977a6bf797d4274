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
from models.blocks.common import batch_norm, make_activation
from models.blocks.dbb import BatchNormPad, DiverseBranchBlock
from models.errors import ModelConfigError
from models.reparam import (
    average_pool_kernel,
    compose_1x1_kxk,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel_center,
)
from models.yolo import Model
from tests.test_reparam import randomize_batch_norms


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


def test_pad_kernel_center_asymmetric():
    row, column = torch.randn(4, 2, 1, 3), torch.randn(4, 2, 3, 1)
    assert torch.equal(pad_kernel_center(row, 3)[:, :, 1, :], row[:, :, 0, :])
    assert torch.equal(pad_kernel_center(column, 3)[:, :, :, 1], column[:, :, :, 0])


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_average_pool_kernel_matches_avg_pool(groups):
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    kernel = average_pool_kernel(8, groups, 3, torch.float64)
    y = nn.functional.conv2d(x, kernel, stride=2, padding=1, groups=groups)
    torch.testing.assert_close(y, nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=True))


@pytest.mark.parametrize("groups, middle", [(1, 6), (2, 4), (4, 4)])
def test_compose_1x1_kxk_matches_the_two_convs_with_bn_valued_padding(groups, middle):
    """1x1 conv + BN (padded with its zero-input value) -> kxk conv + BN == one kxk conv."""
    torch.manual_seed(0)
    conv_1x1 = nn.Conv2d(4, middle, 1, groups=groups, bias=False).double()
    bn_pad = randomize_batch_norms(BatchNormPad(middle, 1)).double().eval()
    conv_kxk = nn.Conv2d(middle, 8, 3, 2, 0, groups=groups, bias=False).double()
    bn = randomize_batch_norms(batch_norm(8)).double().eval()
    x = torch.randn(2, 4, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        reference = bn(conv_kxk(bn_pad(conv_1x1(x))))
        first = fuse_conv_bn(conv_1x1.weight, bn_pad.bn)
        kernel, bias = compose_1x1_kxk(first, fuse_conv_bn(conv_kxk.weight, bn), groups)
        composed = nn.functional.conv2d(x, kernel, bias, stride=2, padding=1, groups=groups)
    torch.testing.assert_close(composed, reference, rtol=1e-12, atol=1e-12)


def test_dbb_needs_bn_valued_padding():
    """With plain zero padding after the BN'd 1x1 (as naive ports do) the fused DBB is measurably wrong."""
    torch.manual_seed(0)
    block = randomize_batch_norms(DiverseBranchBlock(4, 8)).double().eval()
    fused = DiverseBranchBlock(4, 8).double().eval()
    fused.load_state_dict(block.state_dict())
    fused.reparameterize()
    x = torch.randn(1, 4, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        exact = (block(x) - fused(x)).abs().max()
        block.branch_1x1_kxk.bn_pad.padding = block.branch_1x1_avg.bn_pad.padding = 0
        block.branch_1x1_kxk.second.padding = (1, 1)
        block.branch_1x1_avg.second.padding = 1
        zero_padded = (block(x) - fused(x)).abs().max()
    assert exact < 1e-10 < 1e-3 < zero_padded


def test_block_argument_of_wrong_type_names_the_yaml_row():
    config = Model("repyolov5n-mobileone.yaml").yaml
    config["backbone"][1][3] = [128, 3, 2, 1, "three"]
    with pytest.raises(ModelConfigError) as error:
        Model(config)
    message = str(error.value)
    assert "layer 1" in message and "'three'" in message and "MobileOneBlock's k" in message
    assert "fix this row of the YAML" in message and "\n" not in message
    config["backbone"][1][3] = [128, "3", 2]
    with pytest.raises(ModelConfigError, match=r"layer 1 .*MobileOneBlock's kernel_size must be a positive"):
        Model(config)
