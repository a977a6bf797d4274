"""One loader for every kind of weights that val.py and detect.py accept.

``load_inference_model(weights)`` takes a training-form or fused PyTorch checkpoint (.pt) or an
ONNX export (.onnx, run with onnxruntime) and returns an ``InferenceModel``: call it on a float
tensor (B, 3, H, W), RGB, 0..1, and get the decoded predictions (B, N, 5 + nc) as a torch tensor
(cx, cy, w, h in input pixels, objectness, class scores), whatever ran underneath.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.device import select_device
from utils.errors import WeightsError, WeightsNotFoundError

LOGGER = logging.getLogger(__name__)

LETTERBOX_GRAY = 114 / 255  # the fill colour of utils.data.preprocess.letterbox, as a 0..1 value


class InferenceModel:
    """Common face of a PyTorch or ONNX Runtime detector.

    Attributes:
        names: class names, nc: number of classes, stride: the largest stride (int), input sizes
        must be multiples of it. fixed_input_hw: (height, width) a static ONNX graph was exported
        for, else None (any multiple of ``stride`` works). kind: "pytorch" or "onnx".
        deploy: whether the weights are the fused (re-parameterized) form.
        train_img_size: the image size the model was trained (or exported) at, when recorded, else None;
        detection uses it when no image size is given.
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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def warmup(self, img_hw: tuple[int, int] = (640, 640)) -> None:
        """One forward pass on zeros, so the first timed image does not pay for allocation."""
        self(torch.zeros(1, 3, *(self.fixed_input_hw or img_hw), device=self.device))


class TorchInferenceModel(InferenceModel):
    """A ``models.yolo.Model`` in eval mode. ``model`` is the underlying nn.Module."""

    kind = "pytorch"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__(model.names, int(model.stride.max()), device, bool(getattr(model, "deploy", False)))
        self.model = model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, torch.float32))


class OnnxInferenceModel(InferenceModel):
    """An onnxruntime session over a graph exported by utils.deploy.export.export_onnx."""

    kind = "onnx"

    def __init__(self, path: Path, device: torch.device, threads: int = 0) -> None:
        import onnx
        import onnxruntime as ort

        from utils.deploy.export import INPUT_NAME, read_metadata

        try:
            metadata = read_metadata(onnx.load(str(path), load_external_data=False))
        except Exception as error:  # protobuf raises DecodeError, RuntimeError, ... for a broken file
            LOGGER.debug("onnx.load(%s) failed: %s", path, error)
            raise WeightsError(
                f"{path} is corrupt or not an ONNX model; re-export it with convert.py."
            ) from None
        if "names" not in metadata or "stride" not in metadata:
            raise WeightsError(
                f"{path} has no class names or stride in its metadata, so it was not exported by RepYOLO; "
                "export the checkpoint with convert.py's ONNX option."
            )
        super().__init__(metadata["names"], metadata["stride"], device, bool(metadata.get("deploy", True)))
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        # Idle worker threads would otherwise spin on the CPU between calls, slowing whatever runs next
        # (PyTorch in an interleaved benchmark, the data loader in val.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per physical core)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = INPUT_NAME
        shape = self.session.get_inputs()[0].shape  # ints for static axes, strings for dynamic ones
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.fixed_input_hw = (shape[2], shape[3])
        self.path = path
        exported_hw = metadata.get("img_size")
        self.train_img_size = int(max(exported_hw)) if exported_hw else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, h, w). A static graph takes smaller inputs padded at the bottom and right
        with letterbox gray (box coordinates are unchanged by that) and any batch size."""
        if self.fixed_input_hw is not None:
            images = self._pad_to_fixed(images)
        chunk = self.fixed_batch or images.shape[0]
        array = images.detach().to("cpu", torch.float32).numpy()
        outputs = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(array[i : i + chunk])})[0]
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


def load_inference_model(
    weights: str | Path, device: str | torch.device = "cpu", threads: int = 0
) -> InferenceModel:
    """Load a .pt checkpoint (training form or fused) or an .onnx export for inference.

    threads: onnxruntime intra-op threads for .onnx (0: its default); PyTorch uses its global setting.

    Raises FileNotFoundError / ValueError with one sentence naming the file and the fix.
    """
    path = Path(weights)
    device = select_device(device)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights {path} not found; pass an existing .pt checkpoint or .onnx file."
        )
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        model = OnnxInferenceModel(path, device, threads)
    elif suffix in (".pt", ".pth"):
        from utils.checkpoint import load_model

        network, ckpt = load_model(path, device=device)
        model = TorchInferenceModel(network, device)
        recorded = (ckpt.get("opt") or {}).get("img_size")
        model.train_img_size = int(recorded) if recorded else None
    else:
        raise WeightsError(
            f"weights {path} are neither a .pt checkpoint nor an .onnx file; pass one of those."
        )
    LOGGER.debug("loaded %s (%s, %d classes, stride %d)", path, model.kind, model.nc, model.stride)
    return model
