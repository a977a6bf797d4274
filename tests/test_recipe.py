"""The training recipe of re-parameterized models: hyp rep_branch_gamma, the initial BN scale of the
RepVGG blocks' 1x1 and identity branches (0 by default, chosen by bench.accuracy; see bench/README.md)."""

from __future__ import annotations

import torch
import yaml

import train
from models.blocks.repvgg import RepVGGBlock
from tests.helpers import make_tiny_dataset
from utils.hyp import Hyp, load_hyp
from utils.train.options import TrainOptions
from utils.train.trainer import build_model


def side_scales(model) -> list[float]:
    blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
    assert blocks
    return [float(b.branch_1x1.bn.weight.detach().abs().max()) for b in blocks]


def test_a_model_from_scratch_starts_its_side_branches_at_rep_branch_gamma():
    options = TrainOptions(cfg="repyolov5n.yaml")
    assert set(
        side_scales(build_model(options, 3, ["a", "b", "c"], None, hyp=Hyp(rep_branch_gamma=0.0)))
    ) == {0.0}
    assert set(
        side_scales(build_model(options, 3, ["a", "b", "c"], None, hyp=Hyp(rep_branch_gamma=0.5)))
    ) == {0.5}
    model = build_model(options, 3, ["a", "b", "c"], None, hyp=Hyp(rep_branch_gamma=0.0))
    identities = [m.branch_identity for m in model.modules() if isinstance(m, RepVGGBlock) and m.has_identity]
    assert all(float(bn.weight.detach().abs().max()) == 0 for bn in identities)
    assert all(float(m.branch_kxk.bn.weight.detach().min()) == 1 for m in model.modules()
               if isinstance(m, RepVGGBlock))  # fmt: skip


def test_the_default_and_the_bundled_hyp_files_start_the_side_branches_at_zero():
    assert Hyp().rep_branch_gamma == 0.0
    for name in ("hyp.shapes.yaml", "hyp.scratch-low.yaml"):
        assert load_hyp(name).rep_branch_gamma == 0.0


def test_a_run_with_zero_side_branches_trains_them(tmp_path):
    torch.set_num_threads(1)
    data_yaml, _ = make_tiny_dataset(tmp_path)
    summary = train.run(cfg="repyolov5n.yaml", data=str(data_yaml), epochs=1, img_size=64, batch_size=4,
                        device="cpu", workers=0, project=str(tmp_path), name="g0", plots=False,
                        tensorboard=False, repeat=1)  # fmt: skip
    assert summary["finished"]
    assert yaml.safe_load((tmp_path / "g0" / "hyp.yaml").read_text())["rep_branch_gamma"] == 0.0
    trained = torch.load(tmp_path / "g0" / "weights" / "last.pt", weights_only=True)["model"]
    scales = [value for key, value in trained.items() if key.endswith("branch_1x1.bn.weight")]
    assert scales and any(float(value.abs().max()) > 0 for value in scales)  # they grew from zero
