"""Live video, end to end: frames per second, capture-to-annotated-frame latency and dropped frames for 1
and several streams per runtime, size and tracking, then tracking quality (MOTA, IDF1, ID switches) of
ByteTrack against a naive IoU-matching baseline on the synthetic video.

    python -m bench.video --weights runs/train/exp/weights/best.pt [--sizes 320 640] [--streams 1 4]
                          [--seconds 8] [--camera-fps 30] [--seeds 3 4 5] [--project runs/bench-video]

The cameras stand in for cv2.VideoCapture (``SceneCamera``): each plays the synthetic video
(utils.data.synthetic_video, 640x480) in real time at --camera-fps, through detect.py's own reader
threads (utils.data.sources.LoadStreams), so a model slower than the cameras drops frames exactly as it
would live. Each step runs the newest frame of every stream as one batch, tracks (utils.deploy.tracking)
and draws the boxes; a frame's latency runs from the moment its reader took it from the camera to the
moment its annotated copy is ready. "fps" is annotated frames per second per stream (at most the
camera's); "capacity" is frames per second the pipeline would do if a frame were always waiting (frames
over the time spent on them). The runtimes: the fused .pt in PyTorch, and convert.py's OpenVINO FP32 and
INT8 (NNCF) IRs at each size; the exports are kept under --project and reused.

Tracking quality: every frame of --seeds synthetic videos (300 frames each) through the fused .pt at the
first size, ByteTrack and the baseline scored with py-motmetrics against the ground truth. Objects less
than MIN_VISIBILITY visible are not scored: neither missing them nor finding them counts. The tracker's
thresholds (utils/deploy/tracking.py) were chosen on seeds 0 to 2, so the default seeds, 3 to 5, are
videos they were not chosen on.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from bench.quantization import LATENCY_CALIB, artefact, converted, cpu_features
from utils.data.sources import LoadStreams
from utils.data.synthetic_video import VideoScene
from utils.deploy.detections import annotate
from utils.deploy.detector import Detector
from utils.deploy.tracking import Tracker, low_conf

RUNTIMES = (  # (label, the artefact's format and precision: utils.deploy.formats)
    ("PyTorch", ("pytorch", "float32")),
    ("OpenVINO FP32", ("openvino", "float32")),
    ("OpenVINO INT8", ("openvino", "int8")),
)
MIN_VISIBILITY = 0.3  # objects less visible than this are not scored
VIDEO_FRAMES = 300


class SceneCamera:
    """A stand-in for cv2.VideoCapture: loops over frames, handing out each at its time at ``fps``."""

    def __init__(self, frames: list[np.ndarray], fps: float, offset: int = 0) -> None:
        self.frames, self.fps, self.number = frames, fps, offset
        self.next_time = time.monotonic()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)

    def grab(self) -> bool:
        time.sleep(max(self.next_time - time.monotonic(), 0.0))
        self.next_time += 1 / self.fps
        self.number += 1
        return True

    def read(self) -> tuple[bool, np.ndarray]:
        self.grab()
        return True, self.frames[self.number % len(self.frames)]

    def release(self) -> None:
        pass


def live_run(
    detector: Detector, frames: list[np.ndarray], streams: int, track: bool, seconds: float, camera_fps: float
) -> dict:
    """One live measurement (see module docstring) -> fps, capacity, latency p50/p95 (ms), dropped share."""
    detector.trackers.clear()
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder) / "cameras.streams"
        listing.write_text("".join(f"{k}\n" for k in range(streams)))
        loader = LoadStreams(listing, opener=lambda source: SceneCamera(frames, camera_fps, 37 * int(source)))
    latencies, busy, processed, started = [], 0.0, 0, time.monotonic()
    try:
        for batch in loader:
            begun = time.monotonic()
            images = [item.image for item in batch]
            if track:  # as detect.py --track runs its batches
                keys, times = [item.path for item in batch], [item.timestamp for item in batch]
                found = detector.track_batch(images, keys, times, camera_fps, channels="bgr")[1]
            else:
                found = detector(images, channels="bgr").xyxy
            for item, boxes in zip(batch, found):
                annotate(item.image, boxes, detector.names)
                latencies.append(time.monotonic() - item.captured)
            busy += time.monotonic() - begun
            processed += len(batch)
            if time.monotonic() - started >= seconds:
                break
    finally:
        loader.close()
    elapsed = time.monotonic() - started
    kept = sum(k for k, _ in loader.counts.values())
    return {
        "fps": processed / streams / elapsed,
        "capacity": processed / busy,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "dropped": 1 - processed / max(kept, 1),
    }


class NaiveTracker:
    """The baseline: each box takes the ID of the previous frame's box it overlaps most (IoU >= 0.3, each
    used once, greedily by IoU), else a new ID; a track missed for one frame is gone."""

    def __init__(self, conf: float) -> None:
        self.conf, self.previous, self.ids, self.next_id = conf, torch.zeros(0, 4), [], 1

    def update(self, detections: torch.Tensor) -> torch.Tensor:
        boxes = detections[detections[:, 4] >= self.conf]
        ids = [0] * len(boxes)
        if len(boxes) and len(self.previous):
            overlaps = box_iou(boxes[:, :4], self.previous)
            for flat in torch.argsort(overlaps.flatten(), descending=True).tolist():
                row, column = divmod(flat, overlaps.shape[1])
                if overlaps[row, column] < 0.3:
                    break
                if not ids[row] and self.ids[column] not in ids:
                    ids[row] = self.ids[column]
        for row, value in enumerate(ids):
            if not value:
                ids[row], self.next_id = self.next_id, self.next_id + 1
        self.previous, self.ids = boxes[:, :4], ids
        return torch.cat([boxes, torch.tensor(ids, dtype=torch.float32).reshape(-1, 1)], 1)


def scored_frame(truth: np.ndarray, tracked: torch.Tensor) -> tuple[list, list, np.ndarray]:
    """One frame for py-motmetrics: (ground-truth IDs, track IDs, distance 1 - IoU, NaN below IoU 0.5),
    leaving out objects under MIN_VISIBILITY and the tracks that cover only those."""
    boxes = torch.from_numpy(np.c_[truth[:, 2:4], truth[:, 2:4] + truth[:, 4:6]]).float()
    scored = torch.from_numpy(truth[:, 8] >= MIN_VISIBILITY)
    overlaps = (
        box_iou(boxes, tracked[:, :4])
        if len(boxes) and len(tracked)
        else torch.zeros(len(boxes), len(tracked))
    )
    hidden_only = (overlaps[~scored] >= 0.5).any(0) & ~(overlaps[scored] >= 0.5).any(0)
    kept = ~hidden_only
    distances = 1 - overlaps[scored][:, kept].double().numpy()
    distances[distances > 0.5] = np.nan
    return truth[scored.numpy(), 1].astype(int).tolist(), tracked[kept, 6].int().tolist(), distances


def tracking_quality(detector: Detector, seeds: Sequence[int]) -> dict:
    """{tracker: {seed: {mota, idf1, switches}}} on the synthetic videos (see module docstring)."""
    import motmetrics

    metrics = motmetrics.metrics.create()
    results: dict = {"ByteTrack": {}, "IoU baseline": {}}
    for seed in seeds:
        scene = VideoScene(frames=VIDEO_FRAMES, size=(640, 480), seed=seed)
        accumulators = {name: motmetrics.MOTAccumulator(auto_id=True) for name in results}
        bytetrack, naive = Tracker(detector.conf, 30.0), NaiveTracker(detector.conf)
        for index, (image, truth) in enumerate(scene):
            found = detector(image, channels="bgr", conf=low_conf(detector.conf)).xyxy[0]
            for name, tracked in (
                ("ByteTrack", bytetrack.update(found, index / 30)),
                ("IoU baseline", naive.update(found)),
            ):
                accumulators[name].update(*scored_frame(truth, tracked))
        for name, accumulator in accumulators.items():
            summary = metrics.compute(accumulator, metrics=["mota", "idf1", "num_switches"], name=name)
            row = summary.iloc[0]
            results[name][seed] = {
                "mota": float(row["mota"]),
                "idf1": float(row["idf1"]),
                "switches": int(row["num_switches"]),
            }
    return results


def runtimes(weights: Path, size: int, project: Path) -> dict[str, Path]:
    """{runtime label: artefact} of ``weights`` at ``size``, converted once under project (reused)."""
    fused = converted(weights, project / f"{size}", size, LATENCY_CALIB, None)["fused"]
    return {label: artefact(fused, *written) for label, written in RUNTIMES}


def run(
    weights: str | Path,
    sizes: Sequence[int] = (320, 640),
    streams: Sequence[int] = (1, 4),
    seconds: float = 8.0,
    camera_fps: float = 30.0,
    seeds: Sequence[int] = (3, 4, 5),
    project: str | Path = "runs/bench-video",
    json_path: str | Path | None = None,
) -> dict:
    """Measure, print both tables and return (and write to json_path) every number."""
    weights, project = Path(weights), Path(project)
    frames = [image for image, _ in VideoScene(frames=VIDEO_FRAMES, size=(640, 480), seed=0)]
    live = []
    for size in sizes:
        for label, path in runtimes(weights, size, project).items():
            detector = Detector(path, device="cpu")
            detector.size = size
            detector.warmup()
            for count in streams:
                for track in (False, True):
                    row = live_run(detector, frames, count, track, seconds, camera_fps)
                    live.append({"runtime": label, "size": size, "streams": count, "track": track, **row})
                    print(format_live([live[-1]], header=len(live) == 1), flush=True)
    detector = Detector(runtimes(weights, sizes[0], project)["PyTorch"], device="cpu")
    detector.size = sizes[0]
    quality = tracking_quality(detector, seeds)
    print(format_quality(quality, sizes[0]))
    results = {
        "cpu": platform.processor() or platform.machine(),
        "features": cpu_features(),
        "camera_fps": camera_fps,
        "live": live,
        "quality": quality,
    }
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str))
    return results


def format_live(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| runtime | size | streams | tracking | fps per stream | capacity fps | latency p50 / p95 ms "
            "| dropped |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['size']} | {r['streams']} | {'on' if r['track'] else 'off'} | "
            f"{r['fps']:.1f} | {r['capacity']:.1f} | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} | "
            f"{100 * r['dropped']:.0f}% |"
        )
    return "\n".join(lines)


def format_quality(quality: dict, size: int) -> str:
    lines = [
        f"\nTracking on the synthetic video ({VIDEO_FRAMES} frames, 640x480, PyTorch at {size}): mean "
        "(min to max) over the seeds",
        "| tracker | MOTA | IDF1 | ID switches | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, by_seed in quality.items():
        cells = []
        for key, scale in (("mota", 100), ("idf1", 100), ("switches", 1)):
            values = np.array([r[key] for r in by_seed.values()], dtype=float) * scale
            cells.append(f"{values.mean():.1f} ({values.min():.1f} to {values.max():.1f})")
        lines.append(f"| {name} | {' | '.join(cells)} | {len(by_seed)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", required=True, help="a checkpoint of the main job (training form or fused)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each live measurement")
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[3, 4, 5], help="synthetic videos for tracking"
    )
    parser.add_argument("--project", default="runs/bench-video")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    return run(
        args.weights,
        args.sizes,
        args.streams,
        args.seconds,
        args.camera_fps,
        args.seeds,
        args.project,
        args.json,
    )


if __name__ == "__main__":
    main()
