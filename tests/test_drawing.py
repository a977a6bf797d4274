"""utils/evaluation/plots.py's draw_boxes, which detect.py, Detections.render and the service's annotated
images share: lines and labels in proportion to the image (yolov5's line width, max(round(0.003 * (h + w) /
2), 2)), so a label on a 160-px image no longer covers the object it names; an explicit width as before."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.deploy.detections import annotate
from utils.evaluation.plots import label_font_scale, line_width

NAMES = ["circle", "triangle"]


def label_height(side: int, line_thickness: int | None = None) -> int:
    """Rows covered by the label of one box drawn on a gray side x side image."""
    image = np.full((side, side, 3), 128, np.uint8)
    box = np.array([[side * 0.3, side * 0.5, side * 0.7, side * 0.9, 0.87, 1]])
    drawn = annotate(image, box, NAMES, line_thickness=line_thickness)
    changed = (drawn != image).any(-1)  # (side, side)
    above = changed[: int(side * 0.5) - 2].any(1)  # the rows above the box's top line: the label
    return int(above.sum())


@pytest.mark.parametrize("side, width", [(160, 2), (640, 2), (1280, 4), (1920, 6)])
def test_line_width_follows_the_image(side, width):
    assert line_width((side, side)) == width


def test_labels_are_in_proportion_to_the_image():
    small, large = label_height(160), label_height(1280)
    assert small <= 160 / 12  # was a sixth of the image (27 px) at the fixed width 3
    assert large > 2.5 * small and large <= 1280 / 25
    assert label_font_scale((1280, 1280)) == pytest.approx(1.28)


def test_an_explicit_line_thickness_draws_as_before():
    image = np.full((160, 160, 3), 128, np.uint8)
    box = np.array([[40.0, 80.0, 120.0, 150.0, 0.5, 0]])
    drawn = annotate(image, box, NAMES, line_thickness=3, hide_labels=True)
    expected = cv2.rectangle(image.copy(), (40, 80), (120, 150), (75, 25, 230), 3, cv2.LINE_AA)
    assert np.array_equal(drawn, expected)
    assert label_height(160, line_thickness=3) > 2 * label_height(160)
