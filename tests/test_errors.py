"""A user's mistake ends in one sentence naming the file or value and the fix, and exit status 2; the
library raises typed errors (utils.errors) and never ends the process itself."""

from __future__ import annotations

import ast

import pytest

import convert
import detect
import train
import val
from tests.helpers import write_images, write_tiny_checkpoint
from utils.paths import ROOT


def one_sentence(capsys, exit_info, *expected: str) -> str:
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert "Traceback" not in err and all(text in last for text in expected), err
    return last


def test_train_user_errors_are_one_sentence(tiny_dataset_and_bad_checkpoints, capsys):
    root, data_yaml, model_yaml, corrupt, foreign = tiny_dataset_and_bad_checkpoints
    common = ["--project", str(root / "runs"), "--img", "64", "--epochs", "1", "--repeat", "1"]
    cases = [
        (
            ["--cfg", str(model_yaml), "--data", str(root / "missing.yaml")],
            ("train.py:", "missing.yaml does not exist"),
        ),
        (["--weights", str(corrupt), "--data", str(data_yaml)], ("corrupt.pt is corrupt",)),
        (["--weights", str(foreign), "--data", str(data_yaml)], ("foreign.pt lacks the keys",)),
        (["--resume", str(root / "nowhere" / "last.pt")], ("last.pt: checkpoint not found",)),
        (
            ["--cfg", "nosuchmodel.yaml", "--data", str(data_yaml)],
            ("model config 'nosuchmodel.yaml' not found",),
        ),
        (["--cfg", str(model_yaml), "--data", str(data_yaml), "--device", "7"], ("device 7",)),
    ]
    for argv, expected in cases:
        argv = argv if "--resume" in argv else argv + common
        if "--device" not in argv:
            argv += ["--device", "cpu"]
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv)
        one_sentence(capsys, exit_info, *expected)


def test_val_detect_convert_user_errors_are_one_sentence(tiny_dataset_and_bad_checkpoints, capsys):
    root, data_yaml, _model_yaml, corrupt, foreign = tiny_dataset_and_bad_checkpoints
    fake_onnx = root / "fake.onnx"
    fake_onnx.write_bytes(b"\x00\x01 not a protobuf")
    scripts = [
        (val.main, ["--weights", str(corrupt), "--data", str(data_yaml)], ("val.py:", "corrupt.pt")),
        (val.main, ["--weights", str(fake_onnx), "--data", str(data_yaml)], ("fake.onnx is corrupt",)),
        (detect.main, ["--weights", str(foreign), "--source", str(root)], ("detect.py:", "foreign.pt")),
        (convert.main, ["--weights", str(corrupt)], ("convert.py:", "corrupt.pt")),
    ]
    for main, argv, expected in scripts:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        one_sentence(capsys, exit_info, *expected)


def test_library_never_exits_the_process():
    """No SystemExit or sys.exit under models/ and utils/ (a module's own `__main__` block aside)."""
    for path in sorted([*(ROOT / "utils").rglob("*.py"), *(ROOT / "models").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        main_blocks = {
            id(node)
            for node in tree.body
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        }
        for node in tree.body:
            if id(node) in main_blocks:
                continue
            for inner in ast.walk(node):
                text = ast.unparse(inner) if isinstance(inner, (ast.Raise, ast.Call)) else ""
                assert "SystemExit" not in text and "sys.exit" not in text, f"{path}: {text}"


def test_detect_and_val_name_bad_classes_and_image_sizes(tiny_dataset_and_bad_checkpoints, tmp_path, capsys):
    root, data_yaml, *_ = tiny_dataset_and_bad_checkpoints
    weights = write_tiny_checkpoint(tmp_path / "two.pt", names=["cat", "dog"])
    image = write_images(tmp_path / "images", count=1)[0]
    detect_args = ["--weights", str(weights), "--source", str(image), "--project", str(tmp_path / "runs")]
    cases = [
        (detect.main, detect_args + ["--classes", "99"], ("detect.py:", "[99]", "2 classes, 0 to 1")),
        (detect.main, detect_args + ["--img", "-64"], ("detect.py:", "image size -64 is not usable")),
        (detect.main, detect_args + ["--img", "0"], ("detect.py:", "image size 0 is not usable")),
        (detect.main, detect_args + ["--img", "64", "-32"], ("detect.py:", "image size -32 is not usable")),
    ]
    val_args = ["--weights", str(weights), "--data", str(data_yaml), "--project", str(tmp_path / "val")]
    cases += [
        (val.main, val_args + ["--img", "-64"], ("val.py:", "image size -64 is not usable")),
        (val.main, val_args + ["--img", "0"], ("val.py:", "image size 0 is not usable")),
    ]
    for main, argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        one_sentence(capsys, exit_info, *expected)
    assert not (tmp_path / "runs").exists()  # refused before any output folder was made
