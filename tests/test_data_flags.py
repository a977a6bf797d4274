"""yolov5's data flags with yolov5's meaning, each checked by its effect on the batches of a tiny run:
train.py --single-cls (one class in the labels, the model and its checkpoint) and val.py --single-cls
(labels and predictions scored as one class), train.py --rect (rectangular batches, no mosaics, stride
multiples padded by 0) and --quad (each 4 images of a batch become one of twice the side)."""

from __future__ import annotations

import shutil

import cv2
import pytest
import torch
import yaml

import train
import utils.data.augment as augment_module
import utils.train.trainer as trainer_module
import val
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.config import load_data_config, single_class_config
from utils.data.dataset import LoaderConfig, create_dataloader
from utils.data.quad import combine_quads
from utils.deploy.detector import Detector
from utils.errors import ConfigError, DataError
from utils.inference import InferenceModel, SingleClassInference
from utils.nms import non_max_suppression
from utils.train.options import TrainOptions
from utils.train.trainer import build_model

RUN = dict(img_size=64, batch_size=4, device="cpu", workers=0, repeat=1, plots=False, tensorboard=False)


@pytest.fixture(scope="module")
def tiny(tiny_study_dataset):
    """(data YAML, the run keywords) of conftest's tiny dataset: 8 train and 4 val images at 64 px."""
    root, data_yaml, model_yaml = tiny_study_dataset
    return data_yaml, dict(cfg=str(model_yaml), data=str(data_yaml), project=str(root / "runs"), **RUN)


@pytest.fixture(scope="module")
def wide_and_tall(tiny_study_dataset, tmp_path_factory):
    """A data YAML of the tiny dataset's images stretched to 64x32 and 32x64 (w x h) in turn; a stretch
    leaves normalized labels right, so the label files are copied as they are."""
    root, data_yaml, _ = tiny_study_dataset
    shapes = root / "shapes"
    out = tmp_path_factory.mktemp("wide_and_tall")
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for k, image in enumerate(sorted((shapes / "images" / split).iterdir())):
            size = (64, 32) if k % 2 == 0 else (32, 64)  # cv2's (w, h)
            cv2.imwrite(str(out / "images" / split / image.name), cv2.resize(cv2.imread(str(image)), size))
            label = shapes / "labels" / split / f"{image.stem}.txt"
            if label.exists():
                shutil.copy(label, out / "labels" / split / label.name)
    names = yaml.safe_load(data_yaml.read_text())["names"]
    wide_yaml = out / "data.yaml"
    wide_yaml.write_text(yaml.safe_dump({"path": str(out), "train": "images/train", "val": "images/val",
                                         "names": names}))  # fmt: skip
    return wide_yaml


def spy_loaders(monkeypatch) -> list:
    """The (config, loader) of each create_dataloader call of utils.train.trainer, still building them."""
    built, real = [], trainer_module.create_dataloader

    def recorded(sources, config):
        loader, dataset = real(sources, config)
        built.append((config, loader))
        return loader, dataset

    monkeypatch.setattr(trainer_module, "create_dataloader", recorded)
    return built


