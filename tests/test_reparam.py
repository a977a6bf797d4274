"""Exactness of re-parameterization: fused == training form in eval mode, for every fusable block."""

import pytest
import torch
from torch import nn

from models.blocks import block_examples, fusable_blocks
from models.reparam import reparameterize_model, reparameterized_copy, verify
from models.yolo import Model

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
CASES = [
    (name, index) for name, cls in fusable_blocks().items() for index in range(len(block_examples(name)))
]


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
    block = fusable_blocks()[name](**kwargs).to(dtype)
    randomize_batch_norms(block, seed=index).eval()
    fused = reparameterized_copy(block)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, kwargs["in_channels"], 17, 23, dtype=dtype)
    max_abs, max_rel = verify(block, fused, x)
    assert max_rel < TOLERANCE[dtype], f"{name} {kwargs}: abs {max_abs:.3g} rel {max_rel:.3g}"


@pytest.mark.parametrize("name, index", CASES[:1] + [c for c in CASES if c[0] == "RepVGGBlock"][:1])
def test_deploy_constructor_matches_reparameterized_state_dict(name, index):
    kwargs = block_examples(name)[index]
    fused = reparameterized_copy(fusable_blocks()[name](**kwargs))
    built = fusable_blocks()[name](**kwargs, deploy=True)
    built.load_state_dict(fused.state_dict(), strict=True)


def test_reparameterize_is_idempotent_on_blocks():
    block = randomize_batch_norms(fusable_blocks()["RepVGGBlock"](8, 8)).eval()
    fused = reparameterized_copy(block)
    weight = fused.conv.weight.clone()
    reparameterize_model(fused)
    fused.reparameterize()
    assert torch.equal(fused.conv.weight, weight)


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
