"""Post-training INT8 quantization of an exported detector, for ONNX Runtime (static QDQ, per-channel
weights) and for OpenVINO (NNCF), calibrated on real images.

What stays float: the detection head, i.e. the last convolutions (the Detect layer's 1x1 convs, whose
raw logits mix box offsets, objectness and class scores in one tensor) and every node after them (the
reshape, sigmoid, grid and anchor arithmetic and the concatenation). The decoded output holds box
coordinates in input pixels up to the image size next to scores in 0..1; one shared 8-bit scale for
both destroys the boxes (a naive quantization of YOLOv5 scores 0 mAP for exactly this reason). Every
other convolution, where the time goes, is quantized.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import onnx

from utils.data.config import image_files_from_sources, load_data_config
from utils.data.preprocess import image_to_tensor, letterbox
from utils.deploy.graph import decode_tail_nodes
from utils.deploy.metadata import INPUT_NAME
from utils.errors import DataError, DataNotFoundError

LOGGER = logging.getLogger(__name__)
DEFAULT_CALIBRATION_IMAGES = 128


def calibration_files(ckpt: dict, calib_data: str | Path | None, count: int) -> list[str]:
    """Up to ``count`` images evenly spread over the calibration source: ``calib_data`` (a dataset YAML,
    whose train split is used, or a folder or .txt list of images), else the checkpoint's training split.
    Raises DataError naming what was looked at when no image is there: never random calibration."""
    if calib_data is not None:
        source = Path(calib_data)
        sources = load_data_config(source)["train"] if source.suffix in (".yaml", ".yml") else [str(source)]
        described = str(calib_data)
    else:
        sources = (ckpt.get("data") or {}).get("train") or []
        described = f"the checkpoint's training split ({', '.join(map(str, sources)) or 'not recorded'})"
    try:
        files = image_files_from_sources(sources) if sources else []
    except DataNotFoundError:
        files = []
    if not files:
        raise DataError(
            f"INT8 calibration needs images and none were found in {described}; pass calibration images "
            "with --calib-data (a dataset YAML, an image folder or a .txt list)."
        )
    step = max(len(files) / count, 1.0)
    return [files[int(i * step)] for i in range(min(count, len(files)))]


def calibration_batches(files: list[str], img_size: int) -> Iterator[np.ndarray]:
    """Each file letterboxed to img_size x img_size as the network input: float32 (1, 3, H, W) RGB 0..1."""
    for file in files:
        image = cv2.imread(file)
        if image is None:
            LOGGER.warning("calibration: skipping %s, which cannot be read.", file)
            continue
        image = letterbox(image, img_size, auto=False)[0]
        yield image_to_tensor(image).numpy()[None].astype(np.float32) / 255


def quantize_onnx(fp32_path: Path, int8_path: Path, files: list[str], img_size: int) -> None:
    """ONNX Runtime static quantization: QDQ format, per-channel int8 weights, uint8 activations
    calibrated on ``files``; the decode tail (decode_tail_nodes) stays float. The INT8 file carries the
    FP32 file's metadata."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_batches(files, img_size)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    model = onnx.load(str(fp32_path))
    kept_float = decode_tail_nodes(model)
    quantize_static(
        str(fp32_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=kept_float,
        # activation ranges averaged over the calibration images instead of their extremes: a few
        # outlier pixels would otherwise stretch the ranges of the fused RepVGG activations (1.65 points
        # of mAP50-95 lost on the bundled repyolov5s with plain min/max, 0.03 with the average)
        extra_options={"CalibMovingAverage": True},
    )
    quantized = onnx.load(str(int8_path))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)  # names, stride, input size: as the FP32 file
    onnx.save(quantized, str(int8_path))


def quantize_openvino(
    fp32_xml: Path, int8_xml: Path, files: list[str], img_size: int, kept_float: list[str]
) -> list[str]:
    """NNCF post-training quantization of an OpenVINO IR (mixed preset: symmetric weights, asymmetric
    activations), the ``kept_float`` nodes (ONNX names, kept by the conversion) left float; saved as
    ``int8_xml``. Returns the names it kept float."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(fp32_xml))
    ignored = openvino_names(model, kept_float)
    dataset = nncf.Dataset(list(calibration_batches(files, img_size)))
    quantized = nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(files),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
    )
    int8_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(int8_xml), compress_to_fp16=False)
    return ignored


def openvino_names(model, onnx_names: list[str]) -> list[str]:
    """The ops of an OpenVINO model converted from ONNX that stand for ``onnx_names``: a Conv becomes
    "<name>/WithoutBiases" (the Convolution) and "<name>" (its bias Add); other ops keep their name."""
    present = {op.get_friendly_name() for op in model.get_ops()}
    wanted = [variant for name in onnx_names for variant in (name, f"{name}/WithoutBiases")]
    return [name for name in wanted if name in present]
