"""Fuse a trained RepYOLO checkpoint for deployment, verify it, and optionally export ONNX.

    python convert.py --weights runs/train/exp/weights/best.pt [--img 640] [--onnx] [--dynamic]
    python convert.py --weights best.pt --openvino --int8       # + OpenVINO IR, INT8 ONNX and INT8 IR
    python convert.py --weights best.pt --openvino --int8 --max-drop 1.0   # INT8 within 1 mAP50-95 point
    python convert.py --weights best.pt --onnx --torchscript --ncnn --tflite --executorch --mnn --int8

Every RepVGG block and every Conv+BN of the training form becomes one conv. The fused model is
checked against the training form on real images from the checkpoint's dataset (random input
when those are not on this machine) and is saved only when the relative error is at most 1e-5,
as ``best_fused.pt`` beside the input (``deploy: True``: loading builds the fused graph directly).
Every export is written from the fused model under a temporary name, checked against the model there and
only then renamed to its final name (utils.deploy.staging), so val.py, detect.py and serve.py never find a
refused one; a refusal names the artefacts it left unwritten (utils.deploy.edge for the edge formats, whose
converters come from requirements-edge.txt).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint import load_checkpoint
from utils.cli import device_option, option, parse_options, script_main
from utils.data.config import load_data_config
from utils.deploy.edge import EDGE_FORMATS
from utils.deploy.fuse import (
    FusionResult,
    format_report,
    fuse,
    fusion_report,
    load_with_images,
    save_fused,
    training_img_size,
)
from utils.deploy.metadata import int8_onnx_path, openvino_folder
from utils.deploy.pipeline import Int8Plan, OnnxSettings, write_edge, write_int8, write_onnx, write_openvino
from utils.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, calibration_files
from utils.deploy.staging import Release
from utils.device import select_device
from utils.errors import CheckpointError, ConfigError, ConversionError, DataError, UserError

LOGGER = logging.getLogger(__name__)


@dataclass
class ConvertOptions:
    """What convert.py's flags set (utils.cli.option)."""

    weights: str | Path = option(
        None, "training-form checkpoint, e.g. best.pt (or a yolov5 .pt)", required=True
    )
    output: str | Path | None = option(None, "fused checkpoint path (default: <stem>_fused.pt beside it)")
    img_size: int | None = option(
        None, "verification and ONNX input size (default: the training image size, else 640)",
        "--img", "--img-size", "--imgsz", type=int,
    )  # fmt: skip
    onnx: bool = option(False, "also export <output stem>.onnx and check it")
    opset: int = option(17, "ONNX opset")
    dynamic: bool = option(False, "ONNX with dynamic batch, height and width")
    openvino: bool = option(False, "also write an OpenVINO IR, <stem>_openvino_model/ (implies --onnx)")
    int8: bool = option(
        False, "also write INT8 models: <stem>_int8.onnx (ONNX Runtime) and, with --openvino, "
        "<stem>_int8_openvino_model/ (NNCF); implies --onnx",
    )  # fmt: skip
    torchscript: bool = option(False, "also write <stem>.torchscript")
    ncnn: bool = option(False, "also write an NCNN model, <stem>_ncnn_model/ (pnnx)")
    tflite: bool = option(
        False, "also write LiteRT models <stem>.tflite and <stem>_float16.tflite, with --int8 also "
        "<stem>_int8.tflite (litert-torch)",
    )  # fmt: skip
    executorch: bool = option(
        False, "also write an ExecuTorch program <stem>.pte (XNNPACK), with --int8 also <stem>_int8.pte"
    )
    mnn: bool = option(False, "also write an MNN model <stem>.mnn from the ONNX (implies --onnx)")
    coreml: bool = option(False, "also write a CoreML ML Program <stem>.mlpackage (runs on macOS only)")
    calib: int = option(DEFAULT_CALIBRATION_IMAGES, "INT8 calibration images (default %(default)s)")
    calib_data: str | Path | None = option(
        None, "calibration images: a dataset YAML (its train split), a folder or a .txt list "
        "(default: the checkpoint's training split)",
    )  # fmt: skip
    max_drop: float | None = option(
        None, "with --int8: keep the most sensitive layers float until the INT8 mAP50-95 on the validation "
        "split is within this many points of the float model's", type=float,
    )  # fmt: skip
    data: str | Path | None = option(
        None, "dataset YAML whose val split --max-drop measures (default: the checkpoint's dataset)"
    )
    device: str = device_option("cpu", "cpu or a CUDA index such as 0")
    runs: int = option(10, "timed runs per model for the latency rows")
    threads: int = option(0, "CPU threads for the latency rows, PyTorch and ORT alike (0: defaults)")

    @property
    def exports_onnx(self) -> bool:
        return self.onnx or self.openvino or self.int8 or self.mnn

    @property
    def edge_formats(self) -> list[str]:
        """The edge formats asked for, in utils.deploy.edge.EDGE_FORMATS order."""
        return [flag for flag in EDGE_FORMATS if getattr(self, flag)]

    @property
    def exports(self) -> bool:
        return self.exports_onnx or bool(self.edge_formats)

    def onnx_settings(self) -> OnnxSettings:
        return OnnxSettings(self.opset, self.dynamic, self.runs, self.threads)


