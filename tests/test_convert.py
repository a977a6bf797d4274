"""convert.py: fuse + verify + save, refusal on a bad fusion, no-op on fused input, the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import convert
from tests.helpers import NAMES, write_images, write_tiny_checkpoint
from utils.checkpoint import load_checkpoint, load_model


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "best.pt")


def test_convert_saves_fused_checkpoint_beside_input(checkpoint: Path, capsys):
    report = convert.run(checkpoint, img_size=64, runs=1)
    output = checkpoint.with_name("best_fused.pt")
    assert report["output"] == str(output) and output.is_file()
    ckpt = load_checkpoint(output)
    assert ckpt["deploy"] is True and ckpt["names"] == NAMES
    fused, _ = load_model(output)
    assert fused.deploy and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    trained, _ = load_model(checkpoint)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), trained(x), rtol=1e-4, atol=1e-3)

    assert report["max_rel_error"] <= 1e-5
    before, after = report["before"], report["after"]
    repvgg_before, repvgg_after = before["blocks"]["RepVGGBlock"], after["blocks"]["RepVGGBlock"]
    assert after["bn"] == 0 and repvgg_after["multi_branch"] == 0 and before["bn"] > 0
    assert repvgg_before["multi_branch"] > 0 and repvgg_after["fused"] == repvgg_before["multi_branch"]
    assert after["parameters"] < before["parameters"] and after["conv"] < before["conv"]
    assert after["gflops"] < before["gflops"]
    assert report["latency_ratio"] > 0 and "random input" in report["input"]
    printed = capsys.readouterr().out
    for field in (
        "parameters",
        "GFLOPs",
        "BatchNorm",
        "RepVGG",
        "latency",
        "max abs error",
        "training-form / fused",
    ):
        assert field in printed


@pytest.mark.parametrize("variant, label", [("dbb", "DiverseBranch"), ("orepa", "OREPA")])
def test_convert_report_names_the_block_kinds_it_fused(tmp_path: Path, capsys, variant, label):
    checkpoint = write_tiny_checkpoint(tmp_path / "best.pt", cfg=f"repyolov5n-{variant}.yaml")
    report = convert.run(checkpoint, img_size=64, runs=1)
    before, after = report["before"], report["after"]
    assert report["max_rel_error"] <= 1e-5
    name = f"{label}Block"
    # 17 multi-branch blocks of that kind, all fused after, and no RepVGG block before or after
    assert before["blocks"] == {name: {"multi_branch": 17, "fused": 0}}
    assert after["blocks"] == {name: {"multi_branch": 0, "fused": 17}}
    assert f"{label} multi-branch" in capsys.readouterr().out


def test_convert_custom_output_and_real_images(tmp_path: Path):
    images = tmp_path / "val" / "images"
    write_images(images, count=2)
    checkpoint = write_tiny_checkpoint(
        tmp_path / "last.pt", data={"val": [str(images)], "nc": 3, "names": NAMES}
    )
    output = tmp_path / "out" / "deploy.pt"
    report = convert.run(checkpoint, output=output, img_size=64, runs=1)
    assert output.is_file() and not (tmp_path / "last_fused.pt").exists()
    assert report["input"].startswith("2 validation images")


def test_convert_refuses_large_error(checkpoint: Path, monkeypatch, capsys):
    import models.reparam

    monkeypatch.setattr(models.reparam, "verify", lambda a, b, x: (0.5, 2e-3))
    with pytest.raises(convert.ConversionError, match="relative error 0.002"):
        convert.run(checkpoint, img_size=64, runs=1)
    assert not checkpoint.with_name("best_fused.pt").exists()
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--weights", str(checkpoint), "--img", "64", "--runs", "1"])
    assert exit_info.value.code == 2
    assert "not saved" in capsys.readouterr().err and not checkpoint.with_name("best_fused.pt").exists()


def test_convert_already_fused_is_noop(checkpoint: Path, capsys):
    convert.run(checkpoint, img_size=64, runs=1)
    fused = checkpoint.with_name("best_fused.pt")
    before = sorted(p.name for p in checkpoint.parent.iterdir())
    convert.main(["--weights", str(fused), "--img", "64"])  # returns normally: exit status 0
    assert "already fused" in capsys.readouterr().err
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == before


def test_convert_missing_file_is_one_sentence(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--weights", str(tmp_path / "nope.pt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "Traceback" not in err
