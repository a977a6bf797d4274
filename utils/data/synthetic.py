"""The bundled synthetic detection datasets ("shapes"): a seeded generator of small images of colored shapes.

With the defaults (data/shapes.yaml) five classes differ in both shape and color (red circle, green
square, blue triangle, yellow star, magenta cross), from ~12 px to half the image, 1-6 per image with
limited overlap, on textured noisy backgrounds with distractor lines and blobs; about 10% of the images
are backgrounds (empty label file). The parameters of ``Scene`` make it harder (data/shapes-hard.yaml):
each shape in two colors, so that ten classes are told apart only by shape and color together; smaller
objects, more of them, hiding more of each other; unlabeled look-alikes (class shapes in colors no class
has, hollow outlines in class colors).
Layout written under ``root``: ``images/{train,val}/*.jpg`` and ``labels/{train,val}/*.txt`` (YOLO rows
``class cx cy w h``, normalized). Every image has its own seeded generator, so the output is identical
on every machine and for every run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)

CLASS_NAMES = ["circle", "square", "triangle", "star", "cross"]  # the shapes; the classes of one color family
# The shapes of the pretraining source dataset (data/shapes-source.yaml): other classes, the same world.
SOURCE_CLASS_NAMES = ["hexagon", "diamond", "arrow", "trapezoid", "chevron"]
# Base colors in BGR; each object jitters its color around the base. Shape k's color in family f is
# CLASS_COLORS[(k + f) % 5], so with two families every color is worn by two shapes.
CLASS_COLORS = [(40, 40, 220), (50, 190, 40), (220, 90, 30), (30, 220, 230), (200, 40, 200)]
COLOR_NAMES = ["red", "green", "blue", "yellow", "magenta"]
# Decoys' colors: >= 110 from every class color in some channel, so >= 50 apart after both jitters.
DECOY_COLORS = [(220, 220, 40), (235, 235, 235), (30, 30, 30), (180, 150, 255)]  # cyan, white, black, pink
SPLITS = ("train", "val")
MARKER = (
    "generated.json"  # written last: its presence (with matching parameters) means the dataset is complete
)
_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point shift, for sub-pixel accurate edges


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted two-color gradient with low-frequency texture and pixel noise. -> uint8 (H, W, 3) BGR."""
    color_a, color_b = rng.uniform(40, 200, size=(2, 3))
    color_a = color_a * 0.6 + color_a.mean() * 0.4  # desaturate so class colors stand out
    color_b = color_b * 0.6 + color_b.mean() * 0.4
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = color_a[None, None, :] * (1 - t[..., None]) + color_b[None, None, :] * t[..., None]
    texture = rng.normal(0, 18, size=(max(height // 16, 2), max(width // 16, 2), 1)).astype(np.float32)
    image += cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    return image.astype(np.float32)


def _distractors(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draw blobs of muted colors and thin lines of any color, in place."""
    height, width = image.shape[:2]
    for _ in range(rng.integers(0, 4)):
        color = rng.uniform(60, 190, size=3)
        color = color * 0.4 + color.mean() * 0.6
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(4, width // 4)), int(rng.integers(4, height // 4)))
        cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360, color.tolist(), -1, cv2.LINE_AA)
    for _ in range(rng.integers(0, 5)):
        points = rng.integers(0, [width, height], size=(2, 2))
        color = rng.uniform(0, 255, size=3).tolist()
        thickness = int(rng.integers(1, 3))
        cv2.line(image, tuple(map(int, points[0])), tuple(map(int, points[1])), color, thickness, cv2.LINE_AA)


@dataclass(frozen=True)
class Scene:
    """What one image may hold. The defaults are the easy dataset's and draw the same random numbers as
    before these options existed, so data/shapes/ stays byte-identical."""

    max_objects: int = 6
    min_object_size: float = 12.0  # px, the longer side of the shape's box
    max_object_fraction: float = 0.5  # of the shorter image side
    color_families: int = 1  # 1: 5 classes, one color per shape; 2: 10 classes, each shape in two colors
    max_occlusion: float = 0.3  # share of an earlier object's box that a later object may cover
    max_decoys: int = 0  # unlabeled look-alikes per image (0 to this many)
    shape_set: int = 0  # 0: CLASS_NAMES; 1: SOURCE_CLASS_NAMES (the pretraining source's classes)

    def __post_init__(self):
        if self.color_families not in (1, 2):
            raise ValueError(f"color_families is {self.color_families}; it must be 1 or 2.")
        if self.shape_set not in (0, 1):
            raise ValueError(
                f"shape_set is {self.shape_set}; it must be 0 (the target shapes) or 1 (source)."
            )


def class_names(color_families: int = 1, shape_set: int = 0) -> list[str]:
    """The class names: the shapes for one color family; "color-shape" for two (class: family * 5 + shape)."""
    shapes = SOURCE_CLASS_NAMES if shape_set == 1 else CLASS_NAMES
    if color_families == 1:
        return list(shapes)
    return [
        f"{COLOR_NAMES[(shape + family) % 5]}-{name}"
        for family in range(color_families)
        for shape, name in enumerate(shapes)
    ]


def _class_color(class_index: int) -> tuple[int, int, int]:
    shape, family = class_index % len(CLASS_NAMES), class_index // len(CLASS_NAMES)
    return CLASS_COLORS[(shape + family) % len(CLASS_COLORS)]


def _source_polygon(shape: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices of a source shape (an index into SOURCE_CLASS_NAMES), as _shape_polygon."""
    if shape == 0:  # hexagon, any rotation
        angles = np.linspace(0, 2 * math.pi, 6, endpoint=False) + rng.uniform(0, math.pi / 3)
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == 1:  # diamond, taller than wide
        width = rng.uniform(0.5, 0.75)
        return np.array([[0, -1], [width, 0], [0, 1], [-width, 0]], dtype=np.float64)
    if shape == 2:  # arrow pointing right
        return np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3], [-1, 0.3]])
    if shape == 3:  # trapezoid, wide base
        top = rng.uniform(0.3, 0.6)
        return np.array([[-top, -0.7], [top, -0.7], [1, 0.7], [-1, 0.7]], dtype=np.float64)
    return np.array([[-1, -1], [0, -0.2], [1, -1], [1, -0.2], [0, 0.8], [-1, -0.2]])  # chevron pointing down


def _shape_polygon(shape: int, rng: np.random.Generator, shape_set: int = 0) -> np.ndarray:
    """Vertices of a shape (an index into CLASS_NAMES, or SOURCE_CLASS_NAMES for shape_set 1) in a unit
    frame centered at 0, before scaling. -> float (K, 2) xy."""
    if shape_set == 1:
        return _source_polygon(shape, rng)
    if shape == 0:  # circle
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == 1:  # square, slightly rectangular
        aspect = rng.uniform(0.8, 1.25)
        return np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], dtype=np.float64)
    if shape == 2:  # triangle, roughly upright
        angles = np.deg2rad(np.array([-90.0, 30.0, 150.0]) + rng.uniform(-20, 20))
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == 3:  # five-pointed star, any rotation
        angles = np.linspace(0, 2 * math.pi, 10, endpoint=False) + rng.uniform(0, 2 * math.pi)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
    # plus-shaped cross, arms a third of the width
    a = 1.0 / 3.0
    return np.array(
        [
            [-a, -1],
            [a, -1],
            [a, -a],
            [1, -a],
            [1, a],
            [a, a],
            [a, 1],
            [-a, 1],
            [-a, a],
            [-1, a],
            [-1, -a],
            [-a, -a],
        ]
    )


