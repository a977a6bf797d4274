"""utils/deploy/detections.py: what yolov5's Detections adds beyond boxes. pandas() tables equal to the
boxes, tolist() one result per image, show() inline in a notebook, in a viewer with a display, and one
warning without one."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from tests.helpers import NAMES
from utils.deploy import detections as detections_module
from utils.deploy.detections import XYWH_COLUMNS, XYXY_COLUMNS, Detections
from utils.deploy.detector import Detector
from utils.errors import ConfigError
from utils.paths import ROOT

SAMPLES = sorted((ROOT / "data" / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def results(weights) -> Detections:
    """Two sample images with boxes, from paths: the tiny model at 64 px."""
    return Detector(weights, device="cpu")([str(p) for p in SAMPLES[:2]], size=64, conf=0.1)


def empty_result() -> Detections:
    return Detections([np.zeros((8, 8, 3), np.uint8)], ["empty.jpg"], [torch.zeros(0, 6)], NAMES, [(32, 32)],
                      (0.0, 0.0, 0.0))  # fmt: skip


def test_pandas_tables_have_yolov5s_columns_and_the_boxes(results):
    pandas = pytest.importorskip("pandas", reason="Detections.pandas() needs pandas: pip install pandas")
    tables = results.pandas()
    for form, columns in (("xyxy", XYXY_COLUMNS), ("xyxyn", XYXY_COLUMNS), ("xywh", XYWH_COLUMNS),
                          ("xywhn", XYWH_COLUMNS)):  # fmt: skip
        frames, boxes = getattr(tables, form), getattr(results, form)
        assert len(frames) == len(boxes) == 2
        for frame, rows in zip(frames, boxes):
            assert isinstance(frame, pandas.DataFrame) and len(frame) == len(rows) > 0
            assert list(frame.columns) == list(columns)
            assert [str(t) for t in frame.dtypes[:6]] == ["float64"] * 5 + ["int64"]
            assert pandas.api.types.is_string_dtype(frame["name"])
            np.testing.assert_array_equal(frame.iloc[:, :5].to_numpy(), rows[:, :5].double().numpy())
            np.testing.assert_array_equal(frame["class"].to_numpy(), rows[:, 5].long().numpy())
            assert frame["name"].tolist() == [NAMES[int(c)] for c in rows[:, 5]]
    assert tables.xyxy[0].columns[:4].tolist() == ["xmin", "ymin", "xmax", "ymax"]
    assert tables.xywh[0].columns[:4].tolist() == ["xcenter", "ycenter", "width", "height"]
    empty = empty_result().pandas().xyxy[0]  # no boxes: the same columns and types
    assert len(empty) == 0 and list(empty.columns) == list(XYXY_COLUMNS)
    assert [str(t) for t in empty.dtypes[:6]] == ["float64"] * 5 + ["int64"]


def test_pandas_without_pandas_is_one_sentence(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ConfigError, match=r"^Detections.pandas\(\) needs pandas, .*; pip install pandas.$"):
        results.pandas()


def test_tolist_gives_one_result_per_image(results):
    parts = results.tolist()
    assert len(parts) == 2 and all(isinstance(p, Detections) and len(p) == 1 for p in parts)
    for k, part in enumerate(parts):
        assert part.files == [results.files[k]] and part.xyxy[0] is results.xyxy[k]
        assert part.images[0] is results.images[k] and part.input_hw == [results.input_hw[k]]
        torch.testing.assert_close(part.xywhn[0], results.xywhn[k])
        assert part.names == results.names and part.t == results.t
    assert str(parts[1]).startswith(f"image 1/1 {results.files[1]}: ")


def rgb_renders(results: Detections) -> list[np.ndarray]:
    return [image[..., ::-1] for image in results.render()]


@pytest.fixture
def no_notebook(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)


def test_show_without_a_display_is_one_warning(results, no_notebook, monkeypatch, caplog):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(detections_module.ImageShow, "show", lambda *a, **k: pytest.fail("a viewer ran"))
    results.show()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
    assert "cannot show the images: no display is available" in warnings[0]


def test_show_with_a_display_opens_the_viewer_in_true_colours(results, no_notebook, monkeypatch, caplog):
    monkeypatch.setenv("DISPLAY", ":0")
    shown = []
    monkeypatch.setattr(
        detections_module.ImageShow, "show", lambda image, title: shown.append((image, title)) or True
    )
    results.show()
    assert [title for _, title in shown] == [p.name for p in SAMPLES[:2]]
    for (image, _), expected in zip(shown, rgb_renders(results)):
        np.testing.assert_array_equal(np.asarray(image), expected)
    monkeypatch.setattr(detections_module.ImageShow, "show", lambda image, title: False)
    results.show()  # no viewer program installed
    assert "PIL finds no image viewer" in caplog.text


def test_show_in_a_notebook_displays_inline(results, monkeypatch):
    """A Jupyter kernel (IPython with an IPKernelApp config) gets IPython.display.display of each image,
    even with no display; IPython itself is faked, as it need not be installed."""
    displayed = []
    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    display_module = types.ModuleType("IPython.display")
    display_module.display = displayed.append
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    monkeypatch.delenv("DISPLAY", raising=False)
    results.show()
    assert len(displayed) == 2
    for image, expected in zip(displayed, rgb_renders(results)):
        np.testing.assert_array_equal(np.asarray(image), expected)
    shell.config = {}  # a terminal IPython is not a notebook
    assert not detections_module.in_notebook()
