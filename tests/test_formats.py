"""Every format of the registry (utils.deploy.formats.REGISTRY): one tiny model through every installed
format, at 64 px with --int8 (8 calibration images): each artefact under yolov5's name, loaded by
load_inference_model (with its runtime flag, for a runtime that runs another format's artefacts) and close
to PyTorch, scored by val.py; a corrupt file of each refused in one sentence. The tests are parametrized
over the registry, so a registered format is tested without a new test. Then what is particular to some:
detect.py and the hub on edge artefacts, malformed metadata, a missing converter or runtime named with the
requirements file. A format whose packages are not installed skips, saying so."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import platform
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import make_tiny_dataset, write_tiny_checkpoint
from utils.data.config import load_data_config
from utils.deploy.formats import REGISTRY, runtime_flags
from utils.errors import ConversionError, WeightsError

EXPORTED = [fmt for fmt in REGISTRY.values() if fmt.flag or fmt.runs]  # what convert.py writes or runs
# (format, artefact) of every artefact an installed format runs (written by its own flag or its runs')
ARTEFACTS = [(fmt, artefact) for fmt in EXPORTED for artefact in fmt.artefacts]
RUNNABLE = [pytest.param(fmt, artefact, id=f"{fmt.name}{artefact.suffix}") for fmt, artefact in ARTEFACTS
            if fmt.unavailable() is None]  # fmt: skip
LIMITS = {"float32": 1e-4, "float16": 1e-3, "int8": 0.05}  # relative to the largest output
# A detector with each kind of layer of repyolov5n once (stem Conv, RepVGG downsampling, C3 with its
# residual, SPPF, Upsample, Concat, the three-level Detect) and 16 convolutions instead of 60: the
# converters' time grows with the graph (ExecuTorch and LiteRT INT8 take most of this module's minute).
EVERY_LAYER_ONCE = """
nc: 5
depth_multiple: 0.33
width_multiple: 0.125
anchors: [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]
backbone:
  - [-1, 1, Conv, [64, 6, 2, 2]]  # 0: P1/2
  - [-1, 1, RepVGGBlock, [128, 3, 2]]  # 1: P2/4
  - [-1, 1, RepVGGBlock, [256, 3, 2]]  # 2: P3/8
  - [-1, 1, C3, [256, True, RepVGGBlock]]  # 3
  - [-1, 1, RepVGGBlock, [512, 3, 2]]  # 4: P4/16
  - [-1, 1, RepVGGBlock, [1024, 3, 2]]  # 5: P5/32
  - [-1, 1, SPPF, [1024, 5]]  # 6
head:
  - [-1, 1, Upsample, [None, 2, nearest]]  # 7
  - [[-1, 4], 1, Concat, [1]]  # 8
  - [-1, 1, Conv, [512, 1, 1]]  # 9
  - [[3, 9, 6], 1, Detect, [nc, anchors]]  # 10
"""


def installed(name: str) -> bool:
    return not REGISTRY[name].missing()


def skip_unless_installed(name: str) -> None:
    fmt = REGISTRY[name]
    if not installed(name):
        pytest.skip(f"{fmt.title} needs {', '.join(fmt.missing())} ({fmt.requirements})")
    if fmt.runs:
        skip_unless_installed(fmt.runs)


CONVERT_IN_A_SUBPROCESS = """
import json, sys
import torch
import convert
torch.set_num_threads(2)
flags = {flag: True for flag in sys.argv[3:]}
report = convert.run(sys.argv[1], img_size=64, runs=1, int8=True, **flags)
with open(sys.argv[2], "w") as file:
    json.dump(report, file, default=str)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(fused model, artefact stem path, data yaml, convert report): the tiny checkpoint fused and written
    in every installed format at 64 px, with --int8. convert.py
    runs in its own process: litert-torch brings JAX, whose threads make a later fork (the data loader's
    workers, other tests' subprocesses) liable to deadlock in this one."""
    from utils.checkpoint import load_model
    from utils.paths import ROOT

    root = tmp_path_factory.mktemp("edge")
    data_yaml, _ = make_tiny_dataset(root)
    data = load_data_config(data_yaml)
    (root / "every-layer-once.yaml").write_text(EVERY_LAYER_ONCE)
    checkpoint = write_tiny_checkpoint(
        root / "best.pt", data=data, names=data["names"], cfg=str(root / "every-layer-once.yaml")
    )
    flags = [fmt.flag for fmt in EXPORTED if fmt.flag and installed(fmt.name)]
    report_file = root / "report.json"
    command = [sys.executable, "-c", CONVERT_IN_A_SUBPROCESS, str(checkpoint), str(report_file), *flags]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-3000:]
    fused, _ = load_model(root / "best_fused.pt")
    return fused.eval(), root / "best_fused", data_yaml, json.loads(report_file.read_text())


