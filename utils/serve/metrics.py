"""The service's counters and histograms, written out in Prometheus' text exposition format (version
0.0.4) by hand: requests by path and status, errors by status, request latency and batch size.

Every update happens on the event loop, so no lock is needed.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # images per forward pass
PREFIX = "repyolo"


class Histogram:
    """Counts of observations per bucket (upper bounds ``buckets``, then +Inf), their sum and count."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def lines(self, name: str, labels: dict[str, str] | None = None) -> list[str]:
        """The _bucket (cumulative), _sum and _count samples."""
        lines, cumulative = [], 0
        for bound, count in zip([*(repr(float(b)) for b in self.buckets), "+Inf"], self.counts):
            cumulative += count
            lines.append(f"{name}_bucket{_labels({**(labels or {}), 'le': bound})} {cumulative}")
        lines.append(f"{name}_sum{_labels(labels)} {self.sum!r}")
        lines.append(f"{name}_count{_labels(labels)} {self.count}")
        return lines


class Metrics:
    """What /metrics reports. ``observe_request`` once per answered request, ``observe_batch`` once per
    forward pass."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()  # (path, status) -> count
        self.latency: dict[str, Histogram] = {}  # path -> seconds from request to answer
        self.batch_size = Histogram(BATCH_BUCKETS)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[(path, status)] += 1
        self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def render(self) -> str:
        errors: Counter = Counter()
        for (_, status), count in self.requests.items():
            if status >= 400:
                errors[status] += count
        lines = _header("requests_total", "counter", "HTTP requests answered, by path and status.")
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f"{PREFIX}_requests_total{_labels({'path': path, 'status': str(status)})} {count}")
        lines += _header(
            "request_errors_total", "counter", "HTTP requests answered with an error, by status."
        )
        for status, count in sorted(errors.items()):
            lines.append(f"{PREFIX}_request_errors_total{_labels({'status': str(status)})} {count}")
        lines += _header("request_duration_seconds", "histogram", "Time from request to answer, by path.")
        for path, histogram in sorted(self.latency.items()):
            lines += histogram.lines(f"{PREFIX}_request_duration_seconds", {"path": path})
        lines += _header("batch_size", "histogram", "Images per forward pass of the model.")
        lines += self.batch_size.lines(f"{PREFIX}_batch_size")
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]


def _escape(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str] | None) -> str:
    """'{a="1",b="x"}', or '' for no labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"
