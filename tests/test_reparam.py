"""Exactness of re-parameterization: fused == training form in eval mode, for every fusable block."""

import pytest
import torch
from torch import nn

from models.blocks import BLOCKS, ReparamBlock, block_examples, fusable_blocks
from models.reparam import reparameterize_model, reparameterized_copy, verify
from models.yolo import Model

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
CASES = [
    (name, index) for name, cls in fusable_blocks().items() for index in range(len(block_examples(name)))
]
REPARAM_BLOCKS = sorted(name for name, cls in BLOCKS.items() if issubclass(cls, ReparamBlock))
VARIANTS = ("acb", "dbb", "orepa", "mobileone", "qa")


def perturb_parameters(module: nn.Module, seed: int = 0, spread: float = 0.5) -> nn.Module:
    """Add noise to every parameter, so that identity-initialized kernels and OREPA's per-channel branch
    scales (all equal at initialization) are as arbitrary as trained ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            noise = torch.randn(parameter.shape, generator=generator).to(parameter)
            parameter.add_(noise * spread)
    return module


def randomize_batch_norms(model: nn.Module, seed: int = 0, keep_scale: bool = False) -> nn.Module:
    """Spread BN statistics and affine parameters over a wide range so that fusion errors would show.

    keep_scale ties |gamma| to sqrt(running_var) so a deep model's activations stay O(1) instead of
    exploding into saturated sigmoids (which would hide errors); mean, var and beta still span wide ranges.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.running_mean.shape
                rand = lambda: torch.rand(shape, generator=generator).to(module.running_mean)
                module.running_mean.copy_((rand() - 0.5) * 6)
                module.running_var.copy_(10 ** (rand() * 4 - 2))  # 0.01 .. 100
                gain = (module.running_var + module.eps).sqrt() * 0.5 if keep_scale else 1.0
                module.weight.copy_((rand() * 2.9 + 0.1) * torch.sign(rand() - 0.3) * gain)
                module.bias.copy_((rand() - 0.5) * 4)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, index", CASES, ids=[f"{name}-{index}" for name, index in CASES])
def test_block_fusion_is_exact(name, index, dtype):
    torch.manual_seed(index)
    kwargs = block_examples(name)[index]
    block = perturb_parameters(fusable_blocks()[name](**kwargs).to(dtype), seed=index)
    randomize_batch_norms(block, seed=index).eval()
    fused = reparameterized_copy(block)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, kwargs["in_channels"], 17, 23, dtype=dtype)
    max_abs, max_rel = verify(block, fused, x)
    assert max_rel < TOLERANCE[dtype], f"{name} {kwargs}: abs {max_abs:.3g} rel {max_rel:.3g}"


@pytest.mark.parametrize("name", REPARAM_BLOCKS)
def test_deploy_constructor_matches_reparameterized_state_dict(name):
    for kwargs in block_examples(name):
        fused = reparameterized_copy(fusable_blocks()[name](**kwargs))
        built = fusable_blocks()[name](**kwargs, deploy=True)
        built.load_state_dict(fused.state_dict(), strict=True)