def artefact(exported, name: str, suffix: str) -> Path:
    skip_unless_installed(name)
    return exported[1].with_name(exported[1].name + suffix)


def runtime_of(fmt) -> str | None:
    """load_inference_model's runtime for ``fmt``'s artefacts: its name where it runs another format's,
    else None, so that the loader finds the format by the artefact's name as it does for a user."""
    return fmt.name if fmt.runs else None


@pytest.mark.parametrize("fmt, written", RUNNABLE)
def test_each_artefact_is_written_checked_and_runs_close_to_pytorch(exported, fmt, written):
    from utils.deploy.backend import load_inference_model

    path = artefact(exported, fmt.name, written.suffix)
    fused, _, _, report = exported
    precision = written.precision
    assert str(path) in report["checks"], "convert.py checks every artefact it writes"
    runtime = load_inference_model(path, runtime=runtime_of(fmt))
    assert load_inference_model(path, runtime=fmt.name).kind == fmt.name, "a format's own name as runtime="
    computes = "float32" if precision == "float16" else precision  # float16 weights, float32 arithmetic
    assert runtime.kind == fmt.name and runtime.precision == computes
    assert runtime.names == list(fused.names) and runtime.stride == 32 and runtime.fixed_input_hw == (64, 64)
    torch.manual_seed(1)
    images = torch.rand(2, 3, 64, 64)  # two images: the static (1, 3, 64, 64) input runs them one by one
    with torch.no_grad():
        reference = fused(images)
    output = runtime(images)
    assert output.shape == reference.shape
    assert float((output - reference).abs().max() / reference.abs().max()) <= LIMITS[precision]


@pytest.fixture(scope="module")
def onnx_score(exported) -> dict:
    """val.py's metrics of the FP32 ONNX graph: every artefact's reference at the same input."""
    import val

    _, stem, data_yaml, _ = exported
    return val.run(data=str(data_yaml), weights=str(stem.with_suffix(".onnx")), img_size=64, workers=0)


@pytest.mark.parametrize("fmt, written", RUNNABLE)
def test_val_scores_each_artefact_as_the_onnx_graph_at_the_same_input(exported, onnx_score, fmt, written):
    import val

    path = artefact(exported, fmt.name, written.suffix)
    reference = onnx_score
    scored = val.run(
        data=str(exported[2]), weights=str(path), img_size=64, workers=0, runtime=runtime_of(fmt)
    )
    tolerance = 0.02 if written.precision == "int8" else 0.002  # mAP50-95 as a fraction, untrained
    assert abs(scored["mAP50_95"] - reference["mAP50_95"]) <= tolerance


@pytest.mark.parametrize("fmt, suffix", [("ncnn", "_ncnn_model"), ("tflite", "_int8.tflite")])
def test_detect_runs_the_ncnn_and_litert_int8_artefacts(exported, fmt, suffix, tmp_path):
    import detect

    path = artefact(exported, fmt, suffix)
    source = exported[2].parent / "shapes" / "images" / "val"
    results = detect.run(path, source, img_size=64, project=tmp_path, name="exp", exist_ok=True)
    images = sorted(source.glob("*.jpg"))
    assert len(results) == len(images)
    assert sorted(p.name for p in (tmp_path / "exp").glob("*.jpg")) == [p.name for p in images]


RUNTIME_FLAGS = [pytest.param(flag, name, id=flag) for flag, (name, _) in runtime_flags().items()]


