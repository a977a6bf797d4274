"""Model graph from YAML: parameter counts, shapes, errors, deploy loading."""

import copy

import pytest
import torch
from torch import nn

from models.blocks import RepVGGBlock
from models.reparam import reparameterized_copy
from models.yolo import Model, count_gflops, count_parameters, main

# (training form, after Conv+BN fusion): the reference YOLOv5 v6+ numbers at nc=80.
PARAMETERS = {
    "n": (1_872_157, 1_867_405),
    "s": (7_235_389, 7_225_885),
    "m": (21_190_557, 21_172_173),
    "l": (46_563_709, 46_533_693),
    "x": (86_749_405, 86_705_005),
}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Model("repyolov5n.yaml", nc=3)


@pytest.mark.parametrize("size", list(PARAMETERS))
def test_parameter_counts_match_yolov5(size):
    with torch.device("meta"):  # shapes only: counts without allocating the large variants
        plain, rep = Model(f"yolov5{size}.yaml"), Model(f"repyolov5{size}.yaml")
        assert count_parameters(plain) == PARAMETERS[size][0]
        assert count_parameters(plain.reparameterize()) == PARAMETERS[size][1]
        assert count_parameters(rep.reparameterize()) == PARAMETERS[size][1]


@pytest.mark.parametrize("size", ["n", "s"])
@pytest.mark.parametrize("variant", ["acb", "dbb", "orepa", "mobileone", "qa"])
def test_fused_variant_has_the_parameter_count_of_fused_yolov5(size, variant):
    with torch.device("meta"):
        model = Model(f"repyolov5{size}-{variant}.yaml")
        assert count_parameters(model) > PARAMETERS[size][0]
        assert count_parameters(model.reparameterize()) == PARAMETERS[size][1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("variant", ["acb", "dbb", "orepa", "mobileone", "qa"])
def test_variant_deploy_model_loads_the_fused_state_dict_strictly(variant):
    torch.manual_seed(0)
    config = dict(Model(f"repyolov5n-{variant}.yaml").yaml, width_multiple=0.125, nc=2)
    fused = reparameterized_copy(Model(config)).eval()
    built = Model(config, deploy=True).eval()
    built.load_state_dict(fused.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(built(x), fused(x))


def test_repyolov5s_fused_has_no_batchnorm_or_branches():
    model = Model("repyolov5s.yaml").reparameterize()
    assert count_parameters(model) == 7_225_885
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 6 + 11  # 6 downsampling convs + 11 bottlenecks (C3 repeats 1,2,3,1 and 1,1,1,1)
    for block in blocks:
        assert block.deploy and not hasattr(block, "branch_1x1") and block.conv.kernel_size == (3, 3)


def test_yolov5s_gflops():
    model = Model("yolov5s.yaml")
    assert 16.3 < count_gflops(model, 640) < 16.7


def test_unknown_module_lists_known_names():
    config = copy.deepcopy(Model("yolov5n.yaml").yaml)
    config["backbone"][1][2] = "FancyConv"
    with pytest.raises(ValueError, match=r"layer 1 .*unknown module 'FancyConv'.*known modules: .*C3.*Conv"):
        Model(config)


def test_missing_cfg_names_known_files():
    with pytest.raises(FileNotFoundError, match="repyolov5s.yaml"):
        Model("does-not-exist.yaml")


def test_eval_and_train_outputs(tiny_model):
    x = torch.rand(2, 3, 64, 96)
    tiny_model.train()
    levels = tiny_model(x)
    assert [tuple(level.shape) for level in levels] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]
    tiny_model.eval()
    with torch.no_grad():
        predictions = tiny_model(x)
    assert predictions.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 8)
    assert (predictions[..., 4:] >= 0).all() and (predictions[..., 4:] <= 1).all()
    assert torch.equal(tiny_model.stride, torch.tensor([8.0, 16.0, 32.0]))


def test_detect_attributes(tiny_model):
    detect = tiny_model.detect
    assert detect is tiny_model.model[-1]
    assert (detect.nc, detect.na, detect.nl, detect.no) == (3, 3, 3, 8)
    assert detect.anchors.shape == (3, 3, 2) and detect.anchors[0, 0].tolist() == [10.0, 13.0]
    assert "model.24.anchors" in tiny_model.state_dict()
    assert tiny_model.names == ["class0", "class1", "class2"] and tiny_model.yaml["nc"] == 3


def test_reparameterize_idempotent_and_deploy_state_dict_loads_strictly(tiny_model):
    yaml_before = copy.deepcopy(tiny_model.yaml)
    fused = reparameterized_copy(tiny_model)
    state = copy.deepcopy(fused.state_dict())
    assert fused.reparameterize() is fused
    assert all(torch.equal(value, fused.state_dict()[key]) for key, value in state.items())
    assert fused.deploy and fused.yaml == yaml_before and not tiny_model.deploy
    built = Model(tiny_model.yaml, deploy=True)
    built.load_state_dict(fused.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(built.eval()(x), fused.eval()(x))


def test_leaky_activation():
    model = Model("repyolov5s-leaky.yaml", nc=2)
    activations = [m for m in model.modules() if isinstance(m, (nn.LeakyReLU, nn.SiLU))]
    assert activations and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in activations)


def test_summary_cli(capsys):
    main(["--cfg", "repyolov5n.yaml", "--img", "64", "--nc", "2"])
    output = capsys.readouterr().out
    assert "RepVGGBlock" in output and "After reparameterize()" in output and "0 BatchNorm" in output
