"""convert.py --openvino / --int8: the OpenVINO IR agrees with PyTorch, the INT8 graphs keep the head
float, val.py and detect.py run every artefact, and bad input is one sentence.

Run by tests/test_int8_openvino.py in a pytest process of its own: OpenVINO's native thread state can
crash a later fork of the process that used it (the data loader's workers, the crash tests' runs).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import onnx
import pytest
import torch
import yaml

import convert
import detect
import val
from tests.helpers import NAMES, write_images, write_tiny_checkpoint
from utils.deploy.backend import load_inference_model
from utils.deploy.formats.openvino import cpu_runtime
from utils.deploy.graph import consumers_of, decode_tail_nodes
from utils.deploy.int8.bounded import AccuracyTarget
from utils.deploy.int8.calibration import calibration_batches
from utils.deploy.int8.nncf_openvino import float_convolutions, quantize_openvino_within
from utils.errors import DataError, DeviceError, WeightsError
from utils.paths import ROOT

pytest.importorskip("openvino")
pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny checkpoint whose training split has images, converted with --openvino --int8 by convert.py
    as a user runs it; the errors it prints against PyTorch per artefact."""
    root = tmp_path_factory.mktemp("int8")
    images = root / "data" / "images"
    write_images(images, count=6, size=(64, 64))
    data = {"train": [str(images)], "val": [str(images)], "nc": len(NAMES), "names": NAMES}
    checkpoint = write_tiny_checkpoint(root / "best.pt", data=data)
    command = [sys.executable, "convert.py", "--weights", str(checkpoint), "--img", "64", "--runs", "1",
               "--openvino", "--int8", "--calib", "4"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    errors = {
        match[1]: float(match[2])
        for match in re.finditer(
            r"^\w+ (\S+): vs PyTorch max abs error \S+, max rel error (\S+)$", done.stdout, re.M
        )
    }
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images",
                                                    "val": "images", "names": NAMES}))  # fmt: skip
    return root, errors


def test_every_artefact_is_written_with_yolov5_names(exported):
    root, errors = exported
    expected = ["best_fused.onnx", "best_fused_openvino_model", "best_fused_int8.onnx",
                "best_fused_int8_openvino_model"]  # fmt: skip
    assert all((root / name).exists() for name in expected)
    for folder in ("best_fused_openvino_model", "best_fused_int8_openvino_model"):
        metadata = yaml.safe_load((root / folder / "metadata.yaml").read_text())
        assert metadata["names"] == NAMES and metadata["stride"] == 32 and metadata["img_size"] == [64, 64]
    assert set(errors) == {str(root / name) for name in expected[1:]}


def test_openvino_fp32_agrees_with_pytorch_and_int8_stays_close(exported):
    root, errors = exported
    assert errors[str(root / "best_fused_openvino_model")] < 1e-4
    for name in ("best_fused_int8.onnx", "best_fused_int8_openvino_model"):
        assert errors[str(root / name)] < 0.05, name  # 8-bit round-off, not broken boxes


def test_the_head_stays_float_in_both_int8_graphs(exported):
    root, _ = exported
    tail = set(decode_tail_nodes(onnx.load(str(root / "best_fused.onnx"))))
    assert sum(name.endswith("/Conv") for name in tail) == 3  # the Detect layer's three 1x1 convs
    quantized = onnx.load(str(root / "best_fused_int8.onnx"))
    producers = {output: node for node in quantized.graph.node for output in node.output}
    consumers = consumers_of(quantized.graph)
    for node in quantized.graph.node:
        if node.name not in tail:
            continue
        float_inputs = (
            node.input[1:] if node.op_type == "Conv" else node.input
        )  # a head conv reads int8 features
        assert all(
            producers[name].op_type != "DequantizeLinear" for name in float_inputs if name in producers
        ), node.name
        assert all(c.op_type != "QuantizeLinear" for out in node.output for c in consumers.get(out, [])), (
            node.name
        )
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)

    import openvino as ov

    model = ov.Core().read_model(str(root / "best_fused_int8_openvino_model" / "best_fused_int8.xml"))
    fake_quantized = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert fake_quantized
    for op in model.get_ops():
        if op.get_friendly_name() in tail and op.get_type_name() != "Convolution":
            sources = [port.get_source_output().get_node().get_type_name() for port in op.inputs()]
            assert "FakeQuantize" not in sources, op.get_friendly_name()
    head_convs = {name for name in tail if name.endswith("/Conv")}
    assert head_convs <= set(float_convolutions(model))  # the head's weights are float too
    assert len(float_convolutions(model)) == len(head_convs)  # and every other convolution is INT8


def test_val_and_detect_run_every_artefact(exported, tmp_path):
    root, _ = exported
    for name in ("best_fused_openvino_model", "best_fused_openvino_model/best_fused.xml",
                 "best_fused_int8.onnx", "best_fused_int8_openvino_model"):  # fmt: skip
        weights = root / name
        model = load_inference_model(weights)
        assert model.names == NAMES and model.fixed_input_hw == (64, 64)
        results = val.run(data=root / "data.yaml", weights=weights, workers=0, project=tmp_path, name="v",
                          plots=False, quiet=True)  # fmt: skip
        assert results["images"] == 6
        detections = detect.run(
            weights, source=root / "data" / "images", project=tmp_path, name="d", nosave=True
        )
        assert len(detections) == 6


