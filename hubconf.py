"""torch.hub entry points, from a local copy of this repository (nothing is downloaded):

    model = torch.hub.load("path/to/RepYOLO", "custom", path="best.pt", source="local")
    results = model(["a.jpg", pil_image, rgb_array])  # see utils.deploy.detector.Detector
    results = model(frame_bgr, channels="bgr")  # an OpenCV frame
    model = torch.hub.load("path/to/RepYOLO", "repyolov5s", classes=5, source="local")  # untrained

``custom`` loads weights RepYOLO wrote (a training-form or fused .pt, or any export of convert.py) or an
ultralytics/yolov5 .pt. The named
entries build untrained models, as no pretrained weights are published: with autoshape=True (the
default) a Detector you can call on images like a loaded one, with autoshape=False the bare
``models.yolo.Model`` (an nn.Module taking Tensor[B, 3, H, W] RGB in 0..1) to train or inspect.
"""

from __future__ import annotations

dependencies = ["torch", "torchvision", "cv2", "numpy", "yaml", "PIL"]


def custom(path: str, device: str = ""):
    """A Detector over the weights at ``path`` (a .pt in either form, or any export of convert.py: the
    formats of utils.deploy.formats) on ``device`` (cpu, 0, ...)."""
    from utils.deploy.detector import Detector

    return Detector(path, device)


def _untrained(cfg: str, classes: int, device: str, autoshape: bool):
    from models.yolo import Model
    from utils.deploy.detector import Detector

    model = Model(cfg, nc=classes)
    return Detector(model, device) if autoshape else model


def repyolov5n(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5n (RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5n.yaml", classes, device, autoshape)


def repyolov5s(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5s (RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5s.yaml", classes, device, autoshape)


def repyolov5m(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5m (RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5m.yaml", classes, device, autoshape)


def repyolov5l(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5l (RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5l.yaml", classes, device, autoshape)


def repyolov5x(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5x (RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5x.yaml", classes, device, autoshape)


def yolov5n(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5n (plain convolutions) for ``classes`` classes."""
    return _untrained("yolov5n.yaml", classes, device, autoshape)


def yolov5s(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5s (plain convolutions) for ``classes`` classes."""
    return _untrained("yolov5s.yaml", classes, device, autoshape)


def yolov5m(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5m (plain convolutions) for ``classes`` classes."""
    return _untrained("yolov5m.yaml", classes, device, autoshape)


def yolov5l(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5l (plain convolutions) for ``classes`` classes."""
    return _untrained("yolov5l.yaml", classes, device, autoshape)


def yolov5x(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5x (plain convolutions) for ``classes`` classes."""
    return _untrained("yolov5x.yaml", classes, device, autoshape)


def yolov5n_plain(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5n-plain (a single-path net of plain 3x3 convolutions, ReLU) for ``classes`` classes."""
    return _untrained("yolov5n-plain.yaml", classes, device, autoshape)


def yolov5s_plain(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained yolov5s-plain (a single-path net of plain 3x3 convolutions, ReLU) for ``classes`` classes."""
    return _untrained("yolov5s-plain.yaml", classes, device, autoshape)


def repyolov5n_plain(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5n-plain (yolov5n-plain with RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5n-plain.yaml", classes, device, autoshape)


def repyolov5s_plain(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5s-plain (yolov5s-plain with RepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5s-plain.yaml", classes, device, autoshape)


def repyolov5s_plain_qa(classes: int = 80, device: str = "", autoshape: bool = True):
    """Untrained repyolov5s-plain-qa (yolov5s-plain with QARepVGG blocks) for ``classes`` classes."""
    return _untrained("repyolov5s-plain-qa.yaml", classes, device, autoshape)