def no_mosaic(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("a mosaic was made")

    monkeypatch.setattr(augment_module, "random_mosaic", refused)


# --- --single-cls ----------------------------------------------------------------------------------


def test_single_class_config_names_the_class_as_yolov5():
    config = {"nc": 3, "names": ["a", "b", "c"], "train": ["x"]}
    assert single_class_config(config) == {"nc": 1, "names": ["item"], "train": ["x"]}
    assert single_class_config({"nc": 1, "names": ["cat"]})["names"] == ["cat"]  # one name is kept
    assert config["nc"] == 3  # not changed in place


def test_single_cls_trains_one_class_and_its_checkpoint_says_so(tiny, monkeypatch):
    data_yaml, common = tiny
    built = spy_loaders(monkeypatch)
    result = train.run(epochs=1, single_cls=True, name="single", **common)
    (train_config, train_loader), (_, val_loader) = built
    assert train_config.single_cls and train_config.nc == 1
    for loader in (train_loader, val_loader):
        classes = torch.cat([targets[:, 1] for _, targets, _, _ in loader])
        assert len(classes) and (classes == 0).all()
    labels = create_dataloader(load_data_config(data_yaml)["train"], LoaderConfig(img_size=64))[1].labels
    assert len({int(c) for label in labels for c in label[:, 0]}) > 1, "the dataset has one class anyway"
    for weights in (result["last"], result["best"]):
        ckpt = torch.load(weights, weights_only=True)
        assert ckpt["nc"] == 1 and ckpt["names"] == ["item"] and ckpt["opt"]["single_cls"] is True
    # inference needs no flag: the class travels with the weights
    assert Detector(str(result["best"]), device="cpu").names == ["item"]
    scored = val.run(weights=result["best"], data=data_yaml, single_cls=True, img_size=64, device="cpu",
                     workers=0, plots=False, save_dir=result["save_dir"] / "val")  # fmt: skip
    assert list(scored["per_class"]) == ["item"] and scored["per_class"]["item"]["instances"] > 0
    with pytest.raises(DataError, match="--single-cls"):  # a one-class model on the 3-class dataset
        val.run(weights=result["best"], data=data_yaml, img_size=64, device="cpu", workers=0, plots=False)


def test_val_single_cls_scores_a_many_class_model_as_one_class(tiny, tmp_path):
    data_yaml, common = tiny
    names = load_data_config(data_yaml)["names"]
    model = build_model(TrainOptions(cfg=common["cfg"]), len(names), names, None)
    weights = save_checkpoint(make_checkpoint(model.eval()), tmp_path / "untrained.pt")
    scored = val.run(weights=weights, data=data_yaml, single_cls=True, img_size=64, device="cpu", workers=0,
                     plots=False, save_dir=tmp_path / "val")  # fmt: skip
    assert list(scored["per_class"]) == ["item"]
    assert val.parse_args(["--weights", "w.pt", "--single-cls"]).single_cls is True


class Fixed(InferenceModel):
    """A three-class predictor that returns ``output`` whatever it is shown."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__(["a", "b", "c"], 32, torch.device("cpu"), False)
        self.output = output

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.output


def test_single_class_predictions_are_yolov5s_class_agnostic_nms_with_class_zero():
    """yolov5's val --single-cls: multi-label NMS, class-agnostic, then every class set to 0. The wrapped
    model's one class (each box's best class score) gives the same detections under our NMS."""
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(1, 200, 4, generator=generator) * torch.tensor([64, 64, 24, 24]) + 4
    scores = torch.rand(1, 200, 4, generator=generator)  # objectness, 3 class scores
    output = torch.cat((boxes, scores), -1)  # (1, 200, 8)
    single = SingleClassInference(Fixed(output), "item")
    assert single.nc == 1 and single.names == ["item"] and single.stride == 32
    (ours,) = non_max_suppression(single(torch.zeros(1, 3, 64, 64)), 0.001, 0.6, multi_label=True)
    (reference,) = non_max_suppression(output, 0.001, 0.6, agnostic=True, multi_label=True)
    reference[:, 5] = 0
    assert len(ours) > 10
    torch.testing.assert_close(ours, reference)


# --- --rect ---------------------------------------------------------------------------------------


def test_rect_trains_on_rectangular_batches_without_mosaics(tiny, wide_and_tall, monkeypatch):
    """Wide images in one batch, tall ones in the other (aspect-ratio order), each batch letterboxed to its
    own stride multiple with yolov5's training pad 0: (32, 64) and (64, 32) at 64 px (pad 0.5, the
    validation's, would make both 64 x 64); no mosaic is made."""
    _, common = tiny
    no_mosaic(monkeypatch)
    built = spy_loaders(monkeypatch)
    train.run(epochs=1, rect=True, name="rect", **{**common, "data": str(wide_and_tall)})
    train_config, train_loader = built[0]
    assert train_config.rect and train_config.pad == 0.0
    shapes = [tuple(images.shape[2:]) for images, _, _, _ in train_loader]
    assert shapes == [(32, 64), (64, 32)]
    assert train.parse_args(["--rect"]).rect is True


# --- --quad ---------------------------------------------------------------------------------------


def test_quad_tiles_four_images_or_upsamples_the_first():
    images = torch.stack([torch.full((3, 32, 64), 30 * (k + 1), dtype=torch.uint8) for k in range(8)])
    targets = torch.tensor([[k, k, 0.5, 0.5, 0.2, 0.4] for k in range(8)])  # one box in each image's middle
    combined, quad_targets = combine_quads(images, targets, [False, True])
    assert combined.shape == (2, 3, 64, 128) and combined.dtype == torch.uint8
    tile = combined[0, 0]  # yolov5's layout: 0 top-left, 1 below it, 2 right of it, 3 bottom-right
    assert [tile[0, 0], tile[63, 0], tile[0, 127], tile[63, 127]] == [30, 60, 90, 120]
    expected = torch.tensor([[0, 0, 0.25, 0.25, 0.1, 0.2], [0, 1, 0.25, 0.75, 0.1, 0.2],
                             [0, 2, 0.75, 0.25, 0.1, 0.2], [0, 3, 0.75, 0.75, 0.1, 0.2],
                             [1, 4, 0.5, 0.5, 0.2, 0.4]])  # fmt: skip
    torch.testing.assert_close(quad_targets, expected)
    assert (combined[1] == 150).all()  # the 5th image upsampled; the 6th to 8th left out
    assert len(combine_quads(images[:6], targets[:6], [True])[0]) == 1  # a remainder under 4 is left out


def test_quad_trains_on_batches_of_a_quarter_at_twice_the_side(tiny, monkeypatch):
    data_yaml, common = tiny
    built = spy_loaders(monkeypatch)
    plans, real_plan = [], trainer_module.StepPlan

    def recorded_plan(*args, **kwargs):
        plans.append(real_plan(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(trainer_module, "StepPlan", recorded_plan)
    train.run(epochs=1, quad=True, name="quad", **common)
    (train_config, train_loader), (val_config, _) = built
    assert train_config.quad and not val_config.quad
    batches = list(train_loader)
    assert len(batches) == 2  # 8 images at batch 4: 2 batches of one 128 x 128 image
    for images, targets, paths, shapes in batches:
        assert images.shape == (1, 3, 128, 128) and len(paths) == len(shapes) == 1
        assert (targets[:, 0] == 0).all() and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
    assert plans[0].loss_scale == 4  # the loss of a quarter of the images, scaled as yolov5 scales it
    with pytest.raises(ConfigError, match="multiple of 4"):
        train.run(epochs=1, quad=True, name="quad6", **{**common, "batch_size": 6})
    with pytest.raises(DataError, match="quad"):
        create_dataloader(
            load_data_config(data_yaml)["val"], LoaderConfig(img_size=64, batch_size=2, quad=True)
        )
    assert train.parse_args(["--quad", "--single-cls"]).quad is True