@pytest.mark.parametrize("name", REPARAM_BLOCKS)
def test_block_built_with_deploy_runs(name):
    """YOLOv6's QARepVGGBlock raises when built with deploy=True; every block here builds and runs."""
    for kwargs in block_examples(name):
        built = fusable_blocks()[name](**kwargs, deploy=True).eval()
        assert set(built.state_dict()) == {"conv.weight", "conv.bias"}
        x = torch.randn(1, kwargs["in_channels"], 9, 11)
        stride = kwargs.get("stride", 1)
        assert built(x).shape == (1, kwargs["out_channels"], (9 - 1) // stride + 1, (11 - 1) // stride + 1)
        assert built.reparameterize() is built and built.deploy


@pytest.mark.parametrize("name", REPARAM_BLOCKS)
def test_reparameterize_twice_is_a_no_op(name):
    """OREPA's reference crashes on a second call; here the second call changes nothing."""
    kwargs = block_examples(name)[0]
    block = randomize_batch_norms(perturb_parameters(fusable_blocks()[name](**kwargs))).eval()
    block.reparameterize()
    state = {key: value.clone() for key, value in block.state_dict().items()}
    block.reparameterize()
    reparameterize_model(block)
    assert block.state_dict().keys() == state.keys()
    assert all(torch.equal(value, block.state_dict()[key]) for key, value in state.items())


@pytest.mark.parametrize("name", ["RepVGGBlock", "QARepVGGBlock", "MobileOneBlock"])
@pytest.mark.parametrize("groups", [2, 8], ids=["groups2", "depthwise"])
def test_identity_branch_with_groups_is_exact(name, groups):
    """yolov7's RepConv fuse builds the identity kernel as if groups were 1; grouped and depthwise here."""
    block = fusable_blocks()[name](8, 8, 3, 1, groups).double()
    randomize_batch_norms(perturb_parameters(block)).eval()
    assert block.has_identity
    fused = reparameterized_copy(block)
    _, max_rel = verify(block, fused, torch.randn(2, 8, 13, 15, dtype=torch.float64))
    assert max_rel < TOLERANCE[torch.float64]


@pytest.mark.parametrize("name", REPARAM_BLOCKS)
def test_fusing_a_block_in_training_mode_is_exact_in_eval(name):
    """Fusion reads the running statistics, never the batch's: a block fused while still in training mode
    (after training steps moved its statistics) equals its eval-mode training form."""
    kwargs = block_examples(name)[1]
    block = perturb_parameters(fusable_blocks()[name](**kwargs)).double().train()
    for _ in range(3):
        block(torch.randn(4, kwargs["in_channels"], 11, 13, dtype=torch.float64) * 3 + 1)
    fused = reparameterized_copy(block)
    assert block.training
    _, max_rel = verify(block, fused, torch.randn(2, kwargs["in_channels"], 11, 13, dtype=torch.float64))
    assert max_rel < TOLERANCE[torch.float64]


@pytest.mark.parametrize(
    "cfg, dtype",
    [
        ("repyolov5s.yaml", torch.float32),
        ("repyolov5n.yaml", torch.float64),
        ("repyolov5s-leaky.yaml", torch.float32),
    ],
)
def test_whole_model_fusion_is_exact(cfg, dtype):
    torch.manual_seed(0)
    model = randomize_batch_norms(Model(cfg, nc=5), keep_scale=True).to(dtype).eval()
    fused = reparameterized_copy(model)
    assert fused.deploy and not model.deploy
    x = torch.rand(1, 3, 64, 96, dtype=dtype)
    max_abs, max_rel = verify(model, fused, x)
    assert max_rel < TOLERANCE[dtype], f"{cfg}: decoded abs {max_abs:.3g} rel {max_rel:.3g}"
    reference, candidate = raw_outputs(model, x), raw_outputs(fused, x)
    assert reference.std() > 0.1, "outputs degenerate: the comparison would prove nothing"
    max_rel_raw = ((reference - candidate).abs().max() / reference.abs().max()).item()
    assert max_rel_raw < TOLERANCE[dtype], f"{cfg}: raw rel {max_rel_raw:.3g}"


def raw_outputs(model: Model, x: torch.Tensor) -> torch.Tensor:
    """Pre-sigmoid head outputs with every BatchNorm in eval mode, flattened."""
    model.eval()
    model.detect.train()
    with torch.no_grad():
        outputs = torch.cat([level.flatten() for level in model(x)])
    model.eval()
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_whole_variant_model_fusion_is_exact(variant, dtype):
    torch.manual_seed(0)
    model = Model(f"repyolov5s-{variant}.yaml", nc=5).to(dtype)
    model = randomize_batch_norms(perturb_parameters(model, spread=0.01), keep_scale=True).eval()
    fused = reparameterized_copy(model)
    x = torch.rand(1, 3, 64, 64, dtype=dtype)
    max_abs, max_rel = verify(model, fused, x)
    assert max_rel < TOLERANCE[dtype], f"{variant}: decoded abs {max_abs:.3g} rel {max_rel:.3g}"
    reference, candidate = raw_outputs(model, x), raw_outputs(fused, x)
    assert reference.std() > 0.1, "outputs degenerate: the comparison would prove nothing"
    max_rel_raw = ((reference - candidate).abs().max() / reference.abs().max()).item()
    assert max_rel_raw < TOLERANCE[dtype], f"{variant}: raw rel {max_rel_raw:.3g}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_fusing_a_model_in_training_mode_is_exact_in_eval(variant):
    torch.manual_seed(0)
    model = Model(f"repyolov5n-{variant}.yaml", nc=3).double().train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 64, 64, dtype=torch.float64))  # moves the running statistics
    fused = reparameterized_copy(model)
    assert model.training and fused.deploy
    _, max_rel = verify(model, fused, torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert max_rel < TOLERANCE[torch.float64]
