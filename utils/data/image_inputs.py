"""The images the Detector (and the hub) take, as yolov5's AutoShape takes them: paths, PIL images and
uint8 numpy arrays (RGB, or BGR with channels="bgr"), each turned into the BGR uint8 image that OpenCV
letterboxes, draws and writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from utils.data.sources import read_image
from utils.errors import ImageError

ImageInput = Union[str, Path, np.ndarray, Image.Image]
CHANNEL_ORDERS = ("rgb", "bgr")  # of numpy array inputs: yolov5's and PIL's, OpenCV's


def array_to_bgr(array: np.ndarray, index: int, channels: str) -> np.ndarray:
    """The BGR uint8 (H, W, 3) image of a detector input array: (H, W, 3) in ``channels`` order ("rgb" or
    "bgr"), (H, W, 4) with an alpha channel, which is dropped as yolov5 drops it, or gray (H, W) or
    (H, W, 1). Raises ImageError naming the input for any other shape or dtype."""
    image = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    usable_shape = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not usable_shape or 0 in array.shape:
        raise ImageError(
            f"input {index} is an array of shape {array.shape} and dtype {array.dtype}; pass a uint8 array "
            "(H, W, 3) in RGB order (channels='bgr' for OpenCV's), (H, W, 4) with alpha, or (H, W) gray."
        )
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
    color = image[..., :3]
    return np.ascontiguousarray(color if channels == "bgr" else color[..., ::-1])


def load_input(item: Any, index: int, channels: str = "rgb") -> tuple[str, np.ndarray]:
    """(a name, the image as BGR uint8 (H, W, 3)) for one detector input: a path, a PIL image (converted
    to RGB, EXIF orientation applied as cv2.imread does) or a uint8 array (``array_to_bgr``: RGB unless
    channels is "bgr"). BGR inside, because OpenCV letterboxes, draws and writes it. Raises ImageError
    (ImageNotFoundError for a missing path) naming the input."""
    if isinstance(item, (str, Path)):
        if str(item).startswith(("http://", "https://")):
            raise ImageError(f"input {index} is a URL ({item}); download it first, the detector reads files.")
        return str(item), read_image(item)
    if isinstance(item, np.ndarray):
        return f"image{index}.jpg", array_to_bgr(item, index, channels)
    if isinstance(item, Image.Image):
        name = Path(getattr(item, "filename", "") or f"image{index}.jpg").name
        rgb = np.asarray(ImageOps.exif_transpose(item).convert("RGB"))
        return name, np.ascontiguousarray(rgb[..., ::-1])
    if isinstance(item, torch.Tensor):
        raise ImageError(
            f"input {index} is a Tensor in a list; pass a batch Tensor[B, 3, H, W] alone for the network's "
            "raw output, or the images as paths, PIL images or numpy arrays."
        )
    raise ImageError(
        f"input {index} is a {type(item).__name__}; pass an image path, a PIL image or a uint8 numpy array "
        "(H, W, 3) in RGB order."
    )


def check_network_batch(batch: torch.Tensor, stride: int) -> None:
    """Raises ImageError (one sentence) unless ``batch`` is what the network takes: a float Tensor[B, 3, H,
    W] of RGB values in 0..1, H and W multiples of ``stride``."""
    shape = tuple(batch.shape)
    if batch.ndim != 4 or shape[1] != 3 or not batch.is_floating_point() or 0 in shape:
        raise ImageError(
            f"a tensor input of shape {shape} and dtype {batch.dtype} is not a batch the network takes; "
            "pass a float Tensor[B, 3, H, W] of RGB values in 0..1, or the images as numpy arrays."
        )
    if shape[2] % stride or shape[3] % stride:
        raise ImageError(
            f"a tensor input of {shape[2]}x{shape[3]} pixels does not fit the model's stride {stride}; "
            f"letterbox it to multiples of {stride}, or pass the images as numpy arrays."
        )
    largest = float(batch.max())
    if largest > 1:  # a 0..255 batch runs, but every box would be noise
        raise ImageError(
            f"a tensor input holds values up to {largest:g}, not 0..1; divide it by 255, or pass the "
            "images as uint8 numpy arrays."
        )


@dataclass
class Prepared:
    """One image ready for the network: its letterboxed uint8 tensor (3, h, w) and how to map back."""

    tensor: torch.Tensor
    ratio_pad: tuple[tuple[float, float], tuple[float, float]]
    original_hw: tuple[int, int]


def same_shape_batches(prepared: Sequence[Prepared], most: int) -> list[list[int]]:
    """The positions in ``prepared`` grouped into batches of one letterboxed shape, at most ``most`` each."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for position, item in enumerate(prepared):
        groups.setdefault(tuple(item.tensor.shape), []).append(position)
    return [group[first : first + most] for group in groups.values() for first in range(0, len(group), most)]
