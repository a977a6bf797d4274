"""Device selection and reproducibility."""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch

from utils.errors import DeviceError

LOGGER = logging.getLogger(__name__)


def select_device(device: str | int | torch.device = "", local_rank: int = -1) -> torch.device:
    """'' picks cuda:0 when available else cpu; 'cpu'; '0' or '0,1' (the first listed, or under DDP the
    local_rank-th). Raises DeviceError (one sentence) when CUDA is asked for but absent."""
    if isinstance(device, torch.device):
        return device
    spec = str(device).strip().lower().replace("cuda:", "")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {device} asks for CUDA, but no CUDA GPU is available here; use device cpu."
        )
    try:
        ids = [int(i) for i in spec.split(",") if i != ""]
    except ValueError:
        raise DeviceError(
            f"device {device!r} is not 'cpu' or GPU indices such as 0 or 0,1; use one of those."
        ) from None
    index = ids[local_rank] if 0 <= local_rank < len(ids) else ids[0]
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {device} names a GPU that does not exist: only {torch.cuda.device_count()} are visible; "
            "pick one of those."
        )
    return torch.device(f"cuda:{index}")


def init_seeds(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def time_sync() -> float:
    """Wall time after waiting for queued CUDA work, so timings measure the work and not the launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
