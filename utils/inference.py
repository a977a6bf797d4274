"""The face every detector shows to evaluation, training and deployment: ``InferenceModel``, called on a
float tensor (B, 3, H, W), RGB, 0..1, returns the decoded predictions (B, N, 5 + nc) as a torch tensor
(cx, cy, w, h in input pixels, objectness, class scores), whatever runs underneath. ``TorchInferenceModel``
is the PyTorch one; ``ArrayInferenceModel`` the base of every exported format's runtime (one module per
format in utils.deploy.formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import WeightsError

LETTERBOX_GRAY = 114 / 255  # the fill colour of utils.data.preprocess.letterbox, as a 0..1 value


class InferenceModel:
    """Common face of a detector, whatever format and runtime it is.

    Attributes:
        names: class names, nc: number of classes, stride: the largest stride (int), input sizes
        must be multiples of it. fixed_input_hw: (height, width) an export with a fixed input was
        written for, else None (any multiple of ``stride`` works). kind: the name of its format in
        utils.deploy.formats.REGISTRY ("pytorch", "onnx", "openvino", "tflite", ...).
        deploy: whether the weights are the fused (re-parameterized) form.
        train_img_size: the image size the model was trained (or exported) at, when recorded, else None;
        detection uses it when no image size is given. half_precision: the dtype it computes in with
        --half (float16 on CUDA, bfloat16 on the CPU), None in float32; its outputs are float32 either way.
        int8: whether the weights are an INT8 (quantized) export.
    """

    kind = "base"

    def __init__(self, names: list[str], stride: int, device: torch.device, deploy: bool) -> None:
        self.names = list(names)
        self.nc = len(self.names)
        self.stride = int(stride)
        self.device = device
        self.deploy = deploy
        self.fixed_input_hw: tuple[int, int] | None = None
        self.train_img_size: int | None = None
        self.half_precision: torch.dtype | None = None
        self.int8 = False

    @property
    def half(self) -> bool:
        return self.half_precision is not None

    @property
    def precision(self) -> str:
        """What the convolutions compute in: "int8", "float16", "bfloat16" or "float32"."""
        if self.int8:
            return "int8"
        return str(self.half_precision or torch.float32).removeprefix("torch.")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def warmup(self, img_hw: tuple[int, int] = (640, 640)) -> None:
        """One forward pass on zeros, so the first timed image does not pay for allocation."""
        self(torch.zeros(1, 3, *(self.fixed_input_hw or img_hw), device=self.device))


class WrappedInference(InferenceModel):
    """Runs ``model`` and changes its input or output (a subclass's ``__call__``); it has the wrapped model's
    stride, device, input size and precision, and its names unless ``names`` are given."""

    def __init__(self, model: InferenceModel, names: list[str] | None = None) -> None:
        super().__init__(model.names if names is None else names, model.stride, model.device, model.deploy)
        self.model = model
        self.kind, self.fixed_input_hw = model.kind, model.fixed_input_hw
        self.train_img_size, self.half_precision, self.int8 = (
            model.train_img_size,
            model.half_precision,
            model.int8,
        )


class SingleClassInference(WrappedInference):
    """``model`` scored as one class, as yolov5's val.py --single-cls scores it: each prediction's class
    scores become one, their maximum. yolov5 keeps each class over the threshold as a detection, suppresses
    them all together (class-agnostic NMS) and calls them class 0, which leaves each box at its best class's
    score: what the maximum gives, with NMS here left class-aware over the one class."""

    def __init__(self, model: InferenceModel, name: str) -> None:
        super().__init__(model, [name])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        prediction = self.model(images)  # (B, N, 5 + nc) cx, cy, w, h, objectness, class scores
        return torch.cat((prediction[..., :5], prediction[..., 5:].amax(-1, keepdim=True)), -1)  # (B, N, 6)


class TorchInferenceModel(InferenceModel):
    """A ``models.yolo.Model`` in eval mode. ``model`` is the underlying nn.Module.

    half_precision: None (float32) or the autocast dtype of --half (utils.device.half_dtype). The
    weights stay float32; convolutions run in that dtype and Detect decodes the boxes in float32."""

    kind = "pytorch"

    def __init__(
        self, model: torch.nn.Module, device: torch.device, half_precision: torch.dtype | None = None
    ) -> None:
        super().__init__(model.names, int(model.stride.max()), device, bool(getattr(model, "deploy", False)))
        # channels_last: oneDNN's convolutions run faster in NHWC (1.18x at 640, 1.7x at 320 measured on
        # the 2-core CPU for fused repyolov5s), as do cuDNN's tensor-core kernels
        self.model = model.to(memory_format=torch.channels_last)
        self.half_precision = half_precision

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, torch.float32, memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.half_precision, enabled=self.half):
            return self.model(images).float()


class ArrayInferenceModel(InferenceModel):
    """A runtime that takes and returns numpy arrays on the CPU (every exported format). A static graph
    takes smaller inputs padded at the bottom and right with letterbox gray (box coordinates are
    unchanged by that), and any batch size, run in chunks of the graph's batch."""

    def __init__(self, path: Path, metadata: dict, device: torch.device, input_shape: list) -> None:
        if "names" not in metadata or "stride" not in metadata:
            raise WeightsError(
                f"{path} has no class names or stride in its metadata, so it was not exported by RepYOLO; "
                "export the checkpoint with convert.py."
            )
        super().__init__(metadata["names"], metadata["stride"], device, bool(metadata.get("deploy", True)))
        self.path = path
        static = [value if isinstance(value, int) and value > 0 else None for value in input_shape]
        self.fixed_batch = static[0]
        if static[2] is not None and static[3] is not None:
            self.fixed_input_hw = (static[2], static[3])
        exported_hw = metadata.get("img_size")
        self.train_img_size = int(max(exported_hw)) if exported_hw else None

    def run_array(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, h, w) -> decoded predictions (B, N, 5 + nc), on the images' device."""
        if self.fixed_input_hw is not None:
            images = self._pad_to_fixed(images)
        chunk = self.fixed_batch or images.shape[0]
        array = images.detach().to("cpu", torch.float32).numpy()
        outputs = [
            self.run_array(np.ascontiguousarray(array[i : i + chunk]))
            for i in range(0, array.shape[0], chunk)
        ]
        return torch.from_numpy(np.concatenate(outputs, 0)).to(images.device)

    def _pad_to_fixed(self, images: torch.Tensor) -> torch.Tensor:
        height, width = self.fixed_input_hw
        h, w = images.shape[-2:]
        if h > height or w > width:
            raise WeightsError(
                f"{self.path} was exported for a fixed {height}x{width} input but got {h}x{w}; use image "
                f"size {max(height, width)} or re-export it with dynamic axes."
            )
        if (h, w) == (height, width):
            return images
        return F.pad(images, (0, width - w, 0, height - h), value=LETTERBOX_GRAY)
