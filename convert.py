"""Fuse a trained RepYOLO checkpoint for deployment, verify it, and optionally export ONNX.

    python convert.py --weights runs/train/exp/weights/best.pt [--img 640] [--onnx] [--dynamic]
    python convert.py --weights best.pt --openvino --int8       # + OpenVINO IR, INT8 ONNX and INT8 IR
    python convert.py --weights best.pt --openvino --int8 --max-drop 1.0   # INT8 within 1 mAP50-95 point

Every RepVGG block and every Conv+BN of the training form becomes one conv. The fused model is
checked against the training form on real images from the checkpoint's dataset (random input
when those are not on this machine) and is saved only when the relative error is at most 1e-5,
as ``best_fused.pt`` beside the input (``deploy: True``: loading builds the fused graph directly).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import onnx as onnx_lib

from utils.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from utils.data.config import load_data_config
from utils.data.preprocess import check_img_size
from utils.deploy.backend import load_inference_model
from utils.deploy.export import (
    MAX_ONNX_RELATIVE_ERROR,
    compare_with_model,
    export_and_check,
    export_openvino,
    openvino_folder,
    read_metadata,
    write_openvino_metadata,
)
from utils.deploy.fuse import (
    MAX_RELATIVE_ERROR,
    format_report,
    fuse_and_verify,
    fusion_report,
    training_img_size,
    verification_input,
)
from utils.deploy.partial_quantization import map_scorer, quantize_onnx_bounded, quantize_openvino_bounded
from utils.deploy.quantize import (
    DEFAULT_CALIBRATION_IMAGES,
    calibration_files,
    decode_tail_nodes,
    quantize_onnx,
    quantize_openvino,
)
from utils.deploy.validation import validation_loader
from utils.device import select_device
from utils.errors import USER_ERRORS, CheckpointError, ConfigError, ConversionError, DataError
from utils.log import setup_logging

LOGGER = logging.getLogger(__name__)
# Checkpoint keys that describe the run and stay useful beside the fused weights.
CARRIED_KEYS = ("epoch", "best_fitness", "date", "hyp", "opt", "data", "results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", required=True, help="training-form checkpoint, e.g. best.pt (or a yolov5 .pt)"
    )
    parser.add_argument(
        "--output", default=None, help="fused checkpoint path (default: <stem>_fused.pt beside it)"
    )
    parser.add_argument(
        "--img",
        "--img-size",
        dest="img_size",
        type=int,
        default=None,
        help="verification and ONNX input size (default: the training image size, else 640)",
    )
    parser.add_argument("--onnx", action="store_true", help="also export <output stem>.onnx and check it")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--dynamic", action="store_true", help="ONNX with dynamic batch, height and width")
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="also write an OpenVINO IR, <stem>_openvino_model/ (implies --onnx)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write INT8 models: <stem>_int8.onnx (ONNX Runtime) and, with --openvino, "
        "<stem>_int8_openvino_model/ (NNCF); implies --onnx",
    )
    parser.add_argument(
        "--calib",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="INT8 calibration images (default %(default)s)",
    )
    parser.add_argument(
        "--calib-data",
        default=None,
        help="calibration images: a dataset YAML (its train split), a folder or a .txt list "
        "(default: the checkpoint's training split)",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=None,
        help="with --int8: keep the most sensitive layers float until the INT8 mAP50-95 on the validation "
        "split is within this many points of the float model's",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="dataset YAML whose val split --max-drop measures (default: the checkpoint's dataset)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model for the latency rows")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for the latency rows, PyTorch and ORT alike (0: defaults)",
    )
    return parser.parse_args(argv)


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


def run(
    weights: str | Path,
    output: str | Path | None = None,
    img_size: int | None = None,
    onnx: bool = False,
    opset: int = 17,
    dynamic: bool = False,
    device: str = "cpu",
    runs: int = 10,
    threads: int = 0,
    openvino: bool = False,
    int8: bool = False,
    calib: int = DEFAULT_CALIBRATION_IMAGES,
    calib_data: str | Path | None = None,
    max_drop: float | None = None,
    data: str | Path | None = None,
) -> dict:
    """Convert ``weights``; returns the report as a dict (also printed). Raises ConversionError.

    runs: timed calls per model for the latency rows; threads: CPU threads while timing (0: defaults).
    """
    weights = Path(weights)
    device = select_device(device)
    ckpt = load_checkpoint(weights)
    img_size = img_size or training_img_size(ckpt)
    onnx = onnx or openvino or int8
    calibration = calibration_files(ckpt, calib_data, calib) if int8 else []  # fail before any work
    validation = validation_config(ckpt, data, max_drop, int8)
    if ckpt.get("deploy"):
        LOGGER.info("%s is already fused (deploy: True); nothing to convert.", weights)
        report = {"status": "already fused", "weights": str(weights), "output": None}
        if onnx:
            model = model_from_checkpoint(ckpt).to(device).float().eval()
            img_size = check_img_size(img_size, int(model.stride.max()))
            images = verification_input(ckpt, img_size, device)[0]
            report["onnx"] = export_and_check(
                model, weights.with_suffix(".onnx"), images, opset, dynamic, runs, threads
            )
            report["runtimes"], report["bounded"] = export_runtimes(
                model, weights.with_suffix(".onnx"), images, openvino, calibration, validation, max_drop
            )
        return report
    output = Path(output) if output else default_output(weights)
    check_output(output, weights)
    result = fuse_and_verify(ckpt, img_size, device)
    img_size = result["img_size"]
    if not result["rel"] <= MAX_RELATIVE_ERROR:
        raise ConversionError(
            f"fused model of {weights} differs from the training form by relative error {result['rel']:.3g} "
            f"(limit {MAX_RELATIVE_ERROR:g}) on {result['input']}; not saved — check the checkpoint's BN "
            f"statistics for NaN/inf or report the model config."
        )
    carried = {key: ckpt[key] for key in CARRIED_KEYS if key in ckpt}
    try:
        save_checkpoint(make_checkpoint(result["fused"], **carried, converted_from=str(weights)), output)
    except OSError as error:
        raise ConversionError(
            f"cannot write {output} ({error.strerror or error}); pass an --output in a writable folder."
        ) from None
    report = fusion_report(result, weights, output, img_size, runs, threads)
    print(format_report(report))
    print(f"Saved the fused checkpoint to {output}")
    if onnx:
        onnx_path = output.with_suffix(".onnx")
        report["onnx"] = export_and_check(
            result["fused"], onnx_path, result["images"], opset, dynamic, runs, threads
        )
        report["runtimes"], report["bounded"] = export_runtimes(
            result["fused"], onnx_path, result["images"], openvino, calibration, validation, max_drop
        )
    return report


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


def export_runtimes(
    model,
    onnx_path: Path,
    images,
    openvino: bool,
    calibration: list[str],
    validation: dict | None = None,
    max_drop: float | None = None,
) -> tuple[dict, dict]:
    """The OpenVINO IR and the INT8 models beside ``onnx_path``, each checked against PyTorch on
    ``images``; with ``max_drop`` the INT8 models keep layers float until their mAP50-95 on
    ``validation``'s val split is within ``max_drop`` points of the float model's. Returns ({artefact
    path: its comparison}, {runtime: the bounded-drop result}, empty without ``max_drop``)."""
    img_size = int(images.shape[-1])
    written = {}
    if openvino:
        xml = export_openvino(onnx_path)
        written[str(xml.parent)] = compare_with_model(model, xml.parent, images, MAX_ONNX_RELATIVE_ERROR)
    if not calibration:
        return written, {}
    int8_onnx = onnx_path.with_name(f"{onnx_path.stem}_int8.onnx")
    fp32 = onnx_lib.load(str(onnx_path))
    kept = decode_tail_nodes(fp32)
    LOGGER.info(
        "INT8: calibrated on %d images; %d nodes of the head (its last convolutions and the box decode "
        "after them) stay float: %s",
        len(calibration),
        len(kept),
        ", ".join(kept),
    )
    bounded = {}
    if validation is None:
        quantize_onnx(onnx_path, int8_onnx, calibration, img_size)
    else:
        predictor = load_inference_model(onnx_path)  # static: the square letterboxes val.py uses for it
        batches = list(validation_loader(validation, "val", img_size, 32, 0, predictor))
        score = map_scorer(list(validation["names"]))
        bounded["onnx"] = quantize_onnx_bounded(
            onnx_path, int8_onnx, calibration, img_size, batches, score, max_drop
        )
        LOGGER.info(bounded["onnx"].describe())
    written[str(int8_onnx)] = compare_with_model(model, int8_onnx, images, None)
    if openvino:
        int8_dir = openvino_folder(int8_onnx)
        int8_xml = int8_dir / f"{int8_onnx.stem}.xml"
        metadata = read_metadata(fp32)  # the INT8 graph carries the FP32 file's metadata (quantize_onnx)
        if validation is None:
            quantize_openvino(xml, int8_xml, calibration, img_size, kept)
        else:
            bounded["openvino"] = quantize_openvino_bounded(
                xml, int8_xml, calibration, img_size, kept, batches, score, metadata, max_drop
            )
            LOGGER.info(bounded["openvino"].describe())
        write_openvino_metadata(int8_dir, metadata)
        written[str(int8_dir)] = compare_with_model(model, int8_dir, images, None)
    return written, {runtime: vars(result) | {"drop": result.drop} for runtime, result in bounded.items()}


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    try:
        run(**vars(args))
    except USER_ERRORS as error:
        LOGGER.error(f"convert.py: {error}")
        sys.exit(2)


if __name__ == "__main__":
    main()
