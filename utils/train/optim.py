"""Optimizer, parameter groups, learning-rate schedule, warmup and gradient accumulation.

Parameter groups (their order is the lr0, lr1, lr2 columns of results.csv):
  0: biases, no weight decay (warmed up from a high bias learning rate);
  1: all other weights, with weight decay;
  2: normalization-layer weights, no weight decay.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from utils.errors import ConfigError
from utils.hyp import Hyp

LOGGER = logging.getLogger(__name__)
NOMINAL_BATCH_SIZE = 64
MIN_STEPS_PER_EPOCH = 32
MIN_WARMUP_ITERATIONS = 100
NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)  # BatchNorm*, SyncBatchNorm, InstanceNorm*


def parameter_groups(model: nn.Module) -> tuple[list, list, list]:
    """(biases, decayed weights, normalization weights) of every parameter in the model, each once."""
    biases, weights, norm_weights = [], [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(parameter)
            elif isinstance(module, NORM_LAYERS):
                norm_weights.append(parameter)
            else:
                weights.append(parameter)
    return biases, weights, norm_weights


OPTIMIZERS = ("SGD", "Adam", "AdamW")  # yolov5's --optimizer choices


def build_optimizer(
    model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937, weight_decay: float = 5e-4
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, Adam or AdamW (beta1 = momentum); weight decay only on group 1 (for Adam
    the L2 penalty added to the gradient, for AdamW the decoupled decay)."""
    biases, weights, norm_weights = parameter_groups(model)
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ConfigError(f"optimizer {name!r} is unknown; use one of {', '.join(OPTIMIZERS)}.")
    optimizer.add_param_group({"params": weights, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    LOGGER.info(
        f"optimizer: {name}(lr={lr}, momentum={momentum}) with parameter groups "
        f"{len(biases)} bias, {len(weights)} weight (decay={weight_decay}), {len(norm_weights)} norm weight"
    )
    return optimizer


def lr_lambda(epochs: int, lrf: float, cosine: bool = False) -> Callable[[float], float]:
    """Learning-rate factor per epoch: from 1 at epoch 0 down to lrf at `epochs`, linear or cosine."""
    if cosine:
        return lambda epoch: ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda epoch: (1 - epoch / epochs) * (1.0 - lrf) + lrf


class EpochSchedule:
    """Per-epoch LR: every group's lr = initial_lr * factor(epoch). It keeps no state beyond the epoch: a
    resumed run sets the epoch and so recomputes the LR rather than replaying steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, lrf: float, cosine: bool = False):
        self.optimizer = optimizer
        self.epochs, self.lrf, self.cosine = epochs, lrf, cosine
        self.factor = lr_lambda(epochs, lrf, cosine)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.last_epoch = -1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.last_epoch = epoch
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.factor(epoch)


def warmup_iterations(hyp: Hyp, batches_per_epoch: int, epochs: int) -> int:
    """warmup_epochs * nb iterations, raised to at least 100 (yolov5's floor) but only while that floor
    stays under a tenth of the run: a tiny dataset (64 images at batch 8 for 30 epochs is 240 steps)
    would otherwise spend half its steps warming up. 0 disables."""
    if hyp.warmup_epochs <= 0:
        return 0
    total = epochs * batches_per_epoch
    floor = min(MIN_WARMUP_ITERATIONS, total // 10)
    return int(min(max(round(hyp.warmup_epochs * batches_per_epoch), floor), total / 2))


def apply_warmup(
    optimizer: torch.optim.Optimizer,
    iteration: int,
    warmup: int,
    epoch_factor: float,
    hyp: Hyp,
    optimizer_name: str,
) -> None:
    """During warmup: the bias group's lr falls from warmup_bias_lr, the others rise from 0, to
    initial_lr * epoch_factor; momentum (SGD) / beta1 (AdamW) rises from warmup_momentum."""
    span = [0, warmup]
    for index, group in enumerate(optimizer.param_groups):
        start = hyp.warmup_bias_lr if index == 0 else 0.0
        group["lr"] = float(np.interp(iteration, span, [start, group["initial_lr"] * epoch_factor]))
        momentum = float(np.interp(iteration, span, [hyp.warmup_momentum, hyp.momentum]))
        if optimizer_name == "AdamW":
            group["betas"] = (momentum, group["betas"][1])
        else:
            group["momentum"] = momentum


def accumulation_steps(batch_size: int, batches_per_epoch: int, nominal: int = NOMINAL_BATCH_SIZE) -> int:
    """Batches to accumulate per optimizer step.

    Rule: accumulate towards the nominal batch of 64 (round(64 / batch_size)), but keep at least
    MIN_STEPS_PER_EPOCH (32) optimizer steps per epoch: accumulate <= batches_per_epoch // 32.
    The loss is summed over the images of a batch, so the learning rate per image does not depend
    on the accumulation; accumulating only trades optimizer steps for larger ones. A large dataset
    (COCO at batch 16: 7,300 batches) accumulates 4 as yolov5 does; a small one does not (64 images
    at batch 8 keep 8 steps per epoch, where a nominal batch of 64 would leave 1).
    """
    wanted = max(round(nominal / batch_size), 1)
    return max(1, min(wanted, batches_per_epoch // MIN_STEPS_PER_EPOCH))


def scaled_weight_decay(
    weight_decay: float, batch_size: int, accumulate: int, nominal: int = NOMINAL_BATCH_SIZE
) -> float:
    """Weight decay scaled by the effective batch (batch_size * accumulate) relative to the nominal 64."""
    return weight_decay * batch_size * accumulate / nominal
