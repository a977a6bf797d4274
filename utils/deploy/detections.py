"""What a Detector call returns (``Detections``), and the summary line detect.py shares with it; the
drawing and crops they share are in utils.deploy.detect_outputs."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageShow

from utils.boxes import box_xyxy_to_xywh
from utils.data.config import IMAGE_SUFFIXES
from utils.deploy.detect_outputs import annotate, check_outputs_apart, crop_box, has_display, save_crops
from utils.errors import ConfigError
from utils.paths import increment_path

LOGGER = logging.getLogger(__name__)

XYXY_COLUMNS = ("xmin", "ymin", "xmax", "ymax", "confidence", "class", "name")  # yolov5's pandas() columns
XYWH_COLUMNS = ("xcenter", "ycenter", "width", "height", "confidence", "class", "name")
FRAME_COLUMNS = {"xyxy": XYXY_COLUMNS, "xyxyn": XYXY_COLUMNS, "xywh": XYWH_COLUMNS, "xywhn": XYWH_COLUMNS}


def plural(name: str, count: int) -> str:
    """English plural for the detection line: 'circle' -> 'circles', 'cross' -> 'crosses'."""
    if count == 1:
        return name
    return name + ("es" if name.endswith(("s", "x", "z", "ch", "sh")) else "s")


def describe(detections: np.ndarray | torch.Tensor, names: list[str]) -> str:
    """'2 circles, 1 square' (class order) for detections (n, 6), or '(no detections)'."""
    if len(detections) == 0:
        return "(no detections)"
    classes, counts = np.unique(np.asarray(detections[:, 5]).astype(int), return_counts=True)
    return ", ".join(f"{n} {plural(names[c], n)}" for c, n in zip(classes.tolist(), counts.tolist()))


def detections_frame(detections: torch.Tensor, columns: Sequence[str], names: list[str], pandas: Any) -> Any:
    """A pandas DataFrame of detections (n, 6) (4 box values, confidence, class): the box and confidence as
    float64, the class as int64 and its name, under ``columns``; typed alike when there are no rows."""
    values = detections.detach().cpu().double().numpy().reshape(-1, 6)  # (n, 6)
    classes = values[:, 5].astype(np.int64)
    frame = pandas.DataFrame(values[:, :5], columns=list(columns[:5]))
    frame[columns[5]] = classes
    frame[columns[6]] = pandas.Series([names[c] for c in classes], dtype=str)
    return frame


@dataclass
class DetectionFrames:
    """``Detections.pandas()``: per image a pandas DataFrame of its boxes, in each of the four formats, with
    yolov5's columns (xyxy, xyxyn: XYXY_COLUMNS; xywh, xywhn: XYWH_COLUMNS)."""

    xyxy: list
    xyxyn: list
    xywh: list
    xywhn: list


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel; IPython is looked at only when something imported it already."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


@dataclass
class Failure:
    """An input a Detector call left out (errors="skip"): its position, the path or 'input N', why."""

    index: int
    input: str
    message: str