@pytest.mark.parametrize("flag, name", RUNTIME_FLAGS)
def test_val_and_detect_take_each_runtime_flag(exported, flag, name, tmp_path):
    """yolov5's --dnn and any other runtime of another format's artefacts: val.py and detect.py as a user
    types them; weights of another format are one sentence."""
    import detect
    import val
    from utils.deploy.backend import load_inference_model

    path = artefact(exported, name, REGISTRY[name].artefacts[0].suffix)
    assert val.parse_args(["--weights", str(path), f"--{flag}"]).runtime == name
    metrics = val.main(["--weights", str(path), "--data", str(exported[2]), "--img", "64", "--workers", "0",
                        "--project", str(tmp_path), f"--{flag}"])  # fmt: skip
    assert metrics["mAP50_95"] >= 0
    source = exported[2].parent / "shapes" / "images" / "val"
    detect.main(["--weights", str(path), "--source", str(source), "--img", "64", "--project", str(tmp_path),
                 "--name", "detect", f"--{flag}"])  # fmt: skip
    assert len(list((tmp_path / "detect").glob("*.jpg"))) == len(list(source.glob("*.jpg")))
    with pytest.raises(
        WeightsError, match=f"are not one of {re.escape(REGISTRY[REGISTRY[name].runs].shown_as)}"
    ):
        load_inference_model(exported[1].with_suffix(".pt"), runtime=name)


def test_the_hub_custom_entry_takes_an_edge_artefact(exported):
    import hubconf

    path = artefact(exported, "tflite", ".tflite")
    detector = hubconf.custom(str(path), device="cpu")
    image = (torch.rand(80, 96, 3) * 255).to(torch.uint8).numpy()
    detections = detector(image)
    assert detections.names == list(exported[0].names)


def test_coreml_is_written_and_its_spec_checked_and_loading_it_off_macos_says_why(exported):
    from utils.deploy.backend import load_inference_model

    skip_unless_installed("coreml")
    path = exported[1].with_name(exported[1].name + ".mlpackage")
    check = exported[3]["checks"][str(path)]
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in exported[0].modules())
    assert check["inputs"] == {"images": [1, 3, 64, 64]} and check["outputs"] == ["output"]
    assert check["convolutions"] == convs
    if platform.system() != "Darwin":
        with pytest.raises(WeightsError, match=r"CoreML model, and Core ML runs models only on macOS"):
            load_inference_model(path)


CORRUPT = [pytest.param(fmt, id=fmt.name) for fmt in EXPORTED if fmt.unavailable() is None]


@pytest.mark.parametrize("fmt", CORRUPT)
def test_a_corrupt_file_of_each_format_is_refused_in_one_sentence(exported, fmt, tmp_path):
    """Garbage under the name of the format's first artefact (in a folder, under each name the folder of a
    written artefact holds, beside its metadata.yaml)."""
    from utils.deploy.backend import load_inference_model

    skip_unless_installed(fmt.name)
    garbage = b"\x00\x01 not a model \xb7\xff" * 8
    suffix = fmt.artefacts[0].suffix
    path = tmp_path / f"broken{suffix}"
    written = artefact(exported, fmt.name, suffix)
    if written.is_dir():
        path.mkdir()
        for inside in written.iterdir():
            (path / inside.name).write_bytes(garbage)
        (path / "metadata.yaml").write_text("names: [a]\nstride: 32\nimg_size: [64, 64]\n")
    else:
        path.write_bytes(garbage)
    with pytest.raises(WeightsError) as error:
        load_inference_model(path, runtime=runtime_of(fmt))
    message = str(error.value)
    flag = fmt.flag or REGISTRY[fmt.runs].flag
    assert str(path) in message and f"convert.py --{flag}" in message and message.count(". ") == 0


def test_an_artefact_without_repyolo_metadata_is_refused(exported, tmp_path):
    from utils.deploy.backend import load_inference_model

    path = artefact(exported, "tflite", ".tflite")
    data = path.read_bytes()
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(data[: data.rindex(b"PK\x03\x04")])  # the model without the appended zip
    with pytest.raises(WeightsError, match="carries no RepYOLO metadata"):
        load_inference_model(foreign)


