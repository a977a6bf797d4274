"""A synthetic video to test and measure tracking on: the bundled shapes moving over a textured background,
with their ground-truth tracks in MOTChallenge's format.

    scene = VideoScene(frames=300, size=(640, 480), seed=0)
    write_video("runs/video/shapes", scene)  # shapes.mp4 and gt/gt.txt

Objects (the five classes of data/shapes.yaml, 40 to 100 px) enter from the edges and leave, move at a
constant velocity or along turning paths, and pass in front of one another: a scripted head-on pair hides
one of its objects entirely for a few frames, the others cross wherever their paths meet. Each object has
a depth; nearer ones are drawn over farther ones. The background (a gradient with texture, blobs and lines)
stays still, and every frame gets its own sensor noise. Everything is drawn from one seeded generator, so
a scene is the same on every machine.

Ground truth: one row per object and frame where some of it is inside the frame, as MOTChallenge's gt.txt
writes it: frame (from 1), track ID (from 1), left, top, width, height (the box clipped to the frame),
1 (to be scored), class index (data/shapes.yaml's), visibility (the share of the object's pixels that
are in the frame and not hidden by a nearer object).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.data.labels import mot_rows
from utils.data.synthetic import CLASS_NAMES, _background, _class_color, _distractors, _fill, _shape_polygon
from utils.paths import atomic_open

GT_COLUMNS = ("frame", "id", "left", "top", "width", "height", "score", "class", "visibility")


@dataclass
class Mover:
    """One object's path: it exists from frame ``start`` (0-based) for ``frames`` frames, starting with its
    center at ``position`` and moving ``speed`` px a frame along ``heading``, which turns ``turn`` radians a
    frame. ``outline``: its polygon, centered at 0, in pixels."""

    track_id: int
    class_index: int
    outline: np.ndarray
    color: np.ndarray
    depth: float
    start: int
    frames: int
    position: tuple[float, float]
    heading: float
    speed: float
    turn: float = 0.0

    def center(self, frame: int) -> np.ndarray | None:
        """The center at a frame (0-based), or None when the object does not exist then."""
        step = frame - self.start
        if not 0 <= step < self.frames:
            return None
        if abs(self.turn) < 1e-9:
            offset = np.array([math.cos(self.heading), math.sin(self.heading)]) * self.speed * step
        else:  # an arc: the integral of the turning velocity
            radius = self.speed / self.turn
            angle = self.heading + self.turn * step
            offset = radius * np.array(
                [math.sin(angle) - math.sin(self.heading), math.cos(self.heading) - math.cos(angle)]
            )
        return np.asarray(self.position) + offset


def _entering(
    rng: np.random.Generator, track_id: int, start: int, size: tuple[int, int], frames: int
) -> Mover:
    """An object that enters from a random edge towards a random point of the frame's inner 70%."""
    width, height = size
    extent = float(rng.uniform(40, 100))
    class_index = int(rng.integers(0, len(CLASS_NAMES)))
    outline = _outline(rng, class_index, extent)
    edge = int(rng.integers(0, 4))
    margin = extent / 2 + 2
    along = rng.uniform(0.15, 0.85)
    position = [
        (along * width, -margin),
        (width + margin, along * height),
        (along * width, height + margin),
        (-margin, along * height),
    ][edge]
    target = rng.uniform([0.15 * width, 0.15 * height], [0.85 * width, 0.85 * height])
    heading = math.atan2(target[1] - position[1], target[0] - position[0])
    turn = float(rng.choice([0.0, rng.uniform(-0.012, 0.012)]))  # half go straight, half turn
    return Mover(track_id, class_index, outline, _color(rng, class_index), float(rng.uniform(0, 1)), start,
                 frames - start, position, heading, float(rng.uniform(3.0, 6.0)), turn)  # fmt: skip


def _outline(rng: np.random.Generator, class_index: int, extent: float) -> np.ndarray:
    polygon = _shape_polygon(class_index, rng)
    polygon = polygon - (polygon.max(0) + polygon.min(0)) / 2
    return polygon * (extent / (polygon.max(0) - polygon.min(0)).max())


