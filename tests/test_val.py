"""val.py end to end on a tiny hand-made dataset, and the evaluate() it shares with training: outputs,
empty cases, errors."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import val
from models.yolo import Model
from tests.helpers import BOX_BAR_NAMES
from utils.data.dataset import LoaderConfig, create_dataloader
from utils.evaluation.evaluate import evaluate
from utils.inference import InferenceModel, TorchInferenceModel

NAMES = BOX_BAR_NAMES  # the classes of the dataset fixture and of two_class_yolov5n_weights (conftest)
# Per image: (width, height) and labels (class, cx, cy, w, h) normalized. Image 4 is a background image.
IMAGES = {
    1: ((96, 64), [(0, 0.30, 0.40, 0.30, 0.40), (1, 0.70, 0.60, 0.20, 0.50)]),
    2: ((64, 96), [(0, 0.50, 0.30, 0.50, 0.25)]),
    3: ((80, 80), [(1, 0.40, 0.50, 0.30, 0.60), (0, 0.75, 0.25, 0.20, 0.20), (0, 0.25, 0.80, 0.25, 0.20)]),
    4: ((72, 64), []),
}
EXPECTED_KEYS = {"mAP50", "mAP50_95", "precision", "recall", "fitness", "per_class", "speed_ms"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CI machine's few cores are shared; one intra-op thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images with numeric stems, YOLO labels, a data YAML and a COCO annotation JSON (val_json)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    annotations = []
    for image_id, ((width, height), labels) in IMAGES.items():
        image = np.full((height, width, 3), 90, np.uint8)
        for cls, cx, cy, w, h in labels:
            x1, y1, x2, y2 = (
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            )
            cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (40, 200, 40 + 150 * cls), -1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls,
                    "iscrowd": 0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                }
            )
        cv2.imwrite(str(root / "images" / f"{image_id:04d}.jpg"), image)
        if labels:
            lines = "".join(f"{c} {x} {y} {w} {h}\n" for c, x, y, w, h in labels)
            (root / "labels" / f"{image_id:04d}.txt").write_text(lines)
    coco = {
        "images": [
            {"id": i, "width": wh[0], "height": wh[1], "file_name": f"{i:04d}.jpg"}
            for i, (wh, _) in IMAGES.items()
        ],
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for i, name in enumerate(NAMES)],
    }
    (root / "instances_val.json").write_text(json.dumps(coco))
    data = {"path": str(root), "train": "images", "val": "images", "nc": 2, "names": NAMES}
    (root / "data.yaml").write_text(yaml.safe_dump(dict(data, val_json="instances_val.json")))
    return root


class ColorDetector(InferenceModel):
    """A stand-in detector that finds the fixture's filled rectangles by color, in input pixels, so
    that a correct letterbox round trip scores mAP50 near 1."""

    def __init__(self):
        super().__init__(NAMES, 32, torch.device("cpu"), deploy=True)

    def __call__(self, images):
        batch = []
        for image in (images * 255).round().byte().permute(0, 2, 3, 1).numpy():  # (H, W, 3) RGB
            rows = []
            for cls, red_mask in enumerate((image[..., 0] < 110, image[..., 0] > 120)):
                mask = ((image[..., 1] > 150) & red_mask).astype(np.uint8)
                count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
                for x, y, w, h, area in stats[1:]:
                    if area >= 4:
                        scores = [1.0, 0.9, 0.0] if cls == 0 else [1.0, 0.0, 0.8]
                        rows.append([x + w / 2, y + h / 2, w, h, *scores])
            batch.append(torch.tensor(rows + [[0.0] * 7] * (10 - len(rows))))
        return torch.stack(batch)


def test_run_with_weights_writes_everything(dataset, two_class_yolov5n_weights, tmp_path):
    results = val.run(
        data=dataset / "data.yaml",
        weights=two_class_yolov5n_weights,
        img_size=64,
        batch_size=2,
        conf_thres=0.0,
        device="cpu",
        workers=0,
        save_json=True,
        save_txt=True,
        save_conf=True,
        verbose=True,
        project=tmp_path / "runs",
        name="exp",
    )
    save_dir = tmp_path / "runs" / "exp"
    assert EXPECTED_KEYS <= results.keys()
    assert set(results["speed_ms"]) == {"preprocess", "inference", "nms"}
    assert set(results["per_class"]) == set(NAMES) and results["per_class"]["box"]["instances"] == 4
    assert json.loads((save_dir / "metrics.json").read_text()) == json.loads(json.dumps(results))
    for plot in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png"):
        assert (save_dir / plot).stat().st_size > 0
    label_files = sorted(p.name for p in (save_dir / "labels").iterdir())
    assert label_files == ["0001.txt", "0002.txt", "0003.txt", "0004.txt"]
    first = (save_dir / "labels" / "0001.txt").read_text().split("\n")[0].split()
    assert len(first) == 6 and 0 <= float(first[1]) <= 1 and 0 <= float(first[5]) <= 1
    records = json.loads((save_dir / "tiny_predictions.json").read_text())  # yolov5's: <stem>_predictions
    assert (
        records
        and {r["image_id"] for r in records} <= {1, 2, 3, 4}
        and {r["category_id"] for r in records} <= {0, 1}
    )
    assert "coco_eval" in results  # the data YAML names a COCO annotation JSON
    again = val.run(
        data=dataset / "data.yaml",
        weights=two_class_yolov5n_weights,
        img_size=64,
        batch_size=2,
        conf_thres=0.0,
        workers=0,
        project=tmp_path / "runs",
        name="exp",
        plots=False,
        quiet=True,
    )
    assert (tmp_path / "runs" / "exp2" / "metrics.json").is_file() and again["mAP50"] == results["mAP50"]


def test_our_map_matches_pycocotools_end_to_end(dataset, tmp_path):
    """Detections through the letterbox and back: our mAP equals COCOeval on the original-pixel
    annotations, and is high, so labels and predictions are both mapped back correctly."""
    results = val.run(
        data=dataset / "data.yaml",
        model=ColorDetector(),
        img_size=64,
        batch_size=4,
        workers=0,
        save_json=True,
        save_dir=tmp_path / "fixed",
        quiet=True,
    )
    assert results["mAP50"] > 0.9 and results["mAP50_95"] > 0.5
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(dataset / "instances_val.json"))
        coco_eval = COCOeval(
            ground_truth, ground_truth.loadRes(str(tmp_path / "fixed" / "model_predictions.json")), "bbox"
        )
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    assert results["mAP50_95"] == pytest.approx(coco_eval.stats[0], abs=1e-3)
    assert results["mAP50"] == pytest.approx(coco_eval.stats[1], abs=1e-3)
    assert results["coco_eval"]["mAP50"] == pytest.approx(coco_eval.stats[1])


def test_zero_detections_report_zeros(dataset, two_class_yolov5n_weights, tmp_path):
    results = val.run(
        data=dataset / "data.yaml",
        weights=two_class_yolov5n_weights,
        img_size=64,
        conf_thres=0.999,
        device="cpu",
        workers=0,
        save_json=True,
        project=tmp_path,
        name="none",
    )
    assert results["mAP50"] == 0 and results["mAP50_95"] == 0 and results["precision"] == 0
    assert results["per_class"]["bar"]["AP50"] == 0
    assert (tmp_path / "none" / "F1_curve.png").is_file() and "coco_eval" not in results


def test_save_txt_writes_confidence_only_with_save_conf_and_save_hybrid_is_refused(
    dataset, two_class_yolov5n_weights, tmp_path
):
    """As in yolov5: --save-txt rows are class and box, --save-conf adds the confidence; --save-hybrid, which
    would score the ground truth as predictions, is one sentence (tests/test_cli.py checks every refusal)."""
    common = dict(data=dataset / "data.yaml", weights=two_class_yolov5n_weights, img_size=64, conf_thres=0.0,
                  device="cpu", workers=0, project=tmp_path, save_txt=True, plots=False)  # fmt: skip
    val.run(name="plain", **common)
    rows = [
        line.split()
        for path in (tmp_path / "plain" / "labels").glob("*.txt")
        for line in path.read_text().splitlines()
    ]
    assert rows and {len(row) for row in rows} == {5}
    with pytest.raises(SystemExit) as exit_info:
        val.parse_args(["--weights", "w.pt", "--save-hybrid"])
    assert exit_info.value.code == 2


def test_evaluate_is_the_library_function_training_calls(dataset, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    model = Model("yolov5n.yaml", nc=2).eval()
    config = LoaderConfig(img_size=64, batch_size=4, rect=True, workers=0, prefix="val: ")
    loader, _ = create_dataloader(str(dataset / "images"), config)
    result = evaluate(TorchInferenceModel(model, torch.device("cpu")), loader, NAMES, quiet=True)
    results = result.to_dict()
    assert EXPECTED_KEYS <= results.keys() and results["images"] == 4
    assert result.map50 == results["mAP50"] and result.map50_95 == results["mAP50_95"]
    assert not any(tmp_path.iterdir())  # evaluate itself writes nothing
    result.save(tmp_path / "train", plots=False)
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["images"] == 4


def test_speed_task(dataset, two_class_yolov5n_weights, tmp_path):
    results = val.run(
        data=dataset / "data.yaml",
        weights=two_class_yolov5n_weights,
        img_size=64,
        task="speed",
        device="cpu",
        workers=0,
        project=tmp_path,
        name="speed",
    )
    assert results["mAP50"] is None and results["images"] == 4 and results["input_shape"] == [1, 3, 64, 64]
    assert all(value >= 0 for value in results["speed_ms"].values())


def test_cli_arguments_and_image_size_default(dataset, two_class_yolov5n_weights, tmp_path, capsys):
    args = val.parse_args(
        ["--weights", "w.pt", "--img", "64", "--task", "speed", "--save-json", "--exist-ok"]
    )
    assert (
        args.img_size == 64
        and args.task == "speed"
        and args.save_json
        and args.exist_ok
        and args.data is None
    )
    assert val.parse_args(["--weights", "w.pt"]).conf_thres == 0.001
    bundled = {"defaults": {"img_size": 160}}
    assert val.default_img_size(None, False, bundled) == 160
    assert val.default_img_size(None, True, bundled) == 640
    assert val.default_img_size(320, False, bundled) == 320
    val.main(
        [
            "--weights",
            str(two_class_yolov5n_weights),
            "--data",
            str(dataset / "data.yaml"),
            "--img",
            "64",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--verbose",
            "--project",
            str(tmp_path),
            "--name",
            "cli",
        ]
    )
    printed = capsys.readouterr().err
    assert (
        "mAP50-95" in printed
        and "Speed:" in printed
        and "per image at shape (" in printed
        and "bar" in printed
    )
    with pytest.raises(SystemExit) as exit_info:
        val.main(["--weights", str(tmp_path / "missing.pt"), "--data", str(dataset / "data.yaml")])
    assert exit_info.value.code == 2 and "missing.pt not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        val.main(
            [
                "--weights",
                str(two_class_yolov5n_weights),
                "--data",
                str(dataset / "data.yaml"),
                "--task",
                "test",
                "--device",
                "cpu",
                "--project",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2 and "has no 'test' split" in capsys.readouterr().err
