"""The detector for Python code: weights in, detections in original-image pixels out.

    detector = Detector("best.pt")  # a training-form or fused .pt, or any export of convert.py
    results = detector(["a.jpg", pil_image, rgb_array], size=640)
    results.print()
    results.xyxy[0]  # Tensor[n, 6]: x1, y1, x2, y2 (pixels of a.jpg), confidence, class
    detector(frame_bgr, channels="bgr")  # an OpenCV frame (cv2.imread, cv2.VideoCapture)
    detector.track(frame)  # Tensor[n, 7]: the same with a persistent track ID (utils.deploy.tracking)

Numpy arrays are RGB, as yolov5's AutoShape takes them; OpenCV's BGR frames go through ``channels="bgr"``
(detect.py does). A float Tensor[B, 3, H, W] gets the network's raw output, as in yolov5 (see
``raw_predictions``).

Each image is letterboxed on its own, padded only up to the stride as detect.py does, so its detections
do not depend on the other images of the call (up to the rounding of a batched convolution); images
whose letterboxed shapes match run as one batch. detect.py is a command line over this class; serve.py
calls its pieces (``thresholds``, ``prepare``, ``run_prepared``) to batch images from different requests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from utils.boxes import scale_boxes_to_original
from utils.data.image_inputs import (
    CHANNEL_ORDERS,
    ImageInput,
    Prepared,
    check_network_batch,
    load_input,
    same_shape_batches,
)
from utils.data.preprocess import check_img_size, image_to_tensor, letterbox
from utils.deploy.backend import load_inference_model
from utils.deploy.detections import Detections, Failure
from utils.deploy.tracking import Tracker, low_conf
from utils.deploy.tta import AugmentedInference
from utils.device import half_dtype, select_device, time_sync
from utils.errors import ConfigError
from utils.inference import InferenceModel, TorchInferenceModel
from utils.nms import non_max_suppression

LOGGER = logging.getLogger(__name__)

MAX_BATCH = 32  # images per forward pass


class Detector:
    """Detect objects in images with any weights RepYOLO writes (see module docstring).

    Settings used by every call (set them as attributes, yolov5-style, or pass them to a call):
    size (int or (h, w); None: the size the model was trained or exported at, else 640), conf (score
    threshold), iou (NMS IoU threshold), classes (keep only these class indices; None: all), agnostic
    (suppress across classes), max_det (boxes per image).
    half: yolov5's --half, see utils.deploy.backend.load_inference_model (float16 on CUDA, bfloat16 on
    a CPU that computes it natively; refused elsewhere). augment: yolov5's test-time augmentation
    (--augment, utils.deploy.tta) for every call, unless a call says otherwise. runtime: a format that
    runs the weights in place of their own (detect.py's --dnn: "opencv_dnn"; utils.deploy.formats).
    """

    def __init__(
        self,
        weights: str | Path | InferenceModel | torch.nn.Module,
        device: str = "",
        half: bool = False,
        augment: bool = False,
        runtime: str | None = None,
    ) -> None:
        if isinstance(weights, InferenceModel):
            self.model = weights
        elif isinstance(weights, torch.nn.Module):  # e.g. an untrained models.yolo.Model
            torch_device = select_device(device)
            dtype = half_dtype(torch_device) if half else None
            self.model = TorchInferenceModel(weights.float().eval().to(torch_device), torch_device, dtype)
        else:
            self.model = load_inference_model(weights, device, half=half, runtime=runtime)
        self.names = self.model.names
        self.size: int | Sequence[int] | None = None
        self.conf, self.iou, self.max_det = 0.25, 0.45, 1000
        self.classes: list[int] | None = None
        self.agnostic = False
        self.augment = augment
        self._augmented = AugmentedInference(self.model)
        self.trackers: dict[Hashable, Tracker] = {}  # one per stream (``tracker``)

    def input_hw(self, size: int | Sequence[int] | None = None) -> tuple[int, int]:
        """(height, width) to letterbox to: the size an export with a fixed input was written for, else
        ``size`` (default: the detector's) rounded up to the stride. Raises ConfigError for a size below 1."""
        if size is None:
            size = self.size if self.size is not None else self.model.train_img_size or 640
        whole = (int, np.integer)
        sizes = list(size) * (2 if len(size) == 1 else 1) if isinstance(size, (list, tuple)) else [size] * 2
        bad = [s for s in sizes if not isinstance(s, whole) or s < 1]
        if len(sizes) != 2 or bad:
            named = bad[0] if bad else size
            raise ConfigError(f"image size {named} is not usable; give a positive whole number such as 640.")
        model = self.model
        if model.fixed_input_hw is not None:
            if tuple(sizes) != model.fixed_input_hw:
                LOGGER.info(
                    "using the size %s the weights were exported for instead of %s",
                    model.fixed_input_hw,
                    sizes,
                )
            return model.fixed_input_hw
        height = check_img_size(sizes[0], model.stride)
        return height, height if sizes[1] == sizes[0] else check_img_size(sizes[1], model.stride)

    def check_classes(self, classes: list[int] | None) -> None:
        """Raises ConfigError when a class index is not one this model predicts."""
        nc = self.model.nc
        wrong = [c for c in classes or [] if not 0 <= int(c) < nc]
        if wrong:
            listed = ", ".join(self.names[:10]) + (", ..." if nc > 10 else "")
            raise ConfigError(
                f"class indices {wrong} are out of range: this model predicts {nc} classes, 0 to {nc - 1} "
                f"({listed}); pick indices in that range."
            )

    def warmup(self, size: int | Sequence[int] | None = None) -> None:
        self.model.warmup(self.input_hw(size))

    def __call__(
        self,
        inputs: ImageInput | Sequence[ImageInput] | torch.Tensor,
        size: int | Sequence[int] | None = None,
        augment: bool | None = None,
        errors: str = "raise",
        channels: str = "rgb",
        **settings: Any,
    ) -> Detections | torch.Tensor:
        """Detect in one input or a list of them (paths, PIL images, uint8 numpy arrays, mixed).

        size and augment (test-time augmentation; None: the detector's ``augment``) as in yolov5's
        ``model(ims, size, augment)``; ``settings``: this call's conf, iou, classes and max_det, in place of
        the detector's (see ``thresholds``).

        errors: "raise" (an unusable input raises ImageError naming it) or "skip" (it is left out, with a
        warning, and recorded in the result's ``failures``).
        channels: the order of numpy arrays' channels: "rgb" (as yolov5 and PIL give them) or "bgr" (as
        OpenCV reads them: cv2.imread, cv2.VideoCapture frames); paths and PIL images are read right anyway.
        A torch.Tensor is not an image but a batch for the network itself, as in yolov5: its raw output
        comes back (``raw_predictions``) and the other arguments do not apply.
        """
        if isinstance(inputs, torch.Tensor):
            return self.raw_predictions(inputs)
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}.")
        if channels not in CHANNEL_ORDERS:
            raise ConfigError(
                f"channels must be 'rgb' (numpy arrays as yolov5 and PIL give them) or 'bgr' (as OpenCV "
                f"reads them), not {channels!r}."
            )
        thresholds = self.thresholds(**settings)
        img_hw = self.input_hw(size)
        start = time_sync()
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        files, images, prepared, failures = self._load(items, img_hw, channels, errors)
        seconds = np.array([time_sync() - start, 0.0, 0.0])
        augment = self.augment if augment is None else augment
        detections, run_seconds = self.run_prepared(prepared, [thresholds] * len(prepared), augment)
        seconds += run_seconds
        return Detections(
            images,
            files,
            detections,
            self.names,
            input_hw=[tuple(p.tensor.shape[1:]) for p in prepared],
            t=tuple(float(s) * 1000 / max(len(images), 1) for s in seconds),
            failures=failures,
        )

    def tracker(self, stream: Hashable = 0, fps: float = 30.0) -> Tracker:
        """The ByteTrack tracker of one stream (any key: an index, a name), made on first use with the
        detector's ``conf`` and the stream's fps. ``trackers.clear()`` forgets every stream's tracks."""
        if stream not in self.trackers:
            self.trackers[stream] = Tracker(self.conf, fps)
        return self.trackers[stream]

    def track(
        self,
        frame: ImageInput,
        stream: Hashable = 0,
        timestamp: float | None = None,
        channels: str = "rgb",
        **settings: Any,
    ) -> torch.Tensor:
        """Detect in the next frame of a stream and continue that stream's tracks (``tracker``).

        frame: as ``__call__`` takes one input; timestamp: its capture time in seconds (None: one frame
        after the last), so that the motion model spans frames a slow model dropped. -> Tensor[n, 7]:
        x1, y1, x2, y2 (pixels of the frame), score, class, track ID (1, 2, ...; kept while the object is).
        """
        return self.track_batch([frame], [stream], [timestamp], channels=channels, **settings)[1][0]

    def track_batch(
        self,
        frames: Sequence[ImageInput],
        streams: Sequence[Hashable],
        timestamps: Sequence[float | None],
        fps: float | Sequence[float] = 30.0,
        channels: str = "rgb",
        **settings: Any,
    ) -> tuple[Detections, list[torch.Tensor]]:
        """``track`` for the next frame of each of several streams (one frame a stream), run as one batch
        (what detect.py does with live streams). fps: each stream's (or one for all), for a tracker made
        now. -> (the call's Detections, for its timing and input shapes; per frame Tensor[n, 7])."""
        rates = [fps] * len(streams) if isinstance(fps, (int, float)) else fps
        trackers = [self.tracker(stream, rate) for stream, rate in zip(streams, rates)]
        found = self(list(frames), channels=channels, **{**settings, "conf": low_conf(self.conf)})
        return found, [t.update(boxes, time) for t, boxes, time in zip(trackers, found.xyxy, timestamps)]

    def _load(
        self, items: list, img_hw: tuple[int, int], channels: str, errors: str
    ) -> tuple[list[str], list[np.ndarray], list[Prepared], list[Failure]]:
        """(names, BGR images, prepared images, failures) of the inputs that load; see ``__call__``."""
        files, images, prepared, failures = [], [], [], []
        for index, item in enumerate(items):
            try:
                name, image = load_input(item, index, channels)
                prepared.append(self.prepare(image, img_hw))
            except Exception as error:  # a decoder or resize error is as much this image's fault
                if errors == "raise":
                    raise
                named = str(item) if isinstance(item, (str, Path)) else f"input {index}"
                failures.append(Failure(index, named, str(error)))
                LOGGER.warning("WARNING: skipping %s: %s", failures[-1].input, error)
                continue
            files.append(name)
            images.append(image)
        return files, images, prepared, failures

    def raw_predictions(self, batch: torch.Tensor) -> torch.Tensor:
        """What yolov5's AutoShape does with a tensor: the network's output for a batch the caller has
        already letterboxed, no NMS and no scaling back (the pieces detect.py adds: utils.nms, utils.boxes).

        batch: float Tensor[B, 3, H, W], RGB in 0..1, H and W multiples of the model's stride (within an
        export's fixed size). -> Tensor[B, N, 5 + nc]: cx, cy, w, h (input pixels), objectness, class
        scores, as ``non_max_suppression`` takes it. Raises ImageError for a tensor of another form.
        """
        check_network_batch(batch, self.model.stride)
        return self.model(batch)

    def thresholds(
        self,
        conf: float | None = None,
        iou: float | None = None,
        classes: list[int] | None = None,
        max_det: int | None = None,
    ) -> dict:
        """non_max_suppression's keyword arguments: the values given, the detector's settings for the others.
        Raises ConfigError for a class index the model does not predict."""
        classes = classes if classes is not None else self.classes
        self.check_classes(classes)
        return dict(
            conf_thres=self.conf if conf is None else conf,
            iou_thres=self.iou if iou is None else iou,
            classes=classes,
            agnostic=self.agnostic,
            max_det=self.max_det if max_det is None else max_det,
        )

    def prepare(self, image: np.ndarray, img_hw: tuple[int, int]) -> Prepared:
        """A BGR uint8 image (H, W, 3) letterboxed to img_hw (an ``input_hw()``) as every call letterboxes."""
        auto = self.model.fixed_input_hw is None  # minimal padding unless the graph wants one exact size
        boxed, ratio, pad = letterbox(image, img_hw, auto=auto, stride=self.model.stride)
        return Prepared(image_to_tensor(boxed), (ratio, pad), image.shape[:2])

    @staticmethod
    def forward_passes(prepared: Sequence[Prepared]) -> list[list[int]]:
        return same_shape_batches(prepared, MAX_BATCH)  # what ``run_prepared`` runs as one pass each

    def run_prepared(
        self, prepared: Sequence[Prepared], thresholds: Sequence[dict], augment: bool = False
    ) -> tuple[list[torch.Tensor], np.ndarray]:
        """Detect in prepared images, each with its own ``thresholds()``: images of one letterboxed shape
        run as one batch (``forward_passes``), with test-time augmentation when ``augment``. -> (per image
        Tensor[n, 6] (x1, y1, x2, y2 original pixels, score, class) on the CPU, seconds spent (stacking,
        inference, NMS))."""
        model = self._augmented if augment else self.model
        detections: list[torch.Tensor] = [torch.zeros(0, 6)] * len(prepared)
        seconds = np.zeros(3)
        for chunk in self.forward_passes(prepared):
            stacked = time_sync()
            batch = torch.stack([prepared[k].tensor for k in chunk]).to(self.model.device).float() / 255
            start = time_sync()
            prediction = model(batch)  # (B, N, 5 + nc) cx, cy, w, h (input pixels), obj, classes
            inferred = time_sync()
            for row, k in enumerate(chunk):  # NMS per image: each may have its own thresholds
                det = non_max_suppression(prediction[row : row + 1], **thresholds[k])[0]
                det = det.detach().cpu().float().clone()
                scale_boxes_to_original(det[:, :4], prepared[k].original_hw, prepared[k].ratio_pad)
                detections[k] = det
            seconds += (start - stacked, inferred - start, time_sync() - inferred)
        return detections, seconds
