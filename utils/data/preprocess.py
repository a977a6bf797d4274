"""Turning an image into network input: the stride-rounded size, the letterbox resize, and the BGR
uint8 array -> RGB tensor step that training, validation, conversion and detection share.

Images are uint8 (H, W, 3) BGR numpy arrays as cv2 reads them.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

LOGGER = logging.getLogger(__name__)

PAD_VALUE = 114


def check_img_size(img_size: int, stride: int) -> int:
    """img_size rounded up to a multiple of the model's largest stride, with a warning when it changes."""
    size = -(-int(img_size) // stride) * stride
    if size != img_size:
        LOGGER.warning(
            "image size %d is not a multiple of the model stride %d; using %d.", img_size, stride, size
        )
    return size


def image_to_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """OpenCV's BGR (H, W, 3) uint8 image -> the network's RGB uint8 Tensor[3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(image_bgr.transpose(2, 0, 1)[::-1]))


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = (PAD_VALUE, PAD_VALUE, PAD_VALUE),
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad evenly to new_shape (h, w).

    auto=True pads only up to the next multiple of stride (minimum rectangle). scaleup=False never
    enlarges. -> (image, (ratio_h, ratio_w), (pad_x, pad_y)); a point x maps to x * ratio_w + pad_x.
    """
    height, width = img.shape[:2]
    target_h, target_w = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    ratio = min(target_h / height, target_w / width)
    if not scaleup:
        ratio = min(ratio, 1.0)
    # at least 1 px: a 10000x50 image letterboxed to 640 would otherwise have a 0 px short side
    resized_w, resized_h = max(1, int(round(width * ratio))), max(1, int(round(height * ratio)))
    pad_w, pad_h = target_w - resized_w, target_h - resized_h
    if auto:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    if (resized_w, resized_h) != (width, height):
        img = cv2.resize(img, (resized_w, resized_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(round(pad_h / 2 - 0.1)), int(round(pad_w / 2 - 0.1))
    if pad_w or pad_h:
        img = cv2.copyMakeBorder(img, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=color)
    return img, (resized_h / height, resized_w / width), (float(left), float(top))