def test_half_openvino_uses_bf16_and_stays_close(exported, monkeypatch):
    """--half compiles the FP32 IR with bf16 inference precision where the CPU computes it natively (the
    capability is forced on here; OpenVINO falls back to f32 on a CPU without it), and is refused
    elsewhere."""
    from utils import device as device_module

    root, _ = exported
    folder = root / "best_fused_openvino_model"
    images = torch.rand(2, 3, 64, 64)
    monkeypatch.setattr(device_module, "native_bf16_feature", lambda: "AVX512-BF16")
    half = load_inference_model(folder, half=True)
    hint = half.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    assert half.half and hint in ("bf16", "f32")  # f32: what OpenVINO runs on a CPU without bfloat16
    difference = (half(images) - load_inference_model(folder)(images)).abs()
    assert difference[..., :4].max() < 2.0 and difference[..., 4:].max() < 0.05
    monkeypatch.setattr(device_module, "native_bf16_feature", lambda: None)
    with pytest.raises(DeviceError, match="--half needs"):
        load_inference_model(folder, half=True)


def test_bad_input_is_one_sentence(exported, tmp_path, capsys):
    root, _ = exported
    bare = write_tiny_checkpoint(tmp_path / "bare.pt")  # records no dataset: nothing to calibrate on
    with pytest.raises(
        DataError, match="INT8 calibration needs images .* pass calibration images with --calib-data"
    ):
        convert.run(bare, img_size=64, runs=1, int8=True)
    assert not (tmp_path / "bare_fused.pt").exists()  # refused before any work
    convert.run(bare, img_size=64, runs=1, int8=True, calib=2, calib_data=root / "data" / "images")
    assert (tmp_path / "bare_fused_int8.onnx").is_file()
    broken = tmp_path / "broken_openvino_model"
    broken.mkdir()
    (broken / "broken.xml").write_text("<net>not an IR")
    (broken / "metadata.yaml").write_text(yaml.safe_dump({"names": NAMES, "stride": 32}))
    with pytest.raises(WeightsError, match="is corrupt or is no OpenVINO IR model"):
        load_inference_model(broken)
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--weights", str(broken), "--source", str(root / "data" / "images")])
    assert exit_info.value.code == 2 and "is no OpenVINO IR" in capsys.readouterr().err


def test_bounded_openvino_reverts_layers_until_the_metric_holds(exported, tmp_path):
    """NNCF's accuracy control against a stand-in metric (100 minus 100x the relative output error to the
    float IR; NNCF divides by the float score, so not 0): a bound of half the all-INT8 drop makes it
    keep some convolutions float."""
    import numpy as np
    import torch

    root, _ = exported
    fp32_xml = root / "best_fused_openvino_model" / "best_fused.xml"
    reference = load_inference_model(fp32_xml)
    files = sorted(str(path) for path in (root / "data" / "images").glob("*.jpg"))
    batches = [torch.from_numpy(batch) for batch in calibration_batches(files, 64)]

    def score(predictor, items) -> float:
        errors = [float((predictor(b) - reference(b)).norm() / reference(b).norm()) for b in items]
        return 100 - 100 * float(np.mean(errors))

    metadata = yaml.safe_load((root / "best_fused_openvino_model" / "metadata.yaml").read_text())
    head = decode_tail_nodes(onnx.load(str(root / "best_fused.onnx")))
    everything = score(load_inference_model(root / "best_fused_int8_openvino_model"), batches)
    bound = 0.5 * (100 - everything)
    result = quantize_openvino_within(
        fp32_xml,
        tmp_path / "q" / "q.xml",
        files,
        64,
        head,
        AccuracyTarget(batches, score, bound),
        cpu_runtime(metadata),
    )
    assert result.float_score == 100 and result.drop <= bound + 1e-6
    assert result.kept_float, "a tight bound must keep some convolution float"
    import openvino as ov

    floats = set(float_convolutions(ov.Core().read_model(str(tmp_path / "q" / "q.xml"))))
    assert set(result.kept_float) <= floats


def test_bench_quantization_scores_every_artefact_with_val(exported, tmp_path):
    from bench import quantization

    root, _ = exported
    results = quantization.run(
        weights=[f"repyolov5s={root / 'best.pt'}"], models=["repyolov5s.yaml"], data=str(root / "data.yaml"),
        img_size=64, calib=4, sizes=[64], threads=1, rounds=1, project=str(tmp_path / "q"),
        json_path=str(tmp_path / "q.json"),
    )  # fmt: skip
    model = results["models"]["repyolov5s"]
    labels = [label for label, _ in quantization.ARTEFACTS] + [row[0] for row in quantization.BOUNDED]
    half = [row[0] for row in quantization.HALF] if quantization.half_available() else []
    assert list(model["map"]) == labels + half
    int8 = tmp_path / "q" / "repyolov5s" / "int8-64" / "best_fused_int8.onnx"
    by_val = val.run(
        data=root / "data.yaml", weights=int8, workers=0, plots=False, quiet=True, project=tmp_path
    )
    assert model["map"]["ORT INT8"]["mAP50_95"] == 100 * by_val["mAP50_95"]
    assert set(model["latency_ms"]["64"]) == {"PyTorch eager", "PyTorch channels_last", *labels[1:5], *half}
    assert json.loads((tmp_path / "q.json").read_text())["features"] == quantization.cpu_features()
