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
refused one; a refusal names the artefacts it left unwritten. Each format is one module of
utils.deploy.formats, which names the requirements file its converters come from.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.checkpoint import load_checkpoint
from utils.cli import device_option, flag_set, option, options_from, parse_options, script_main
from utils.data.config import load_data_config
from utils.deploy.formats import REGISTRY, convert_flags
from utils.deploy.formats.base import Format, OnnxSettings
from utils.deploy.fuse import (
    FusionResult,
    format_report,
    fuse,
    fusion_report,
    load_with_images,
    save_fused,
    training_img_size,
)
from utils.deploy.int8.calibration import DEFAULT_CALIBRATION_IMAGES, calibration_files
from utils.deploy.pipeline import ExportResult, Int8Plan, export_inputs, write_formats
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
    formats: list[str] = flag_set(convert_flags())  # --onnx, --openvino, --torchscript, ... (the registry)
    opset: int = option(17, "ONNX opset")
    dynamic: bool = option(False, "ONNX with dynamic batch, height and width")
    int8: bool = option(
        False, "also write the INT8 model of each format that has one: ONNX Runtime's (always), OpenVINO's "
        "(NNCF), LiteRT's and ExecuTorch's (PT2E); implies --onnx",
    )  # fmt: skip
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

    def written_formats(self) -> list[Format]:
        """The formats to write, in the registry's order: those asked for, and the ONNX graph where another
        converts it or --int8 quantizes it."""
        onnx = self.int8 or any(REGISTRY[name].reads_onnx for name in self.formats)
        return [fmt for fmt in REGISTRY.values() if fmt.flag in self.formats or (onnx and fmt.name == "onnx")]

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

    ``weights`` and the other ConvertOptions fields as keywords (``values``; a format by its flag,
    ``onnx=True``), or a whole ConvertOptions.
    runs: timed calls per model for the latency rows; threads: CPU threads while timing (0: defaults).
    """
    options = (
        weights
        if isinstance(weights, ConvertOptions)
        else options_from(ConvertOptions, {"weights": weights, **values})
    )
    weights = Path(options.weights)
    device = select_device(options.device)
    ckpt = load_checkpoint(weights)
    img_size = options.img_size or training_img_size(ckpt)
    plan = int8_plan(ckpt, options)  # bad INT8 arguments fail before any work
    formats = options.written_formats()
    for fmt in formats:  # so does a missing converter
        fmt.require(f"--{fmt.flag}", ConversionError, f" (or drop --{fmt.flag})")
    if ckpt.get("deploy"):
        LOGGER.info("%s is already fused (deploy: True); nothing to convert.", weights)
        report = {"status": "already fused", "weights": str(weights), "output": None}
        if not formats:
            return report
        model, images, _ = load_with_images(ckpt, img_size, device)
        base = weights.with_suffix("")
    else:
        output = Path(options.output) if options.output else default_output(weights)
        check_output(output, weights)
        result = fuse(ckpt, img_size, device)
        save(result, ckpt, weights, output)
        report = fusion_report(result, weights, output, options.runs, options.threads)
        print(format_report(report))
        print(f"Saved the fused checkpoint to {output}")
        model, images, base = result.fused, result.images, output.with_suffix("")
    planned = {
        path: title for fmt in formats for path, title in fmt.artefact_paths(base, options.int8).items()
    }
    release = Release(planned)
    inputs = export_inputs(model, images, base, options.onnx_settings(), plan)
    try:
        exported = write_formats(model, images, formats, inputs, release, print_check)
    except UserError as error:  # a refused artefact: nothing under its name, nor under the later ones'
        raise release.refusal(error) from None
    if exported.bounded or exported.int8:
        print(exported.describe(checks=False))
    return report | exported_report(exported, base)


def print_check(check) -> None:
    print(check.describe())


def exported_report(exported: ExportResult, base: Path) -> dict:
    """The report's "checks" ({artefact path: its check}), "onnx" (the FP32 graph's, when written) and
    "bounded" ({artefact path: what --max-drop kept float})."""
    checks = {path: dataclasses.asdict(check) for path, check in exported.checks.items()}
    bounded = {
        path: dataclasses.asdict(result) | {"drop": result.drop} for path, result in exported.bounded.items()
    }
    report = {"checks": checks, "bounded": bounded}
    onnx_path = REGISTRY["onnx"].artefacts[0].path(base)
    if str(onnx_path) in checks:
        report["onnx"] = checks[str(onnx_path)]
    return report


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


def main(argv: list[str] | None = None) -> None:
    status, _ = script_main("convert.py", run, parse_args(argv))
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