def _color(rng: np.random.Generator, class_index: int) -> np.ndarray:
    return np.clip(np.array(_class_color(class_index)) + rng.uniform(-25, 25, size=3), 0, 255)


def _crossing_pair(rng: np.random.Generator, size: tuple[int, int], frames: int) -> list[Mover]:
    """Two objects meeting head-on at the middle of the frame at a third of the video: the farther one
    is hidden entirely for a few frames."""
    width, height = size
    meet, speed, y = frames // 3, 4.0, height * 0.5
    pair = []
    for track_id, direction, depth in ((1, 1.0, 0.1), (2, -1.0, 0.9)):
        class_index = track_id - 1
        x = width / 2 - direction * speed * meet
        pair.append(Mover(track_id, class_index, _outline(rng, class_index, 70.0), _color(rng, class_index),
                          depth, 0, frames, (x, y), 0.0 if direction > 0 else math.pi, speed))  # fmt: skip
    return pair


class VideoScene:
    """The objects and background of a synthetic video (see module docstring)."""

    def __init__(
        self, frames: int = 300, size: tuple[int, int] = (640, 480), seed: int = 0, objects: int = 8
    ):
        self.frames, self.size = frames, size
        rng = np.random.default_rng(seed)
        width, height = size
        self.background = _background(rng, height, width)
        _distractors(rng, self.background)
        self.movers = _crossing_pair(rng, size, frames)
        starts = np.sort(rng.integers(0, max(int(frames * 0.7), 1), size=objects))
        for track_id, start in enumerate(starts.tolist(), start=len(self.movers) + 1):
            self.movers.append(_entering(rng, track_id, start, size, frames))
        self.noise_seed = seed

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``frame`` (0-based) -> (uint8 (H, W, 3) BGR image, float (n, 9) ground-truth rows)."""
        width, height = self.size
        image = self.background.copy()
        owner = np.zeros((height, width), np.int32)  # which track's pixel each one shows (0: background)
        present = []
        for mover in sorted(self.movers, key=lambda m: m.depth):
            center = mover.center(frame)
            if center is None:
                continue
            polygon = mover.outline + center
            _fill(image, polygon, mover.color)
            cv2.fillPoly(owner, [np.round(polygon).astype(np.int32)], mover.track_id)
            present.append((mover, polygon))
        rng = np.random.default_rng((self.noise_seed, frame))
        image += rng.normal(0, 4.0, size=image.shape).astype(np.float32)
        rows = [_gt_row(frame, mover, polygon, owner == mover.track_id) for mover, polygon in present]
        rows = np.array([row for row in rows if row is not None], dtype=np.float64).reshape(
            -1, len(GT_COLUMNS)
        )
        return np.clip(image, 0, 255).astype(np.uint8), rows[np.argsort(rows[:, 1], kind="stable")]

    def __iter__(self):
        for frame in range(self.frames):
            yield self.render(frame)


def _gt_row(frame: int, mover: Mover, polygon: np.ndarray, shown: np.ndarray) -> list | None:
    """A ground-truth row (GT_COLUMNS) for an object drawn at ``polygon`` whose visible pixels are
    ``shown`` (a mask), or None when none is: the box of what can be seen, its visibility against the
    whole polygon's area."""
    left, top, width, height = cv2.boundingRect(shown.astype(np.uint8))
    if width < 2 or height < 2:
        return None
    xs, ys = polygon[:, 0], polygon[:, 1]
    area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))  # shoelace
    visibility = min(int(shown.sum()) / max(area, 1.0), 1.0)
    return [frame + 1, mover.track_id, left, top, width, height, 1, mover.class_index, visibility]


def write_video(root: str | Path, scene: VideoScene, fps: float = 30.0, name: str = "shapes.mp4") -> Path:
    """Write the scene's frames as ``root/name`` (MPEG-4) and its ground truth as ``root/gt/gt.txt``. -> the
    video's path."""
    root = Path(root)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    video = root / name
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), fps, scene.size)
    rows = []
    try:
        for image, truth in scene:
            writer.write(image)
            rows.append(truth)
    finally:
        writer.release()
    with atomic_open(root / "gt" / "gt.txt", "w") as file:
        file.write(mot_rows(np.concatenate(rows)))
    return video