class Detections:
    """The detections of one Detector call, per image that loaded.

    images: the images as BGR uint8 (H, W, 3) arrays whatever the input's order, as OpenCV letterboxes,
    draws and writes them (yolov5 keeps RGB here), so ``render()`` and ``crop()`` give BGR arrays too;
    ``save()`` and ``show()`` give the true colours. files: a name per image (the path it was read from,
    a PIL image's file name, or imageN.jpg). names: class names. xyxy: per image Tensor[n, 6] (x1, y1, x2,
    y2 in original pixels, confidence, class), highest confidence first; xywh has (center x, center y,
    width, height) instead, xyxyn and xywhn are normalized by the image size.
    input_hw: each image's letterboxed (height, width). t: (pre-process, inference, NMS) ms per image.
    failures: the inputs left out with errors="skip".
    """

    def __init__(
        self,
        images: list[np.ndarray],
        files: list[str],
        xyxy: list[torch.Tensor],
        names: list[str],
        input_hw: list[tuple[int, int]],
        t: tuple[float, float, float],
        failures: Sequence[Failure] = (),
    ) -> None:
        self.images, self.files, self.xyxy, self.names = images, files, xyxy, names
        self.input_hw, self.t, self.failures = input_hw, t, list(failures)

    def __len__(self) -> int:
        return len(self.images)

    def _gains(self, index: int) -> torch.Tensor:
        height, width = self.images[index].shape[:2]
        return torch.tensor([width, height, width, height, 1.0, 1.0])

    @property
    def xywh(self) -> list[torch.Tensor]:
        return [torch.cat((box_xyxy_to_xywh(d[:, :4]), d[:, 4:]), 1) for d in self.xyxy]

    @property
    def xyxyn(self) -> list[torch.Tensor]:
        return [d / self._gains(i) for i, d in enumerate(self.xyxy)]

    @property
    def xywhn(self) -> list[torch.Tensor]:
        return [d / self._gains(i) for i, d in enumerate(self.xywh)]

    def __str__(self) -> str:
        lines = []
        for i, (file, det, (height, width)) in enumerate(zip(self.files, self.xyxy, self.input_hw)):
            lines.append(f"image {i + 1}/{len(self)} {file}: {height}x{width} {describe(det, self.names)}")
        lines += [f"skipped {failure.input}: {failure.message}" for failure in self.failures]
        pre, inference, nms = self.t
        lines.append(
            f"Speed: {pre:.1f} ms pre-process, {inference:.1f} ms inference, {nms:.1f} ms NMS per image"
        )
        return "\n".join(lines)

    def print(self) -> None:
        """One line per image (its name, letterboxed size and detections per class), then the speed."""
        print(self)

    def render(
        self, line_thickness: int | None = None, hide_labels: bool = False, hide_conf: bool = False
    ) -> list:
        """Copies of the images with their boxes drawn (as detect.py draws them), BGR as ``images``; for
        PIL or matplotlib, reverse the channels (``image[..., ::-1]``)."""
        return [
            annotate(image, det, self.names, line_thickness, hide_labels, hide_conf)
            for image, det in zip(self.images, self.xyxy)
        ]

    def show(
        self, line_thickness: int | None = None, hide_labels: bool = False, hide_conf: bool = False
    ) -> None:
        """Show the rendered images: inline in a Jupyter notebook, else each in the system's image viewer
        (PIL's ``Image.show``, as yolov5 does). Without a display or a viewer it logs one warning saying
        so, and returns: a script that also saves its results goes on."""
        rendered = self.render(line_thickness, hide_labels, hide_conf)
        pictures = [Image.fromarray(np.ascontiguousarray(image[..., ::-1])) for image in rendered]  # RGB
        if in_notebook():
            from IPython.display import display

            for picture in pictures:
                display(picture)
            return
        if not has_display():
            LOGGER.warning(
                "WARNING: cannot show the images: no display is available (DISPLAY and WAYLAND_DISPLAY are "
                "unset); use results.save() or results.render() instead."
            )
            return
        for picture, file in zip(pictures, self.files):
            if not ImageShow.show(picture, title=Path(file).name):
                LOGGER.warning(
                    "WARNING: cannot show the images: PIL finds no image viewer on this system; use "
                    "results.save() or results.render() instead."
                )
                return

    def pandas(self) -> DetectionFrames:
        """The boxes as pandas DataFrames, one per image in each format (``DetectionFrames``), as yolov5's
        ``results.pandas().xyxy[0]``. Needs pandas, imported only here; raises ConfigError without it."""
        try:
            import pandas
        except ImportError:
            raise ConfigError(
                "Detections.pandas() needs pandas, which is not installed; pip install pandas."
            ) from None
        tables = {
            form: [detections_frame(d, columns, self.names, pandas) for d in getattr(self, form)]
            for form, columns in FRAME_COLUMNS.items()
        }
        return DetectionFrames(**tables)

    def tolist(self) -> list[Detections]:
        """One Detections per image, as yolov5's ``tolist()`` (for result in results.tolist()). Each keeps
        the call's per-image times; the call's failures stay with the call."""
        return [
            Detections([image], [file], [det], self.names, [hw], self.t)
            for image, file, det, hw in zip(self.images, self.files, self.xyxy, self.input_hw)
        ]

    def output_names(self) -> list[str]:
        """A distinct file name per image: its own name, '_2', '_3', ... added to repeats, .jpg if it has
        no image suffix."""
        names, seen = [], set()
        for file in self.files:
            path = Path(file)
            stem, suffix = path.stem, path.suffix if path.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
            name, k = stem + suffix, 1
            while name in seen:
                k += 1
                name = f"{stem}_{k}{suffix}"
            seen.add(name)
            names.append(name)
        return names

    def save(self, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False, **style) -> Path:
        """Write the annotated images (``render(**style)``) into save_dir (exp2, exp3, ... when it exists,
        unless exist_ok); returns the folder. Never replaces an input image."""
        save_dir = increment_path(save_dir, exist_ok)
        outputs = [save_dir / name for name in self.output_names()]
        check_outputs_apart(outputs, [f for f in self.files if Path(f).is_file()])
        for name, annotated in zip(self.output_names(), self.render(**style)):
            cv2.imwrite(str(save_dir / name), annotated)
        return save_dir

    def crop(self, save_dir: str | Path | None = None, exist_ok: bool = False) -> list[dict]:
        """Every box's crop: dicts with "box" Tensor[4] (x1, y1, x2, y2), "conf", "cls", "label" ('circle
        0.87'), "image" (BGR crop) and "file". With save_dir, also written as
        save_dir/crops/<class>/<image name>_<i>.jpg."""
        crops = []
        folder = increment_path(save_dir, exist_ok) / "crops" if save_dir is not None else None
        for image, det, file, name in zip(self.images, self.xyxy, self.files, self.output_names()):
            for row in det.tolist():
                label = f"{self.names[int(row[5])]} {row[4]:.2f}"
                crops.append(
                    {"box": torch.tensor(row[:4]), "conf": row[4], "cls": int(row[5]), "label": label,
                     "image": crop_box(image, row[:4]), "file": file}
                )  # fmt: skip
            if folder is not None:
                save_crops(image, det, self.names, folder, Path(Path(name).stem))
        return crops
