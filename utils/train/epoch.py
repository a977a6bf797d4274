"""One training step and one epoch of them, with yolov5's multi-scale training (MultiScale)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.train.loss import YoloLoss
from utils.train.step import OptimizerStep

LOGGER = logging.getLogger(__name__)


class MultiScale:
    """yolov5's multi-scale training: each batch is resized (bilinear) so that its long side is a size
    drawn uniformly from 0.5x to 1.5x img_size, rounded down to a multiple of ``stride`` (at least one
    stride); the other side is scaled alike and rounded up to a multiple of the stride. The targets are
    normalized to the image, so they need no change. Each epoch's sizes come from a generator seeded
    with (seed, epoch): a run draws the same sizes every time, and after a resume too."""

    def __init__(self, img_size: int, stride: int, seed: int = 0):
        self.img_size, self.stride, self.seed = img_size, stride, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, epoch])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images: float (B, 3, H, W) -> the batch at the next drawn size (the same batch when it is
        already that size)."""
        stride = self.stride
        drawn = int(self.rng.integers(int(self.img_size * 0.5), int(self.img_size * 1.5) + stride))
        size = max(drawn // stride * stride, stride)
        scale = size / max(images.shape[2:])
        if scale == 1:
            return images
        shape = [math.ceil(side * scale / stride) * stride for side in images.shape[2:]]
        return nn.functional.interpolate(images, size=shape, mode="bilinear", align_corners=False)


@dataclass
class BatchHooks:
    """What a training run adds to the batches of an epoch. on_first_batch(images, targets, paths): called
    before the first step (to draw the batch); multi_scale: resizes every batch before its forward pass."""

    on_first_batch: Callable[[torch.Tensor, torch.Tensor, list], None] | None = None
    multi_scale: MultiScale | None = None


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: YoloLoss,
    step: OptimizerStep,
    iteration: int,
    multi_scale: MultiScale | None = None,
) -> torch.Tensor:
    """Forward, loss and ``step`` for one batch; returns the loss terms Tensor[3] (box, obj, cls).

    images: uint8 (B, 3, H, W) RGB as the loader gives them; targets: (n, 6) image index, class,
    cx, cy, w, h normalized. The model runs in channels_last: oneDNN (CPU) and cuDNN (tensor cores)
    convolve faster in NHWC (a repyolov5s step at 160 px, batch 16, takes ~13% less time on 2 CPU cores).
    multi_scale: resizes the float batch before the forward pass.
    """
    device = next(model.parameters()).device
    images = images.to(device, non_blocking=True, memory_format=torch.channels_last).float() / 255
    if multi_scale is not None:
        images = multi_scale(images)
    with step.autocast():
        loss, loss_items = loss_fn(model(images), targets.to(device))
    step(loss, iteration)
    return loss_items


def train_one_epoch(
    model: nn.Module,
    loader,
    loss_fn: YoloLoss,
    step: OptimizerStep,
    epoch: int,
    epochs: int,
    show_progress: bool = True,
    hooks: BatchHooks | None = None,
) -> torch.Tensor:
    """One pass over the loader; returns the mean loss terms Tensor[3] (box, obj, cls) on the CPU."""
    hooks = hooks or BatchHooks()
    if hooks.multi_scale is not None:
        hooks.multi_scale.set_epoch(epoch)
    device = next(model.parameters()).device
    batches = len(loader)
    model.train()
    step.set_epoch(epoch)
    progress = enumerate(loader)
    if show_progress:
        LOGGER.info(
            ("\n" + "%11s" * 7) % ("Epoch", "mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")
        )
        progress = tqdm(progress, total=batches, bar_format="{l_bar}{bar:10}{r_bar}")
    mean_loss = torch.zeros(3, device=device)
    step.optimizer.zero_grad()
    for i, (images, targets, paths, _shapes) in progress:
        if i == 0 and hooks.on_first_batch is not None:
            hooks.on_first_batch(images, targets, paths)
        loss_items = train_step(model, images, targets, loss_fn, step, i + batches * epoch, hooks.multi_scale)
        mean_loss = (mean_loss * i + loss_items) / (i + 1)
        if show_progress:
            memory = f"{torch.cuda.memory_reserved(device) / 1e9:.3g}G" if device.type == "cuda" else "cpu"
            progress.set_description(
                ("%11s" * 2 + "%11.4g" * 5)
                % (f"{epoch + 1}/{epochs}", memory, *mean_loss.tolist(), targets.shape[0], images.shape[-1])
            )
    return mean_loss.cpu()
