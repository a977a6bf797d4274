"""The recipe levers of re-parameterized training: hyp rep_l2 (RepVGG's custom L2: weight decay on the
equivalent fused kernel of each RepVGG block instead of on each branch kernel) and rep_branch_gamma."""

from __future__ import annotations

import torch

from models.blocks.repvgg import RepVGGBlock
from models.yolo import Model
from utils.paths import ROOT
from utils.train.optim import build_optimizer, equivalent_kernel_penalty


def randomized_block(seed: int = 0) -> RepVGGBlock:
    torch.manual_seed(seed)
    block = RepVGGBlock(4, 6, 3, 1)
    for bn in (block.branch_kxk.bn, block.branch_1x1.bn):
        bn.weight.data.uniform_(0.5, 2)
        bn.running_var.uniform_(0.5, 2)
    return block


def test_the_penalty_is_plain_l2_when_the_1x1_branch_is_scaled_to_zero():
    block = randomized_block()
    block.branch_1x1.bn.weight.data.zero_()
    parameters, penalty = block.equivalent_kernel_l2()
    assert parameters[0] is block.branch_kxk.conv.weight and parameters[1] is block.branch_1x1.conv.weight
    torch.testing.assert_close(penalty, (block.branch_kxk.conv.weight**2).sum())


def test_the_penalty_is_the_normalized_l2_of_the_equivalent_kernel():
    block = randomized_block(1)
    kxk, one = block.branch_kxk.conv.weight.detach(), block.branch_1x1.conv.weight.detach()
    t3 = (block.branch_kxk.bn.weight / (block.branch_kxk.bn.running_var + 1e-3).sqrt()).detach()
    t1 = (block.branch_1x1.bn.weight / (block.branch_1x1.bn.running_var + 1e-3).sqrt()).detach()
    expected = 0.0
    for o in range(6):
        for i in range(4):
            for h in range(3):
                for w in range(3):
                    if (h, w) == (1, 1):
                        centre = kxk[o, i, 1, 1] * t3[o] + one[o, i, 0, 0] * t1[o]
                        expected += centre**2 / (t3[o] ** 2 + t1[o] ** 2)
                    else:
                        expected += kxk[o, i, h, w] ** 2
    assert block.branch_kxk.bn.eps == 1e-3
    torch.testing.assert_close(block.equivalent_kernel_l2()[1].detach(), torch.as_tensor(expected))


def test_branch_kernels_leave_the_decayed_group_and_get_the_penalty_instead():
    model = Model("repyolov5n.yaml", nc=3)
    undecayed, penalty = equivalent_kernel_penalty(model)
    optimizer = build_optimizer(model, weight_decay=5e-4, undecayed=undecayed)
    decayed = {id(p) for p in optimizer.param_groups[1]["params"]}
    assert undecayed and not (undecayed & decayed)
    assert undecayed <= {id(p) for p in optimizer.param_groups[2]["params"]}
    parameters, value = penalty()
    assert {id(p) for p in parameters} == undecayed
    value.backward()
    assert all(p.grad is not None for p in parameters)
    assert equivalent_kernel_penalty(Model("yolov5n.yaml", nc=3)) is None  # no RepVGG block: plain decay


def test_a_run_with_rep_l2_trains_and_records_it(tmp_path):
    import yaml

    import train
    from tests.helpers import make_tiny_dataset

    torch.set_num_threads(1)
    data_yaml, _ = make_tiny_dataset(tmp_path)
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.shapes.yaml").read_text()) | {"rep_l2": 1.0}
    (tmp_path / "hyp.yaml").write_text(yaml.safe_dump(hyp))
    summary = train.run(cfg="repyolov5n.yaml", data=str(data_yaml), hyp=str(tmp_path / "hyp.yaml"), epochs=1,
                        img_size=64, batch_size=4, device="cpu", workers=0, project=str(tmp_path), name="l2",
                        plots=False, tensorboard=False)  # fmt: skip
    assert summary["finished"]
    assert yaml.safe_load((tmp_path / "l2" / "hyp.yaml").read_text())["rep_l2"] == 1.0


def test_rep_branch_gamma_starts_the_side_branches_at_that_scale():
    from utils.hyp import Hyp
    from utils.train.options import TrainOptions
    from utils.train.trainer import build_model

    options = TrainOptions(cfg="repyolov5n.yaml")
    model = build_model(options, 3, ["a", "b", "c"], None, branch_gamma=0.0)
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert blocks and all(float(b.branch_1x1.bn.weight.detach().abs().max()) == 0 for b in blocks)
    assert all(float(b.branch_kxk.bn.weight.detach().min()) == 1 for b in blocks)
    assert Hyp().rep_branch_gamma == 1.0  # the default leaves PyTorch's initialization alone
