"""convert.py: fuse + verify + save, refusal on a bad fusion, no-op on fused input, the report."""

from __future__ import annotations

import importlib.util
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


# --- staged exports: written under a temporary name, checked there, then published -------------------


EARLIER = b"an earlier export, of another model"


def hidden_leftovers(folder: Path) -> list[str]:
    """What a conversion left under a temporary name (utils.deploy.staging's .<stem>.<hex>.tmp...)."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_a_refused_onnx_graph_leaves_nothing_under_its_name_and_the_error_names_what_was_not_written(
    checkpoint: Path, monkeypatch, capsys
):
    from utils.deploy.formats import REGISTRY

    def refuse(model, written, images, name, inputs):
        assert written.path.is_file() and written.path.parent == name.parent
        assert not name.exists() or name.read_bytes() == EARLIER, "the new graph is not published yet"
        raise convert.ConversionError(f"onnxruntime output of {name} differs from PyTorch (injected).")

    monkeypatch.setattr(REGISTRY["onnx"], "check", refuse)
    onnx_path = checkpoint.with_name("best_fused.onnx")
    onnx_path.write_bytes(EARLIER)
    with pytest.raises(convert.ConversionError) as error:
        convert.run(checkpoint, img_size=64, runs=1, onnx=True, torchscript=True)
    message = str(error.value)
    assert message.startswith(f"onnxruntime output of {onnx_path} differs from PyTorch (injected)")
    assert message.endswith("; not written: ONNX best_fused.onnx, TorchScript best_fused.torchscript.")
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["best.pt", "best_fused.pt"]
    assert load_checkpoint(checkpoint.with_name("best_fused.pt"))["deploy"] is True  # published before

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # the script: that one sentence, no traceback
        convert.main(["--weights", str(checkpoint.with_name("best_fused.pt")), "--img", "64", "--onnx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not written: ONNX best_fused.onnx." in err and "Traceback" not in err
    assert hidden_leftovers(checkpoint.parent) == []


def test_a_refused_edge_artefact_keeps_the_published_onnx_and_leaves_nothing_under_its_own_name(
    checkpoint: Path, monkeypatch
):
    from utils.deploy.backend import load_inference_model
    from utils.deploy.formats import REGISTRY

    def refuse(model, written, images, final, inputs):
        assert written.path.is_file() and final.read_bytes() == EARLIER
        assert load_inference_model(written.path).kind == "torchscript", "loadable under its temporary name"
        raise convert.ConversionError(f"{final} differs from PyTorch (injected).")

    monkeypatch.setattr(REGISTRY["torchscript"], "check", refuse)
    torchscript = checkpoint.with_name("best_fused.torchscript")
    torchscript.write_bytes(EARLIER)
    with pytest.raises(convert.ConversionError) as error:
        convert.run(checkpoint, img_size=64, runs=1, onnx=True, torchscript=True)
    assert str(error.value) == (
        f"{torchscript} differs from PyTorch (injected); not written: TorchScript best_fused.torchscript."
    )
    assert not torchscript.exists() and hidden_leftovers(checkpoint.parent) == []
    published = checkpoint.with_name("best_fused.onnx")
    assert load_inference_model(published).kind == "onnx"
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [
        "best.pt",
        "best_fused.onnx",
        "best_fused.pt",
    ]


def test_a_refused_openvino_ir_leaves_no_folder_and_a_passed_one_loads_under_its_final_name(
    checkpoint: Path, monkeypatch
):
    """A folder artefact: checked as a temporary folder holding the final file names, so the .xml finds its
    .bin there and again after the rename; a refused one leaves no folder."""
    pytest.importorskip("openvino", reason="--openvino needs openvino (requirements-deploy.txt)")
    from utils.deploy.backend import load_inference_model
    from utils.deploy.formats import REGISTRY

    convert.run(checkpoint, img_size=64, runs=1, openvino=True)
    folder = checkpoint.with_name("best_fused_openvino_model")
    assert sorted(p.name for p in folder.iterdir()) == ["best_fused.bin", "best_fused.xml", "metadata.yaml"]
    assert load_inference_model(folder).kind == "openvino" and hidden_leftovers(checkpoint.parent) == []

    real = REGISTRY["openvino"].check

    def refuse(model, written, images, name, inputs):
        staged = written.path
        assert staged.is_dir() and (staged / "best_fused.xml").is_file() and staged.parent == folder.parent
        real(model, written, images, name, inputs)  # it loads under the temporary name
        raise convert.ConversionError(f"{name} differs from PyTorch (injected).")

    monkeypatch.setattr(REGISTRY["openvino"], "check", refuse)
    fused = checkpoint.with_name("best_fused.pt")
    with pytest.raises(
        convert.ConversionError, match=r"not written: OpenVINO IR best_fused_openvino_model\.$"
    ):
        convert.run(fused, img_size=64, runs=1, openvino=True)
    assert not folder.exists() and checkpoint.with_name("best_fused.onnx").is_file()
    assert hidden_leftovers(checkpoint.parent) == []


def test_a_staged_folder_replaces_an_earlier_one_whole(tmp_path: Path):
    from utils.deploy.staging import Release

    final = tmp_path / "best_fused_ncnn_model"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"earlier")
    release = Release({final: "NCNN"})
    with release.staged(final) as staged:
        assert staged.parent == tmp_path and staged.name.startswith(".") and not staged.exists()
        staged.mkdir()
        (staged / "model.ncnn.param").write_text("7767517\n")
        assert (final / "stale.bin").is_file(), "the earlier folder stays until the new one is published"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_fused_ncnn_model"]
    assert sorted(p.name for p in final.iterdir()) == ["model.ncnn.param"]
    assert release.published == [final] and release.unwritten() == []


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])  # fmt: skip
def test_exports_leave_the_callers_model_as_they_found_it(checkpoint: Path, monkeypatch, device: str):
    """The exporters convert a float32 CPU copy: the fused model convert.py checks every artefact against
    keeps its device, dtype, values and modes (a float64 buffer shows a .float(), a module left in
    training mode an .eval())."""
    real_fuse, seen = convert.fuse, {}

    def fuse(ckpt, img_size, device):
        result = real_fuse(ckpt, img_size, device)
        model = result.fused
        model.register_buffer(
            "probe", torch.linspace(0, 1, 5, dtype=torch.float64, device=model.stride.device)
        )
        model.model[0].training = True  # a fused Conv has no BatchNorm: its mode changes nothing it computes
        seen["model"] = model
        seen["state"] = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        seen["modes"] = {name: module.training for name, module in model.named_modules()}
        return result

    monkeypatch.setattr(convert, "fuse", fuse)
    flags = {"onnx": True, "torchscript": True}  # and the folder formats where they are installed
    flags["openvino"] = importlib.util.find_spec("openvino") is not None
    flags["ncnn"] = not convert.REGISTRY["ncnn"].missing()
    report = convert.run(checkpoint, img_size=64, runs=1, device=device, **flags)
    assert report["checks"] and report["onnx"]
    model, before = seen["model"], seen["state"]
    after = model.state_dict()
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert (after[name].device, after[name].dtype) == (tensor.device, tensor.dtype), name
        assert torch.equal(after[name], tensor), name
    assert {name: module.training for name, module in model.named_modules()} == seen["modes"]
    assert model.stride.device.type == device
