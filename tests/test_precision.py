"""Mixed precision: bfloat16 training where the CPU computes it natively (float32 where it does not, or
with --no-amp), and --half inference for val.py, detect.py and Detector."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import detect
import train
import val
from tests.helpers import make_tiny_dataset, tiny_model, write_images
from utils import device as device_module
from utils.deploy.backend import load_inference_model
from utils.deploy.detector import Detector
from utils.device import cpu_flags, native_bf16_feature, training_precision
from utils.errors import DeviceError, WeightsError
from utils.inference import TorchInferenceModel
from utils.train.step import OptimizerStep, StepPlan

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has AVX512-BF16 (bfloat16 still runs, emulated, where it has not)."""
    monkeypatch.setattr(device_module, "native_bf16_feature", lambda: "AVX512-BF16")


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "native_bf16_feature", lambda: None)


# --- the capability and the choice -------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, feature",
    [
        ("fpu sse avx512f avx512_bf16 avx512_vnni", "AVX512-BF16"),
        ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "AMX-BF16"),
        ("fpu sse avx2 avx512f avx512_vnni", None),  # AVX-512 alone: oneDNN would emulate bfloat16
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(flags, feature, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
    cpu_flags.cache_clear()
    try:
        assert native_bf16_feature() == feature
        monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "absent")  # not Linux
        cpu_flags.cache_clear()
        assert native_bf16_feature() is None
    finally:
        cpu_flags.cache_clear()


def test_training_precision_per_device(native_bf16):
    assert training_precision(CPU).dtype == torch.bfloat16
    assert "AVX512-BF16" in training_precision(CPU).reason and not training_precision(CPU).scaled
    assert training_precision(CPU, amp=False).dtype == torch.float32
    cuda = training_precision(CUDA)
    assert cuda.dtype == torch.float16 and cuda.scaled  # as yolov5: float16 with the GradScaler
    assert training_precision(CUDA, amp=False).dtype == torch.float32


def test_without_native_bf16_nothing_changes(no_native_bf16):
    precision = training_precision(CPU)
    assert precision.dtype == torch.float32 and not precision.mixed
    assert "no native bfloat16" in precision.reason
    with pytest.raises(DeviceError, match="--half needs a CUDA GPU or a CPU that computes bfloat16"):
        device_module.half_dtype(CPU)


def test_no_amp_flag():
    assert train.parse_args(["--cfg", "repyolov5s.yaml"]).amp is True
    assert train.parse_args(["--cfg", "repyolov5s.yaml", "--no-amp"]).amp is False


# --- training --------------------------------------------------------------------------------------


def test_bf16_step_keeps_float32_weights_and_gradients(native_bf16):
    from utils.hyp import load_hyp
    from utils.train.loss import YoloLoss
    from utils.train.optim import EpochSchedule, build_optimizer
    from utils.train.trainer import scale_loss_gains

    model = tiny_model().train()
    hyp = load_hyp("hyp.scratch-low.yaml")
    optimizer = build_optimizer(model, "SGD", lr=0.01, momentum=hyp.momentum)
    schedule = EpochSchedule(optimizer, 1, hyp.lrf)
    step = OptimizerStep(model, optimizer, schedule, hyp, StepPlan(), precision=training_precision(CPU))
    assert not step.scaler.is_enabled()  # bfloat16 has float32's range: no loss scaling
    loss_fn = YoloLoss(model.detect, scale_loss_gains(hyp, model.detect.nl, 3, 64))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]])
    with step.autocast():
        outputs = model(torch.rand(1, 3, 64, 64))
        assert outputs[0].dtype == torch.bfloat16  # the convolutions ran in bfloat16
        loss, _ = loss_fn(outputs, targets)
    assert loss.dtype == torch.float32
    before = [p.detach().clone() for p in model.parameters()]
    assert step(loss, 0)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    data_yaml, model_yaml = make_tiny_dataset(root, train_images=4, val_images=2)
    return dict(cfg=str(model_yaml), data=str(data_yaml), img_size=64, batch_size=4, epochs=1, device="cpu",
                workers=0, project=str(root), repeat=1, plots=False, tensorboard=False)  # fmt: skip


@pytest.mark.parametrize(
    "native, amp, expected",
    [("AVX512-BF16", True, "bfloat16"), (None, True, "float32"), ("AVX512-BF16", False, "float32")],
)
def test_train_logs_its_precision_and_saves_float32(native, amp, expected, tiny_data, monkeypatch, caplog):
    monkeypatch.setattr(device_module, "native_bf16_feature", lambda: native)
    torch.set_num_threads(1)
    with caplog.at_level(logging.INFO, logger="utils.train.trainer"):
        summary = train.run(amp=amp, **tiny_data)
    assert f"Precision: {expected} (" in caplog.text
    ckpt = torch.load(summary["save_dir"] / "weights" / "best.pt", weights_only=True)
    floats = [t for t in ckpt["model"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    assert ckpt["opt"]["amp"] is amp  # a resumed run keeps its precision


# --- --half inference ------------------------------------------------------------------------------


def test_half_pytorch_outputs_float32_close_to_float32(weights, native_bf16):
    full, half = load_inference_model(weights), load_inference_model(weights, half=True)
    assert isinstance(half, TorchInferenceModel) and half.half and half.half_precision == torch.bfloat16
    images = torch.rand(2, 3, 64, 96)
    reference, output = full(images), half(images)
    assert output.dtype == torch.float32 and output.shape == reference.shape
    boxes, scores = (output - reference)[..., :4].abs(), (output - reference)[..., 4:].abs()
    assert boxes.max() < 2.0 and scores.max() < 0.05  # bfloat16 round-off (8 bits), nothing broken
    assert boxes.max() > 0  # it did run in bfloat16


def test_half_in_val_detect_and_detector(weights, native_bf16, tmp_path):
    images = write_images(tmp_path / "images", count=2, size=(64, 64))
    detector = Detector(weights, device="cpu", half=True)
    assert detector.model.half and len(detector(str(images[0]))) == 1
    assert Detector(tiny_model(), device="cpu", half=True).model.half
    found = detect.run(weights, source=tmp_path / "images", half=True, project=tmp_path, nosave=True)
    assert len(found) == 2
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames: [circle, square, triangle]\n")
    results = {
        half: val.run(
            data=data,
            weights=weights,
            half=half,
            workers=0,
            save_dir=tmp_path / f"v{half}",
            plots=False,
            quiet=True,
        )  # fmt: skip
        for half in (False, True)
    }
    assert results[True]["images"] == 2
    assert np.isclose(results[True]["mAP50"], results[False]["mAP50"], atol=0.1)
    assert val.parse_args(["--weights", "w.pt", "--half"]).half
    assert detect.parse_args(["--weights", "w.pt", "--half"]).half


def test_half_is_refused_in_one_sentence_where_it_cannot_be_fast(weights, no_native_bf16, tmp_path):
    with pytest.raises(DeviceError, match="this cpu has neither; run without --half"):
        load_inference_model(weights, half=True)
    with pytest.raises(DeviceError, match="--half needs"):
        Detector(weights, device="cpu", half=True)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not read")
    with pytest.raises(WeightsError, match="ONNX Runtime runs .*model.onnx as exported; drop --half"):
        load_inference_model(onnx_file, half=True)