def hide_module(monkeypatch, hidden: str) -> None:
    """As if the package ``hidden`` were not installed (EdgeFormat.missing asks importlib.util.find_spec)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == hidden else real(name, *a)
    )


def test_mnn_converts_without_its_script_that_sends_usage_logs_and_pip_installs(exported, tmp_path):
    from utils.deploy.formats.base import OnnxSettings
    from utils.deploy.pipeline import export_inputs

    skip_unless_installed("mnn")
    fused, stem = exported[0], exported[1]
    inputs = export_inputs(fused, torch.rand(1, 3, 64, 64), tmp_path / "model", OnnxSettings(), None)
    inputs.onnx_path = stem.with_suffix(".onnx")
    written = list(REGISTRY["mnn"].write(inputs, tmp_path / "model"))
    assert [w.path for w in written] == [tmp_path / "model.mnn"] and written[0].path.is_file()
    assert "MNN.tools.mnnconvert" not in sys.modules and "aliyun" not in sys.modules


def test_a_missing_converter_is_one_sentence_naming_the_package_and_the_requirements_file(
    weights, monkeypatch
):
    """Only pnnx missing, whatever this machine has installed: ncnn, the format's other package, is made
    to look installed, so the sentence is the same on requirements-dev.txt alone and with every file."""
    import convert

    real = importlib.util.find_spec
    others = {module for _, module in REGISTRY["ncnn"].packages} - {"pnnx"}

    def find_spec(name, *args):
        if name == "pnnx":
            return None
        return importlib.machinery.ModuleSpec(name, None) if name in others else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(
        ConversionError,
        match=r"--ncnn needs pnnx, which is not installed; pip install -r requirements-edge\.txt",
    ):
        convert.run(weights, ncnn=True)
    assert not weights.with_name("best_fused.pt").exists(), "nothing is written before the refusal"


def test_a_missing_runtime_is_one_sentence_naming_the_requirements_file(exported, monkeypatch):
    from utils.deploy.backend import load_inference_model

    path = artefact(exported, "mnn", ".mnn")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "MNN" else real(name, *a)
    )
    with pytest.raises(WeightsError, match=r"running .*\.mnn needs MNN, which is not installed"):
        load_inference_model(path)


def test_pt2e_int8_keeps_float_the_convolutions_named_by_their_onnx_nodes(exported):
    """--max-drop: the convolutions ONNX Runtime's search kept float (ONNX node names) stay float in the
    PT2E INT8 of LiteRT and ExecuTorch: each name resolves to a conv of the model, and keeping one float
    leaves one convolution of the quantized trunk reading a float weight."""
    import onnx

    from utils.deploy.graph import module_of_onnx_node
    from utils.deploy.int8.pt2e import quantized_trunk

    skip_unless_installed("executorch")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    fused, stem = exported[0], exported[1]
    convs = [
        node.name for node in onnx.load(str(stem.with_suffix(".onnx"))).graph.node if node.op_type == "Conv"
    ]
    paths = [module_of_onnx_node(name) for name in convs]
    assert all(isinstance(fused.get_submodule(path), torch.nn.Conv2d) for path in paths)

    def float_weight_convs(kept: tuple[str, ...]) -> int:
        torch.manual_seed(0)
        example, calibration = torch.rand(1, 3, 64, 64), lambda: [torch.rand(1, 3, 64, 64)]
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        trunk = quantized_trunk(fused, example, calibration, quantizer, kept).trunk
        convs = [node for node in trunk.graph.nodes if node.target == torch.ops.aten.conv2d.default]
        assert convs, "the quantized trunk computes its convolutions"
        return sum(node.args[1].op == "get_attr" for node in convs)

    assert float_weight_convs((paths[1],)) == float_weight_convs(()) + 1


# --- malformed metadata: one sentence naming the file and the flag that re-exports it, never a traceback --

GOOD_METADATA = {"names": ["a", "b"], "nc": 2, "stride": 32, "deploy": True, "img_size": [64, 64]}


def metadata_with(**entries) -> str:
    return json.dumps(GOOD_METADATA | entries)


WRONG_TYPES = [
    pytest.param(json.dumps([1, 2]), "it is [1, 2], not a mapping", id="a-list"),
    pytest.param(metadata_with(names="ab"), "names is 'ab', not a list", id="names-a-string"),
    pytest.param(metadata_with(names=[1, 2]), "names is [1, 2], not a list", id="names-numbers"),
    pytest.param(metadata_with(stride="32"), "stride is '32', not a positive", id="stride-text"),
    pytest.param(metadata_with(stride=-8), "stride is -8, not a positive", id="stride-negative"),
    pytest.param(metadata_with(img_size=[64]), "img_size is [64], not [height", id="img-size"),
    pytest.param(json.dumps({"names": ["a"], "img_size": [64, 64]}), "it has no stride", id="no-stride"),
]
MALFORMED = [pytest.param('{"names": ["a"', "is not JSON", id="not-json"), *WRONG_TYPES]
# a LiteRT / ExecuTorch file's first bytes: its flatbuffer's root offset, then its file identifier
FLATBUFFER_HEADERS = {".tflite": b"\x1c\x00\x00\x00TFL3", ".pte": b"\x1c\x00\x00\x00ET12"}
FLAGS_OF_SUFFIXES = {".tflite": "--tflite", ".pte": "--executorch"}


def with_zip(content: bytes, metadata_json: str) -> bytes:
    """``content`` with a zip holding metadata.json appended, as utils.deploy.metadata.with_zip_metadata
    appends it, but any text."""
    buffer = io.BytesIO(content)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("metadata.json", metadata_json)
    return buffer.getvalue()


def refusal_of(path: Path) -> str:
    from utils.deploy.backend import load_inference_model

    with pytest.raises(WeightsError) as error:
        load_inference_model(path)
    return str(error.value)


def assert_one_sentence(message: str, path: Path, problem: str, flag: str) -> None:
    assert message.startswith(f"{path} ") and problem in message, message
    assert message.endswith(f"re-export it with convert.py {flag}.") and message.count(". ") == 0, message


@pytest.mark.parametrize("suffix", [".tflite", ".pte"])
@pytest.mark.parametrize("metadata_json, problem", MALFORMED)
def test_malformed_zip_metadata_of_a_litert_or_executorch_file_is_one_sentence(
    tmp_path, suffix, metadata_json, problem
):
    """Read before the runtime is needed: these files are a flatbuffer's header and a crafted zip."""
    path = tmp_path / f"model{suffix}"
    path.write_bytes(with_zip(FLATBUFFER_HEADERS[suffix] + bytes(56), metadata_json))
    assert_one_sentence(refusal_of(path), path, problem, FLAGS_OF_SUFFIXES[suffix])


