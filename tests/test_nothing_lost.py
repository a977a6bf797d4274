"""Nothing is lost and every bad value is named: one test per item of the robustness issue (the crash
test in test_crash_safety.py covers kills during the end-of-run step; test_fuzz_labels.py the label
checks at large)."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import stat

import pytest
import torch
import yaml

import convert
import train
import utils.paths
from tests.helpers import make_tiny_dataset, write_tiny_checkpoint
from tests.test_crash_safety import WritePoints, fork_server
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.data.labels import scan_files, summarize
from utils.data.preprocess import letterbox
from utils.errors import CheckpointError, ConfigError
from utils.hyp import load_hyp
from utils.train.results import RESULTS_COLUMNS, ResultsTable


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch tiny run (no plots) and the options that made it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lost")
    data_yaml, model_yaml = make_tiny_dataset(root, train_images=4, val_images=2)
    options = dict(cfg=str(model_yaml), data=str(data_yaml), img_size=64, batch_size=2, epochs=2,
                   device="cpu", workers=0, plots=False, tensorboard=False, project=str(root / "runs"),
                   name="done", repeat=1)  # fmt: skip
    result = train.run(**options)
    return result["save_dir"], options


# 1. convert.py never replaces its input, nor any file that is not an earlier fused checkpoint
def test_convert_output_never_replaces_the_input_or_another_file(tmp_path, capsys):
    weights = write_tiny_checkpoint(tmp_path / "best.pt")
    before = digest(weights)
    for output in (weights, tmp_path / "." / "best.pt"):
        with pytest.raises(SystemExit) as exit_info:
            convert.main(["--weights", str(weights), "--output", str(output), "--img", "64", "--runs", "1"])
        assert exit_info.value.code == 2 and "is the input checkpoint itself" in capsys.readouterr().err
    assert digest(weights) == before
    other = write_tiny_checkpoint(tmp_path / "other.pt", seed=1)  # a training checkpoint in the way
    with pytest.raises(convert.ConversionError, match="already exists and is not a fused checkpoint"):
        convert.run(weights, output=other, img_size=64, runs=1)
    fused = tmp_path / "best_fused.pt"
    convert.run(weights, img_size=64, runs=1)
    convert.run(weights, img_size=64, runs=1)  # an earlier fused output is replaced, with a warning
    assert load_checkpoint(fused)["deploy"] and digest(weights) == before


def test_convert_unwritable_output_and_odd_image_size(tmp_path):
    weights = write_tiny_checkpoint(tmp_path / "best.pt")
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(convert.ConversionError, match="cannot write .*pass an --output in a writable folder"):
        convert.run(weights, output=tmp_path / "a_file" / "fused.pt", img_size=64, runs=1)
    report = convert.run(weights, img_size=33, runs=1)  # rounded up to the stride, as train/val/detect do
    assert report["img_size"] == 64


# 2. letterbox of an extreme aspect ratio keeps at least one pixel
def test_letterbox_of_a_sliver_image_keeps_a_pixel():
    for height, width, size in ((50, 10000, 640), (12, 20000, 640), (10000, 50, 320)):
        image = torch.zeros(height, width, 3, dtype=torch.uint8).numpy()
        out, ratio, pad = letterbox(image, size, auto=False)
        assert out.shape[:2] == (size, size) and min(ratio) > 0


# 4. rewriting results.csv is atomic: a kill in the middle never loses the history
def _truncate_and_die(path: str) -> None:
    utils.paths.on_write_point(WritePoints(kill_at=1))
    ResultsTable(path).truncate(1)


def test_results_rewrite_killed_midway_keeps_the_history(tmp_path):
    table = ResultsTable(tmp_path / "results.csv")
    for epoch in range(3):
        table.append({column: float(epoch) for column in RESULTS_COLUMNS} | {"epoch": epoch})
    before = (tmp_path / "results.csv").read_text()
    process = fork_server().Process(target=_truncate_and_die, args=(str(table.path),))
    process.start()
    process.join(60)
    assert process.exitcode == -9  # killed at the rewrite, as a resume's truncation might be
    assert (tmp_path / "results.csv").read_text() == before
    table.truncate(1)
    with open(table.path, newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]


# 5. --exist-ok into a finished run refuses instead of mixing histories
def test_exist_ok_into_a_finished_run_refuses(finished_run):
    save_dir, options = finished_run
    before = {name: digest(save_dir / name) for name in ("results.csv", "weights/best.pt", "weights/last.pt")}
    with pytest.raises(ConfigError, match="already holds a training run"):
        train.run(**{**options, "exist_ok": True})
    assert {name: digest(save_dir / name) for name in before} == before


# 6. a NaN coordinate is named and the image skipped
def test_nan_label_is_named_and_skipped(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    import cv2
    import numpy as np

    for name, rows in (("nan", "3 nan 0.50 0.20 0.20\n"), ("ok", "1 0.5 0.5 0.2 0.2\n")):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((32, 32, 3), np.uint8))
        (tmp_path / "labels" / f"{name}.txt").write_text(rows)
    files = sorted(str(p) for p in (tmp_path / "images").iterdir())
    with caplog.at_level(logging.WARNING):
        entries, _ = scan_files(files)
        summarize(entries, "", None)
    errors = {os.path.basename(e["image"]): e["error"] for e in entries}
    assert "not a finite number" in errors["nan.png"] and not errors["ok.png"]
    assert any(
        "nan.png" in r.getMessage() and "not a finite number" in r.getMessage() for r in caplog.records
    )


# 7. (kills in the end-of-run step: test_crash_safety.py); temp files of killed saves are cleaned
def test_temp_files_of_killed_saves_are_removed_and_checkpoints_are_readable(tmp_path):
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint({"model": {}, "model_yaml": {}, "deploy": False}, tmp_path / "last.pt")
    assert not stale.exists()
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE(os.stat(tmp_path / "last.pt").st_mode)
    assert mode == 0o666 & ~mask  # like every other run file, not mkstemp's 0600


# the one-sentence errors
def test_bad_values_are_one_sentence(finished_run, tmp_path):
    save_dir, options = finished_run
    for key, value in (("img_size", 0), ("img_size", -32), ("batch_size", 0), ("epochs", 0)):
        with pytest.raises(ConfigError, match=f"{key} is {value}; it must be a whole number of at least 1"):
            train.run(**{**options, key: value, "name": "bad"})
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text(yaml.safe_dump({"lr0": "fast"}))
    with pytest.raises(ConfigError, match="hyp.yaml: lr0 is 'fast', not a number"):
        load_hyp(hyp)
    hyp.write_text(yaml.safe_dump({"copy_pastes": 0.5}))
    with pytest.raises(ConfigError, match=r"hyp.yaml: unknown hyperparameter\(s\) \['copy_pastes'\]"):
        load_hyp(hyp)


def test_resume_after_the_class_count_changed_is_one_sentence(finished_run, tmp_path):
    save_dir, options = finished_run
    last = tmp_path / "last.pt"
    ckpt = load_checkpoint(save_dir / "weights" / "last.pt")
    save_checkpoint({**ckpt, "epoch": 0, "optimizer": {}, "nc": 7}, last)  # as if interrupted
    with pytest.raises(CheckpointError, match="was trained on 7 classes but .* now has nc=5"):
        train.run(resume=str(last), device="cpu", workers=0)


def test_a_dataset_without_any_label_file_is_named(tmp_path, caplog):
    import cv2
    import numpy as np

    (tmp_path / "pics").mkdir()
    cv2.imwrite(str(tmp_path / "pics" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    with caplog.at_level(logging.WARNING):
        entries, _ = scan_files([str(tmp_path / "pics" / "a.png")])
        summarize(entries, "train: ", None)
    assert any("no label file was found for any of the 1 images" in r.getMessage() for r in caplog.records)
