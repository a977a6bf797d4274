"""Load test of serve.py on this machine's loopback: dynamic batching on against off, a flood, slow bodies.

    python -m bench.serve --weights runs/train/exp/weights/best_fused.pt [--img 160] [--requests 400]
                          [--concurrency 1 4 16] [--max-batch 16] [--max-wait-ms 5] [--image IMAGE]
                          [--rows batching flood slow-body] [--flood-clients 256] [--slow-clients 200]

For each setting, batching off (--max-batch 1) and on (--max-batch, --max-wait-ms), it starts
`python serve.py` on a free port of 127.0.0.1, sends a few warm-up requests, then --requests requests at
each concurrency (that many client threads, each on one kept-alive connection, posting --image as the raw
body) and prints one Markdown row per setting and concurrency: images/s, p50 and p95 latency, and the
errors (any answer but 200, or no answer). Then, per setting, the server process's RSS after its first
hundred requests and after its last, and at the highest concurrency the throughput of batching on over off.

The flood row: --flood-clients clients at once (each on a connection of its own) post one flat
36-megapixel PNG (a few hundred kB that decodes to 108 MB) to a server with batching on and its default
--max-queue; it prints the answers by status and the server's RSS idle and at its peak (sampled every
10 ms), against the goals: only 200, 413 or 503, and a peak within idle + max-queue x one decoded image.
The slow-body row: --slow-clients connections each send a request's headers and then its body a byte a
second, while one normal client posts --image --requests times; its p95 beside them against its p95
alone, the goal being within 1.5x.

It is bounded: it talks to 127.0.0.1 only, sends a fixed number of requests, each with a timeout, and stops
its servers when done. The clients run on the same CPUs as the server, as a service's callers on one
machine would. Without --weights it serves an untrained fused repyolov5s (5 classes), which finds no boxes;
pass the trained model to measure what users see.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from utils.paths import ROOT

LOOPBACK = "127.0.0.1"  # the only address this benchmark talks to
WARMUP_REQUESTS = 16
REQUEST_TIMEOUT_S = 60
FIRST_HUNDRED = 100
FLOOD_SIDE = 6000  # px: a flat 6000x6000 PNG, 36 megapixels, under serve.py's default 40
SLOW_BODY_BYTES = 100_000  # what each slow client announces; it sends one byte a second


@dataclass
class Level:
    """One row: a batching setting at one concurrency."""

    batching: str
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    @property
    def images_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        p50, p95 = np.percentile(self.latencies_ms, [50, 95]) if self.latencies_ms else (float("nan"),) * 2
        return (
            f"| {self.batching} | {self.concurrency} | {self.requests} | {self.images_per_second:.1f} | "
            f"{p50:.1f} | {p95:.1f} | {self.errors} |"
        )


class ServerProcess:
    """``python serve.py`` on a free port of 127.0.0.1, its output in ``log``; stopped on leaving."""

    def __init__(self, weights: Path, img_size: int, max_batch: int, max_wait_ms: float, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.command = [
            sys.executable, "serve.py", "--weights", str(weights), "--host", LOOPBACK,
            "--port", str(self.port), "--img", str(img_size),
            "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
        ]  # fmt: skip
        self.max_queue = 2 * max_batch  # serve.py's default --max-queue

    def __enter__(self) -> ServerProcess:
        self.output = open(self.log, "w")
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=self.output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(
            f"serve.py did not answer on port {self.port} within 180 s:\n{self.log.read_text()}"
        )

    def rss_mb(self) -> float:
        """The server's resident memory (Linux /proc), nan where that cannot be read."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return float("nan")
        kilobytes = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
        return kilobytes / 1024 if kilobytes else float("nan")

    def sample_rss(self, stop: threading.Event, period_s: float = 0.01) -> list[float]:
        """A thread's list of RSS samples every ``period_s`` until ``stop`` is set (read it after)."""
        samples: list[float] = []

        def sample() -> None:
            while not stop.is_set():
                samples.append(self.rss_mb())
                time.sleep(period_s)

        threading.Thread(target=sample, daemon=True).start()
        return samples

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def post_image(connection: http.client.HTTPConnection, body: bytes) -> int:
    """One POST /detect of the raw image; its HTTP status (the answer is read in full)."""
    connection.request("POST", "/detect", body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    answer = response.read()
    if response.status == 200:
        json.loads(answer)
    return response.status


def load(port: int, body: bytes, requests: int, concurrency: int, done: Callable[[], None]) -> Level:
    """``requests`` requests from ``concurrency`` threads; ``done()`` after each one answered."""
    level = Level("", concurrency, 0.0)
    counter, lock = itertools.count(), threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=REQUEST_TIMEOUT_S)
        while next(counter) < requests:
            start = time.perf_counter()
            try:
                ok = post_image(connection, body) == 200
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()  # reconnect on the next request
            elapsed_ms = (time.perf_counter() - start) * 1000
            with lock:
                if ok:
                    level.latencies_ms.append(elapsed_ms)
                else:
                    level.errors += 1
            done()
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level.seconds = time.perf_counter() - start
    return level