@pytest.mark.parametrize("suffix", [".tflite", ".pte"])
def test_a_damaged_metadata_zip_is_one_sentence(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    intact = with_zip(FLATBUFFER_HEADERS[suffix] + bytes(56), metadata_with())
    path.write_bytes(intact.replace(b'"names"', b'"namez"'))  # stored uncompressed: its CRC no longer holds
    assert_one_sentence(refusal_of(path), path, "the zip at its end is damaged", FLAGS_OF_SUFFIXES[suffix])


@pytest.mark.parametrize("metadata_json, problem", MALFORMED)
def test_malformed_torchscript_metadata_is_one_sentence(tmp_path, metadata_json, problem):
    path = tmp_path / "model.torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(
            torch.jit.script(torch.nn.Identity()), str(path), _extra_files={"config.txt": metadata_json}
        )
    assert_one_sentence(refusal_of(path), path, problem, "--torchscript")


@pytest.mark.parametrize("metadata_json, problem", WRONG_TYPES[1:])
def test_malformed_ncnn_metadata_yaml_is_one_sentence(tmp_path, metadata_json, problem):
    path = tmp_path / "model_ncnn_model"
    path.mkdir()
    for name in ("model.ncnn.param", "model.ncnn.bin"):
        (path / name).write_bytes(b"7767517\n")
    (path / "metadata.yaml").write_text(yaml.safe_dump(json.loads(metadata_json)))
    assert_one_sentence(refusal_of(path), path, problem, "--ncnn")


def test_detect_says_a_malformed_metadata_in_one_line(tmp_path, capsys):
    import detect

    path = tmp_path / "model.tflite"
    path.write_bytes(with_zip(FLATBUFFER_HEADERS[".tflite"] + bytes(56), metadata_with(stride=None)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--weights", str(path), "--source", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"detect.py: {path} carries malformed RepYOLO metadata (stride is None" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
