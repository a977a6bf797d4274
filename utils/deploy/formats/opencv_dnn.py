"""OpenCV DNN (val.py and detect.py's --dnn, as yolov5's): the FP32 ONNX graph of convert.py --onnx
(best_fused.onnx) run by cv2.dnn, which opencv-python brings, so an .onnx runs with no ONNX Runtime. It
writes nothing of its own; the metadata is the graph's (utils.deploy.formats.onnx.read_graph)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.deploy.formats.base import Artefact, Format
from utils.deploy.formats.onnx import read_graph
from utils.errors import WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel

LOGGER = logging.getLogger(__name__)


class OpenCVDnnInferenceModel(ArrayInferenceModel):
    """An FP32 ONNX graph run by cv2.dnn on the CPU (``threads``: cv2's, for the whole process)."""

    kind = "opencv_dnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        metadata, quantized = read_graph(path)
        if quantized:
            raise WeightsError(
                f"{path} is an INT8 graph, which --dnn does not run; pass the FP32 .onnx, or drop --dnn."
            )
        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as error:
            LOGGER.debug("cv2.dnn could not load %s: %s", path, error)
            raise FORMAT.corrupt(path) from None
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if threads:
            cv2.setNumThreads(threads)
        input_shape = [1, 3, *metadata["img_size"]] if not metadata.get("dynamic") else [None] * 4
        super().__init__(path, metadata, device, input_shape)

    def run_array(self, array: np.ndarray) -> np.ndarray:
        self.net.setInput(array)
        return self.net.forward().copy()


class OpenCVDnnFormat(Format):
    name = "opencv_dnn"
    title = "OpenCV DNN"
    runtime_flag = "dnn"
    runs = "onnx"
    artefacts = (Artefact(".onnx"),)

    def corrupt(self, path: Path) -> WeightsError:
        return WeightsError(f"{path} is a graph cv2.dnn cannot run; re-export it with convert.py --onnx.")

    def load(self, path: Path, device: torch.device, threads: int = 0, half: bool = False) -> InferenceModel:
        return OpenCVDnnInferenceModel(path, device, threads)


FORMAT = OpenCVDnnFormat()