@dataclass
class Setting:
    name: str
    max_batch: int
    max_wait_ms: float


def measure(setting: Setting, weights: Path, options: argparse.Namespace, body: bytes, folder: Path) -> dict:
    """Every concurrency level against one server, printing each row: {"levels": [Level], "rss_mb": (after
    request "mark", after the last), "answered": requests answered, "mark": 100 or fewer}."""
    log = folder / f"serve-{setting.max_batch}.log"
    with ServerProcess(weights, options.img_size, setting.max_batch, setting.max_wait_ms, log) as server:
        load(server.port, body, min(WARMUP_REQUESTS, options.requests), 1, lambda: None)
        answered, first_rss = [0], [float("nan")]
        mark = min(FIRST_HUNDRED, options.requests * len(options.concurrency))
        lock = threading.Lock()

        def done() -> None:
            with lock:
                answered[0] += 1
                if answered[0] == mark:
                    first_rss[0] = server.rss_mb()

        levels = []
        for concurrency in options.concurrency:
            levels.append(load(server.port, body, options.requests, concurrency, done))
            levels[-1].batching = setting.name
            print(levels[-1].row(), flush=True)
        return {
            "levels": levels,
            "rss_mb": (first_rss[0], server.rss_mb()),
            "answered": answered[0],
            "mark": mark,
        }


def default_weights(folder: Path) -> Path:
    """An untrained fused repyolov5s with the bundled dataset's five classes, saved in ``folder``."""
    import torch

    from models.yolo import Model
    from utils.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = Model("repyolov5s.yaml", nc=5).eval().reparameterize()
    model.names = ["circle", "square", "triangle", "star", "cross"]
    return save_checkpoint(make_checkpoint(model), folder / "repyolov5s_untrained_fused.pt")


def run(options: argparse.Namespace) -> dict[str, dict]:
    """Print and return {row kind: its results}: "batching" {setting name: measure()}, "flood" and
    "slow-body" (see flood() and slow_body())."""
    body = Path(options.image).read_bytes()
    wait = f"{options.max_wait_ms:g} ms"
    settings = [
        Setting("off (max-batch 1)", 1, 0.0),
        Setting(f"on (max-batch {options.max_batch}, {wait})", options.max_batch, options.max_wait_ms),
    ]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        weights = Path(options.weights) if options.weights else default_weights(Path(folder))
        print(
            f"serve.py on {LOOPBACK}: {weights.name} at {options.img_size} px, {Path(options.image).name} as "
            f"the raw body, {options.requests} requests per row after "
            f"{min(WARMUP_REQUESTS, options.requests)} warm-up ones\n"
        )
        if "batching" in options.rows:
            print("| batching | concurrency | requests | images/s | p50 ms | p95 ms | errors |")
            print("|---|---|---|---|---|---|---|")
            results["batching"] = {
                setting.name: measure(setting, weights, options, body, Path(folder)) for setting in settings
            }
            report(results["batching"])
        on = settings[1]
        if "flood" in options.rows:
            with ServerProcess(
                weights, options.img_size, on.max_batch, on.max_wait_ms, Path(folder) / "f.log"
            ) as server:
                results["flood"] = flood(server, options.flood_clients)
        if "slow-body" in options.rows:
            with ServerProcess(
                weights, options.img_size, on.max_batch, on.max_wait_ms, Path(folder) / "s.log"
            ) as server:
                results["slow-body"] = slow_body(server, body, options.slow_clients, options.requests)
    return results


def flat_png(side: int = FLOOD_SIDE) -> bytes:
    """A flat gray side x side PNG: small to send, side * side * 3 bytes once decoded."""
    import cv2

    return cv2.imencode(".png", np.full((side, side, 3), 127, np.uint8))[1].tobytes()


def flood(server: ServerProcess, clients: int) -> dict:
    """``clients`` clients post one flat 36-megapixel PNG each, all at once. -> {"statuses": {status or
    "no answer": count}, "idle_mb", "peak_mb", "bound_mb"}; the row printed."""
    body = flat_png()
    decoded_mb = FLOOD_SIDE * FLOOD_SIDE * 3 / 2**20
    statuses: dict[str, int] = {}
    lock, start = threading.Lock(), threading.Event()

    def client() -> None:
        start.wait()
        connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=REQUEST_TIMEOUT_S * 2)
        try:
            status = str(post_image(connection, body))
        except (OSError, http.client.HTTPException, ValueError) as error:
            status = f"no answer ({type(error).__name__})"
        finally:
            connection.close()
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    time.sleep(1.0)  # settled after start-up
    idle = server.rss_mb()
    stop = threading.Event()
    samples = server.sample_rss(stop)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    start.set()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    stop.set()
    peak = max([idle, *samples])
    bound = idle + server.max_queue * decoded_mb
    only_expected = set(statuses) <= {"200", "413", "503"}
    answers = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
    print(
        f"\nflood: {clients} clients at once, each posting a flat {FLOOD_SIDE}x{FLOOD_SIDE} PNG "
        f"({len(body) / 1000:.0f} kB, {decoded_mb:.0f} MB decoded), --max-queue {server.max_queue}, "
        f"answered in {seconds:.1f} s\n"
        "| answers by status | RSS idle MB | RSS peak MB | bound: idle + max-queue x decoded MB | goals |\n"
        "|---|---|---|---|---|\n"
        f"| {answers} | {idle:.0f} | {peak:.0f} | {bound:.0f} | "
        f"{'only 200/413/503' if only_expected else 'OTHER STATUSES'}, "
        f"{'peak within bound' if peak <= bound else 'PEAK OVER BOUND'} |"
    )
    return {"statuses": statuses, "idle_mb": idle, "peak_mb": peak, "bound_mb": bound, "seconds": seconds}


