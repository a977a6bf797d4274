"""Test-time augmentation (utils.deploy.tta, --augment): every pass's boxes land back on the full-size input,
the edge levels are dropped as yolov5 drops them, and Detector, val.py and detect.py run with it."""

from __future__ import annotations

import pytest
import torch

import detect
import val
from utils.deploy.detector import Detector
from utils.deploy.tta import FLIPS, SCALES, AugmentedInference, level_cells
from utils.inference import InferenceModel
from utils.paths import ROOT

SAMPLE = ROOT / "data" / "images" / "shapes4.jpg"  # 160x256: a letterbox that is not square


class BrightBoxFinder(InferenceModel):
    """'Detects' the pixels brighter than 0.9 in each image: one row cx, cy, w, h, 1, 1 per image, in the
    pixels of the input it is given; ``levels``: instead, rows laid out per output level, objectness = the
    level's index, as a real head lays them out for that input."""

    def __init__(self, levels: bool = False) -> None:
        super().__init__(["thing"], 32, torch.device("cpu"), True)
        self.levels = levels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.levels:
            cells = level_cells(images.shape[-2:], self.stride)
            level = torch.cat([torch.full((3 * count,), float(k)) for k, count in enumerate(cells)])
            rows = torch.zeros(len(level), 6)
            rows[:, 4] = level
            return rows.expand(images.shape[0], -1, -1)
        rows = []
        for image in images:
            ys, xs = torch.nonzero(image.min(0).values > 0.9, as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            rows.append(torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0, 1.0]))
        return torch.stack(rows)[:, None]


def test_every_pass_maps_its_box_back_to_the_full_size_input():
    images = torch.full((2, 3, 160, 256), 0.3)
    images[0, :, 40:90, 30:110] = 1.0  # x 30..110, y 40..90
    images[1, :, 100:150, 200:250] = 1.0
    merged = AugmentedInference(BrightBoxFinder())(images)
    assert merged.shape == (2, len(SCALES), 6)
    truth = torch.tensor([[70.0, 65.0, 80.0, 50.0], [225.0, 125.0, 50.0, 50.0]])
    for image in range(2):
        # within the 1-2 pixels a 0.67x resize can move an edge
        assert (merged[image, :, :4] - truth[image]).abs().max() < 2.5, merged[image]
    assert FLIPS == (False, True, False)


def test_the_full_size_pass_drops_its_coarsest_level_and_the_smallest_its_finest():
    images = torch.zeros(1, 3, 160, 256)
    model = BrightBoxFinder(levels=True)
    merged = AugmentedInference(model)(images)[0, :, 4]
    full, mirrored, small = (
        model(torch.zeros(1, 3, *hw))[0, :, 4] for hw in [(160, 256), (160, 224), (128, 192)]
    )
    assert len(merged) == len(full[full != 2]) + len(mirrored) + len(small[small != 0])


@pytest.fixture(scope="module")
def detector(weights) -> Detector:
    detector = Detector(weights, device="cpu")
    detector.size, detector.conf = 96, 0.1
    return detector


def test_detector_augment_per_call_and_as_a_setting(detector, weights):
    plain = detector(str(SAMPLE)).xyxy[0]
    augmented = detector(str(SAMPLE), augment=True).xyxy[0]
    assert len(augmented) and not torch.equal(plain, augmented)
    height, width = 160, 256
    assert (augmented[:, [0, 2]] >= 0).all() and (augmented[:, [0, 2]] <= width).all()
    assert (augmented[:, [1, 3]] >= 0).all() and (augmented[:, [1, 3]] <= height).all()
    always = Detector(weights, device="cpu", augment=True)
    always.size, always.conf = 96, 0.1
    assert torch.equal(always(str(SAMPLE)).xyxy[0], augmented)
    assert torch.equal(always(str(SAMPLE), augment=False).xyxy[0], plain)


def test_val_and_detect_take_augment(weights, tiny_study_dataset, tmp_path):
    from models.yolo import Model
    from utils.inference import TorchInferenceModel

    _, data_yaml, model_yaml = tiny_study_dataset
    model = TorchInferenceModel(Model(model_yaml, nc=5).eval(), torch.device("cpu"))
    results = val.run(model=model, data=data_yaml, img_size=64, batch_size=4, device="cpu", workers=0,
                      augment=True, conf_thres=0.0, project=tmp_path, name="val", plots=False)  # fmt: skip
    assert {"mAP50", "mAP50_95"} <= set(results)
    detect.main(["--weights", str(weights), "--source", str(SAMPLE), "--img", "64", "--augment",
                 "--device", "cpu", "--project", str(tmp_path), "--name", "detect"])  # fmt: skip
    assert (tmp_path / "detect" / SAMPLE.name).is_file()
