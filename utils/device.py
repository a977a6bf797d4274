"""Device selection, the precision a device computes fast in, and reproducibility."""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

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


# /proc/cpuinfo flags of the x86 features with which oneDNN computes bfloat16 natively (fastest first)
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the Linux kernel lists them (empty where /proc/cpuinfo is absent)."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(next((line.partition(":")[2].split() for line in lines if line.startswith("flags")), ()))


def native_bf16_feature() -> str | None:
    """The name of this CPU's native bfloat16 feature ("AMX-BF16", "AVX512-BF16"), or None where it has
    none or the flags cannot be read (not Linux): there bfloat16 would be emulated, slower than float32.

    torch's own check (torch.ops.mkldnn._is_mkldnn_bf16_supported) also says yes for plain AVX-512,
    where oneDNN emulates bfloat16, so the kernel's CPU flags decide."""
    flags = cpu_flags()
    return next((name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags), None)


@dataclass(frozen=True)
class Precision:
    """The dtype a run computes its forward pass in (autocast), and why. float32: autocast off."""

    dtype: torch.dtype
    reason: str

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    @property
    def scaled(self) -> bool:
        """float16 gradients underflow without loss scaling (GradScaler); bfloat16 has float32's range."""
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device_type=device.type, dtype=self.dtype, enabled=self.mixed)


FLOAT32 = Precision(torch.float32, "float32")


def training_precision(device: torch.device, amp: bool = True) -> Precision:
    """Mixed precision where the device has a fast low-precision path: float16 with loss scaling on CUDA
    (as yolov5), bfloat16 on a CPU that computes it natively, float32 elsewhere or when amp is off."""
    if not amp:
        return Precision(torch.float32, "mixed precision is off (--no-amp)")
    if device.type == "cuda":
        return Precision(torch.float16, "CUDA: float16 autocast with gradient scaling")
    feature = native_bf16_feature() if device.type == "cpu" else None
    if feature:
        reason = f"this CPU computes bfloat16 natively with {feature}; --no-amp trains in float32"
        return Precision(torch.bfloat16, reason)
    reason = f"this {device.type} has no native bfloat16 (AVX512-BF16 or AMX-BF16) to train faster in"
    return Precision(torch.float32, reason)


def half_dtype(device: torch.device) -> torch.dtype:
    """--half's dtype: float16 on CUDA, bfloat16 on a CPU that computes it natively; DeviceError (one
    sentence) elsewhere, where it would be slower than float32."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and native_bf16_feature():
        return torch.bfloat16
    raise DeviceError(
        f"--half needs a CUDA GPU or a CPU that computes bfloat16 natively (AVX512-BF16 or AMX-BF16), and "
        f"this {device.type} has neither; run without --half."
    )
