"""Side-by-side latency measurement, shared by convert.py's report and bench/latency.py."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
from torch import nn


def interleaved_latency(
    functions: dict[str, Callable[[], object]], runs: int, threads: int = 0, warmup: int = 1
) -> dict[str, float]:
    """Median milliseconds per call of each function, timed in turns so that machine load and
    clock changes hit all of them alike, after `warmup` untimed calls each. threads > 0 sets
    PyTorch's intra-op threads for the measurement (OpenMP threads on a busy, shared CPU make the
    median measure the contention rather than the model)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for function in functions.values():
                for _ in range(warmup):
                    function()
            for _ in range(max(runs, 1)):
                for name, function in functions.items():
                    start = time.perf_counter()
                    function()
                    times[name].append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous_threads)
    return {name: statistics.median(values) for name, values in times.items()}


def channels_last_call(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A call of a channels_last copy of ``model`` on a channels_last ``x``: how PyTorch inference runs
    (utils.inference.TorchInferenceModel), so that its latency rows time what val.py and detect.py
    run."""
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    return lambda: converted(x)