def parse_args(argv: list[str] | None = None) -> ConvertOptions:
    return parse_options(ConvertOptions, argv, __doc__)


def default_output(weights: Path) -> Path:
    return weights.with_name(f"{weights.stem}_fused.pt")


def check_output(output: Path, weights: Path) -> None:
    """Refuse an output that would replace the input or a file that is not an earlier fused checkpoint
    (a training checkpoint, say); an earlier fused checkpoint is replaced, with a word."""
    if output.resolve() == weights.resolve():
        raise ConversionError(
            f"--output {output} is the input checkpoint itself, which converting would replace; "
            "choose another --output (default: <stem>_fused.pt beside the input)."
        )
    if output.exists():
        try:
            previous = load_checkpoint(output)
        except CheckpointError:
            previous = {}
        if not previous.get("deploy"):
            raise ConversionError(
                f"--output {output} already exists and is not a fused checkpoint, so it would be lost; "
                "choose another --output or move that file."
            )
        LOGGER.warning("Replacing the earlier fused checkpoint %s.", output)


def run(weights: str | Path | ConvertOptions, **values: Any) -> dict:
    """Convert ``weights``; returns the report as a dict (also printed). Raises ConversionError.

    ``weights`` and the other ConvertOptions fields as keywords (``values``), or a whole ConvertOptions.
    runs: timed calls per model for the latency rows; threads: CPU threads while timing (0: defaults).
    """
    options = weights if isinstance(weights, ConvertOptions) else ConvertOptions(weights, **values)
    weights = Path(options.weights)
    device = select_device(options.device)
    ckpt = load_checkpoint(weights)
    img_size = options.img_size or training_img_size(ckpt)
    plan = int8_plan(ckpt, options)  # bad INT8 arguments fail before any work
    for flag in options.edge_formats:
        EDGE_FORMATS[flag].require()  # so does a converter that is not installed
    if ckpt.get("deploy"):
        LOGGER.info("%s is already fused (deploy: True); nothing to convert.", weights)
        report = {"status": "already fused", "weights": str(weights), "output": None}
        if not options.exports:
            return report
        model, images, _ = load_with_images(ckpt, img_size, device)
        onnx_path = weights.with_suffix(".onnx")
    else:
        output = Path(options.output) if options.output else default_output(weights)
        check_output(output, weights)
        result = fuse(ckpt, img_size, device)
        save(result, ckpt, weights, output)
        report = fusion_report(result, weights, output, options.runs, options.threads)
        print(format_report(report))
        print(f"Saved the fused checkpoint to {output}")
        model, images, onnx_path = result.fused, result.images, output.with_suffix(".onnx")
    release = Release(planned_artefacts(options, onnx_path))
    try:
        if options.exports_onnx:
            report.update(export(model, onnx_path, images, options, plan, release))
        if options.edge_formats:
            kept = report.get("bounded", {}).get("onnx", {}).get("kept_float", [])  # --max-drop's search
            edge = export_edge(model, onnx_path, images, options, plan, kept, release)
            report["edge"] = edge["edge"]
            report["bounded"] = report.get("bounded", {}) | edge["bounded"]
    except UserError as error:  # a refused artefact: nothing under its name, nor under the later ones'
        raise release.refusal(error) from None
    return report


def planned_artefacts(options: ConvertOptions, onnx_path: Path) -> dict[Path, str]:
    """Every artefact the flags ask for, {final path: its format's title}, in the order they are written."""
    planned = {}
    if options.exports_onnx:
        planned[onnx_path] = "ONNX"
    if options.openvino:
        planned[openvino_folder(onnx_path)] = "OpenVINO IR"
    if options.int8:
        planned[int8_onnx_path(onnx_path)] = "INT8 ONNX"
        if options.openvino:
            planned[openvino_folder(int8_onnx_path(onnx_path))] = "INT8 OpenVINO IR"
    for flag in options.edge_formats:
        edge_format = EDGE_FORMATS[flag]
        artefacts = edge_format.artefacts(onnx_path.with_suffix(""), options.int8)
        planned |= dict.fromkeys(artefacts, edge_format.title)
    return planned


