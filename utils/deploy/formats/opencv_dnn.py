"""OpenCV DNN (val.py and detect.py's --dnn, as yolov5's): the FP32 ONNX graph of convert.py --onnx
(best_fused.onnx) run by cv2.dnn, which opencv-python brings, so an .onnx runs with no ONNX Runtime. It
writes nothing of its own; the metadata is the graph's (utils.deploy.formats.onnx.read_graph)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from utils.deploy.formats.base import Artefact, Format
from utils.deploy.formats.onnx import read_graph
from utils.errors import WeightsError
from utils.inference import ArrayInferenceModel, InferenceModel


class OpenCVDnnInferenceModel(ArrayInferenceModel):
    """An FP32 ONNX graph run by cv2.dnn with its defaults: its own backend, on the CPU (``threads``: cv2's,
    for the whole process; setting the target explicitly only draws a warning from OpenCV 5's engine)."""

    kind = "opencv_dnn"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        metadata, quantized = read_graph(path)
        if quantized:
            raise WeightsError(
                f"{path} is an INT8 graph, which --dnn does not run; pass the FP32 .onnx, or drop --dnn."
            )
        with FORMAT.refusing(path, (cv2.error,)):
            self.net = cv2.dnn.readNetFromONNX(str(path))
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