def slow_body(server: ServerProcess, body: bytes, slow_clients: int, requests: int) -> dict:
    """One normal client's latency alone, then beside ``slow_clients`` connections that send their body a
    byte a second. -> {"alone": Level, "beside": Level, "ratio": p95 beside / alone, "opened": slow
    connections opened}; the row printed."""
    import socket

    load(server.port, body, min(WARMUP_REQUESTS, requests), 1, lambda: None)
    alone = load(server.port, body, requests, 1, lambda: None)
    head = (
        f"POST /detect HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n"
    ).encode()
    sockets, stop = [], threading.Event()
    for _ in range(slow_clients):
        try:
            sock = socket.create_connection((LOOPBACK, server.port), timeout=5)
            sock.sendall(head)
            sockets.append(sock)
        except OSError:
            break

    def trickle() -> None:  # a byte a second on every slow connection, from one thread
        while not stop.wait(1.0):
            for sock in sockets:
                try:
                    sock.send(b"\x89")
                except OSError:
                    pass

    threading.Thread(target=trickle, daemon=True).start()
    time.sleep(1.0)
    beside = load(server.port, body, requests, 1, lambda: None)
    stop.set()
    for sock in sockets:
        sock.close()
    p95_alone, p95_beside = (np.percentile(level.latencies_ms, 95) for level in (alone, beside))
    ratio = p95_beside / p95_alone
    print(
        f"\nslow bodies: {len(sockets)} connections sending a {SLOW_BODY_BYTES // 1000} kB body a byte a "
        f"second, one normal client posting {requests} requests\n"
        "| slow connections | normal p95 alone ms | normal p95 beside them ms | ratio | errors | goal |\n"
        "|---|---|---|---|---|---|\n"
        f"| {len(sockets)} | {p95_alone:.1f} | {p95_beside:.1f} | {ratio:.2f}x | {beside.errors} | "
        f"{'within 1.5x' if ratio <= 1.5 else 'OVER 1.5x'} |"
    )
    return {"alone": alone, "beside": beside, "ratio": ratio, "opened": len(sockets)}


def report(results: dict[str, dict]) -> None:
    """The memory lines, the ratio at the highest concurrency, and the errors over everything sent."""
    print()
    for name, result in results.items():
        first, last = result["rss_mb"]
        change = (last / first - 1) * 100 if first > 0 else float("nan")
        print(
            f"server RSS, batching {name}: {first:.1f} MB after request {result['mark']}, {last:.1f} MB "
            f"after request {result['answered']} ({change:+.1f}%)"
        )
    off, on = (result["levels"][-1] for result in results.values())
    if off.images_per_second:
        ratio = on.images_per_second / off.images_per_second
        print(f"concurrency {on.concurrency}: batching on / off = {ratio:.2f}x images/s")
    errors = sum(level.errors for result in results.values() for level in result["levels"])
    print(f"errors over every request sent: {errors}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", default=None, help="weights serve.py takes (default: untrained repyolov5s)"
    )
    parser.add_argument("--img", dest="img_size", type=int, default=160, help="serve.py --img")
    parser.add_argument(
        "--image", default=str(ROOT / "data" / "images" / "shapes0.jpg"), help="image to send"
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per setting and concurrency")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client threads per row"
    )
    parser.add_argument("--max-batch", type=int, default=16, help="serve.py --max-batch with batching on")
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="serve.py --max-wait-ms with batching on"
    )
    rows = ["batching", "flood", "slow-body"]
    parser.add_argument("--rows", nargs="+", choices=rows, default=rows, help="which rows to measure")
    parser.add_argument("--flood-clients", type=int, default=256, help="clients of the flood row")
    parser.add_argument("--slow-clients", type=int, default=200, help="slow-body connections (< 512)")
    options = parser.parse_args(argv)
    if options.requests < 1 or options.requests > 10_000 or min(options.concurrency) < 1:
        parser.error("--requests is 1 to 10000 and every --concurrency at least 1")
    return options


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