def save(result: FusionResult, ckpt: dict, weights: Path, output: Path) -> None:
    try:
        save_fused(result, ckpt, weights, output)
    except OSError as error:
        raise ConversionError(
            f"cannot write {output} ({error.strerror or error}); pass an --output in a writable folder."
        ) from None


def int8_plan(ckpt: dict, options: ConvertOptions) -> Int8Plan | None:
    """What --int8 calibrates on and, with --max-drop, the validation split it is scored on; None without
    --int8. Raises ConfigError / DataError (one sentence) before any work."""
    calibration = calibration_files(ckpt, options.calib_data, options.calib) if options.int8 else []
    validation = validation_config(ckpt, options.data, options.max_drop, options.int8)
    return Int8Plan(calibration, validation, options.max_drop) if options.int8 else None


def validation_config(ckpt: dict, data: str | Path | None, max_drop: float | None, int8: bool) -> dict | None:
    """The dataset whose val split --max-drop measures: ``data`` if given, else the checkpoint's own;
    None without --max-drop. Raises ConfigError / DataError (one sentence) before any work."""
    if max_drop is None:
        return None
    if not int8:
        raise ConfigError("--max-drop bounds the INT8 accuracy drop; add --int8.")
    if not max_drop >= 0:
        raise ConfigError(
            f"--max-drop {max_drop} must be a non-negative number of mAP50-95 points, e.g. 1.0."
        )
    config = load_data_config(data) if data is not None else dict(ckpt.get("data") or {})
    sources = config.get("val") or []
    if not sources or not all(Path(source).exists() for source in sources):
        described = data if data is not None else "the checkpoint's dataset"
        raise DataError(
            f"--max-drop measures mAP on a validation split and {described} has none on this machine "
            f"({', '.join(map(str, sources)) or 'no val entry'}); pass the dataset YAML with --data."
        )
    return config


def export(
    model: nn.Module,
    onnx_path: Path,
    images: torch.Tensor,
    options: ConvertOptions,
    plan: Int8Plan | None,
    release: Release,
) -> dict:
    """The exports of the fused ``model``, each checked on ``images``, published through ``release`` and
    printed: the ONNX graph at ``onnx_path``, then with --openvino its IR, with --int8 the INT8 models.
    Returns the report's "onnx", "runtimes" ({artefact path: its check}) and "bounded" ({runtime: what
    --max-drop kept float})."""
    checked = write_onnx(model, onnx_path, images, options.onnx_settings(), release)
    print(checked.describe())
    runtimes = []
    if options.openvino:
        runtimes.append(write_openvino(model, onnx_path, images, release))
        print(runtimes[-1].describe())
    bounded = {}
    if plan is not None:
        quantized = write_int8(model, onnx_path, images, plan, options.openvino, release)
        print(quantized.describe())
        runtimes += quantized.checks
        bounded = {runtime: dataclasses.asdict(result) | {"drop": result.drop}
                   for runtime, result in quantized.bounded.items()}  # fmt: skip
    return {
        "onnx": dataclasses.asdict(checked),
        "runtimes": {check.path: dataclasses.asdict(check) for check in runtimes},
        "bounded": bounded,
    }


def export_edge(
    model: nn.Module,
    onnx_path: Path,
    images: torch.Tensor,
    options: ConvertOptions,
    plan: Int8Plan | None,
    kept: list[str],
    release: Release,
) -> dict:
    """The edge formats of the fused ``model`` beside ``onnx_path`` (MNN converts the published graph there),
    each checked on ``images``, published through ``release`` and printed; ``kept``: the convolutions ONNX
    Runtime's --max-drop search kept float. Returns the report's "edge" ({artefact path: its check}) and
    the INT8 artefacts' "bounded" entries."""
    onnx_written = onnx_path if options.exports_onnx else None
    base = onnx_path.with_suffix("")
    edge = write_edge(model, base, images, options.edge_formats, onnx_written, plan, kept, release)
    print(edge.describe())
    return {
        "edge": {check.path: dataclasses.asdict(check) for check in edge.checks},
        "bounded": {
            path: dataclasses.asdict(result) | {"drop": result.drop} for path, result in edge.bounded.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    status, _ = script_main("convert.py", run, parse_args(argv))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
