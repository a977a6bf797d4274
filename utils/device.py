"""Device selection and reproducibility."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)


def select_device(device: str | int | torch.device = "") -> torch.device:
    """'' picks cuda:0 when available else cpu; 'cpu'; '0' or '0,1' (the first listed is used here;
    DDP processes pick theirs with LOCAL_RANK). Fails with one sentence when CUDA is asked for but absent."""
    if isinstance(device, torch.device):
        return device
    spec = str(device).strip().lower().replace("cuda:", "")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--device {device} asks for CUDA, but no CUDA GPU is available here; use --device cpu."
        )
    ids = [int(i) for i in spec.split(",") if i != ""]
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    index = ids[local_rank] if 0 <= local_rank < len(ids) else ids[0]
    if index >= torch.cuda.device_count():
        raise SystemExit(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    return torch.device(f"cuda:{index}")


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def time_sync() -> float:
    """Wall time after waiting for queued CUDA work, so timings measure the work and not the launch."""
    import time

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