def _placed_polygon(
    rng: np.random.Generator,
    shape: int,
    sizes: tuple[float, float],
    width: int,
    height: int,
    shape_set: int = 0,
) -> np.ndarray:
    """A shape, its box's longer side log-uniform in sizes (px), placed inside the image. -> (K, 2) xy px."""
    size = math.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1])))
    polygon = _shape_polygon(shape, rng, shape_set)
    extent = polygon.max(0) - polygon.min(0)
    polygon = (polygon - polygon.min(0)) * (size / extent.max())
    span = polygon.max(0)
    return polygon + rng.uniform([0, 0], [width - span[0], height - span[1]])


def _subpixel(polygon: np.ndarray) -> np.ndarray:
    return np.round(polygon * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def _fill(image: np.ndarray, polygon: np.ndarray, color: np.ndarray) -> None:
    cv2.fillPoly(image, [_subpixel(polygon)], color.tolist(), cv2.LINE_AA, _SUBPIXEL_BITS)


def _decoys(rng: np.random.Generator, image: np.ndarray, scene: Scene) -> None:
    """Up to scene.max_decoys unlabeled look-alikes, in place: a class shape filled with a color no class
    has, or a class shape's hollow outline in a class color. Drawn under the objects."""
    height, width = image.shape[:2]
    max_size = scene.max_object_fraction * min(width, height)
    sizes = (min(max(scene.min_object_size, 10.0), max_size), max_size)  # outlines need room to look hollow
    for _ in range(rng.integers(0, scene.max_decoys + 1)):
        shape = int(rng.integers(0, len(CLASS_NAMES)))
        polygon = _placed_polygon(rng, shape, sizes, width, height, scene.shape_set)
        if rng.random() < 0.5:
            base = DECOY_COLORS[int(rng.integers(0, len(DECOY_COLORS)))]
            _fill(image, polygon, np.clip(np.array(base) + rng.uniform(-15, 15, size=3), 0, 255))
        else:
            base = CLASS_COLORS[int(rng.integers(0, len(CLASS_COLORS)))]
            color = np.clip(np.array(base) + rng.uniform(-30, 30, size=3), 0, 255)
            cv2.polylines(image, [_subpixel(polygon)], True, color.tolist(), 1, cv2.LINE_AA, _SUBPIXEL_BITS)


def _overlap_ok(box: np.ndarray, boxes: list[np.ndarray], max_occlusion: float = 0.3) -> bool:
    """A new box (drawn on top) may hide <= max_occlusion of an earlier box and overlap by at most half
    of itself."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    for other in boxes:
        inter_w = min(box[2], other[2]) - max(box[0], other[0])
        inter_h = min(box[3], other[3]) - max(box[1], other[1])
        if inter_w <= 0 or inter_h <= 0:
            continue
        inter = inter_w * inter_h
        if inter > max_occlusion * (other[2] - other[0]) * (other[3] - other[1]) or inter > 0.5 * area:
            return False
    return True


def render_image(
    rng: np.random.Generator, width: int, height: int, scene: Scene = Scene(), background: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image. -> (uint8 (H, W, 3) BGR, float (n, 5) rows class, cx, cy, w, h normalized)."""
    image = _background(rng, height, width)
    _distractors(rng, image)
    if scene.max_decoys > 0:  # no draw at all otherwise: the easy dataset keeps its random sequence
        _decoys(rng, image, scene)
    boxes, labels = [], []
    wanted = 0 if background else int(rng.integers(1, scene.max_objects + 1))
    sizes = (scene.min_object_size, scene.max_object_fraction * min(width, height))
    for _ in range(wanted):
        class_index = int(rng.integers(0, len(CLASS_NAMES) * scene.color_families))
        for _attempt in range(30):
            shape = class_index % len(CLASS_NAMES)
            polygon = _placed_polygon(rng, shape, sizes, width, height, scene.shape_set)
            box = np.concatenate([polygon.min(0), polygon.max(0)])
            if _overlap_ok(box, boxes, scene.max_occlusion):
                break
        else:
            continue
        _fill(
            image,
            polygon,
            np.clip(np.array(_class_color(class_index)) + rng.uniform(-30, 30, size=3), 0, 255),
        )
        boxes.append(box)
        cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
        labels.append([class_index, cx, cy, (box[2] - box[0]) / width, (box[3] - box[1]) / height])
    image += rng.normal(0, rng.uniform(3, 12), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), np.array(labels, dtype=np.float64).reshape(-1, 5)


def _write_split(root: Path, split: str, count: int, split_index: int, params: dict) -> int:
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    width, height = (
        params["img_size"] if isinstance(params["img_size"], (list, tuple)) else [params["img_size"]] * 2
    )
    scene = Scene(**{field.name: params[field.name] for field in fields(Scene)})
    n_objects = 0
    for i in range(count):
        rng = np.random.default_rng([params["seed"], split_index, i])
        fraction = params["background_fraction"]
        background = math.floor((i + 1) * fraction) > math.floor(i * fraction)  # exactly that share
        image, labels = render_image(rng, width, height, scene, background)
        cv2.imwrite(str(image_dir / f"{split}_{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        rows = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
        (label_dir / f"{split}_{i:05d}.txt").write_text(rows)
        n_objects += len(labels)
    return n_objects


def dataset_params(
    img_size: int | tuple[int, int] = 160,
    train_images: int = 600,
    val_images: int = 120,
    seed: int = 0,
    background_fraction: float = 0.1,
    **scene,
) -> dict:
    """Every generation parameter (a data YAML's ``generate:`` keys; ``scene``: the fields of Scene) as a
    plain JSON value, defaults filled in. img_size: side or (width, height)."""
    scene = Scene(**scene)
    return {
        "img_size": list(img_size) if isinstance(img_size, (list, tuple)) else int(img_size),
        "train_images": int(train_images),
        "val_images": int(val_images),
        "seed": int(seed),
        "background_fraction": float(background_fraction),
        **{field.name: type(field.default)(getattr(scene, field.name)) for field in fields(Scene)},
    }


def generate_dataset(root: str | Path, **params) -> dict:
    """Write the dataset under root (replacing what is there); params: see dataset_params. -> all params."""
    root = Path(root)
    params = dataset_params(**params)
    start = time.perf_counter()
    objects = {}
    for split_index, split in enumerate(SPLITS):
        objects[split] = _write_split(root, split, params[f"{split}_images"], split_index, params)
    names = class_names(params["color_families"], params["shape_set"])
    (root / MARKER).write_text(json.dumps({"params": params, "names": names, "objects": objects}, indent=1))
    LOGGER.debug(f"Wrote {root} in {time.perf_counter() - start:.1f}s ({objects} objects).")
    return params


def ensure_dataset(root: str | Path, **params) -> Path:
    """Generate the dataset under root unless a complete one with the same parameters is there.

    Safe for several processes at once (torchrun): each writes to its own temporary folder and renames
    it into place; a process that loses the race discards its copy.
    """
    root = Path(root)
    if _is_complete(root, params):
        return root
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info(f"Generating the bundled synthetic dataset under {root} (first use, a few seconds)...")
    start = time.perf_counter()
    generate_dataset(tmp, **params)
    if _is_complete(root, params):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():  # stale or different parameters: move aside, then replace
        stale = root.parent / f".{root.name}.stale-{os.getpid()}"
        os.replace(root, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process renamed its copy into place between our check and rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(root, params):
            raise
    LOGGER.info(f"Generated {root} in {time.perf_counter() - start:.1f}s.")
    return root


def _is_complete(root: Path, params: dict) -> bool:
    marker = root / MARKER
    if not marker.is_file():
        return False
    try:  # a marker written before a parameter existed holds that parameter's default
        return dataset_params(**json.loads(marker.read_text())["params"]) == dataset_params(**params)
    except (ValueError, KeyError, TypeError):
        return False
