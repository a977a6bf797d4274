"""Exponential moving average of model weights, used for validation and saved in checkpoints."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel / DataParallel wrapper."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))
        else model
    )


class ModelEMA:
    """ema = d * ema + (1 - d) * model over every floating-point entry of the state dict (weights and
    BN running statistics), with d = decay * (1 - exp(-updates / tau)) so early updates follow the
    model closely instead of averaging in the random initialization. Integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = deepcopy(unwrap_model(model)).eval()
        for parameter in self.ema.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        source = unwrap_model(model).state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source[name].detach().to(value.dtype), alpha=1.0 - decay)
            else:
                value.copy_(source[name])

    def copy_attributes(self, model: nn.Module) -> None:
        """Keep the non-tensor attributes (class names, nc, the YAML with its anchors) in step with the
        trained model."""
        model = unwrap_model(model)
        for name in ("names", "nc", "yaml"):
            if hasattr(model, name):
                setattr(self.ema, name, deepcopy(getattr(model, name)))
