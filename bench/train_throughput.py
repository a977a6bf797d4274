"""Training throughput (images/s) of repyolov5s (RepVGG training form) vs yolov5s on this machine.

    python -m bench.train_throughput [--img 320] [--batch-size 8] [--rounds 3] [--device cpu]

Each model trains in float32 and in the mixed precision train.py picks for the device (bfloat16 on a CPU
that computes it natively, float16 on CUDA; float32 only where there is none), the same initial weights
in both. Two measurements per model and precision, interleaved round by round so that load from other
processes hits all of them, both through the library's own training step (utils.train.epoch.train_step
with an OptimizerStep: channels_last, autocast, gradient clipping, the EMA update), as train.py runs it:
  step:  train_step on one fixed random batch (no data loading);
  epoch: train_one_epoch over a loader of --epoch-images bundled training images with the training
         augmentation (mosaic etc.), i.e. what an epoch of train.py costs per image, without validation.
Prints the median over rounds and the repyolov5s / yolov5s ratio (the training cost of the extra branches).

If the ``yolov5`` pip package happens to be importable (it is not a dependency of this project), its
yolov5s model and loss are timed on the same fixed batch too ("step" only), and our yolov5s / theirs
is printed: the check that our training step is not slower than yolov5's on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from models.yolo import Model
from utils.data.config import image_files_from_sources, load_data_config
from utils.data.dataset import LoaderConfig, create_dataloader
from utils.device import FLOAT32, Precision, select_device, time_sync, training_precision
from utils.hyp import Hyp, load_hyp
from utils.train.ema import ModelEMA
from utils.train.epoch import train_one_epoch, train_step
from utils.train.loss import YoloLoss
from utils.train.optim import EpochSchedule, build_optimizer
from utils.train.step import OptimizerStep, StepPlan
from utils.train.trainer import scale_loss_gains

MODELS = ("repyolov5s.yaml", "yolov5s.yaml")


class Trainee:
    """A model with the loss and OptimizerStep train.py would give it (no accumulation, no warmup), in
    ``precision`` (utils.device.training_precision: float32, or the device's mixed precision)."""

    def __init__(self, model: torch.nn.Module, loss_fn, hyp: Hyp, device: torch.device, precision: Precision):
        self.model = model.to(device, memory_format=torch.channels_last).train()
        self.loss_fn = loss_fn
        optimizer = build_optimizer(self.model, "SGD", lr=0.001, momentum=hyp.momentum)
        schedule = EpochSchedule(optimizer, epochs=1, lrf=hyp.lrf)
        ema = ModelEMA(self.model)
        self.step = OptimizerStep(self.model, optimizer, schedule, hyp, StepPlan(), ema, precision)
        self.iteration = 0

    def steps(self, images: torch.Tensor, targets: torch.Tensor, count: int) -> None:
        for _ in range(count):
            self.iteration += 1
            train_step(self.model, images, targets, self.loss_fn, self.step, self.iteration)

    def epoch(self, loader) -> None:
        train_one_epoch(self.model, loader, self.loss_fn, self.step, epoch=0, epochs=1, show_progress=False)


def random_targets(batch_size: int, nc: int, per_image: int = 4, seed: int = 0) -> torch.Tensor:
    """Tensor[B * per_image, 6] (image, class, cx, cy, w, h) normalized, boxes 5-40% of the image."""
    generator = torch.Generator().manual_seed(seed)
    count = batch_size * per_image
    image = torch.arange(batch_size).repeat_interleave(per_image).float()
    classes = torch.randint(0, nc, (count,), generator=generator).float()
    wh = torch.rand(count, 2, generator=generator) * 0.35 + 0.05
    xy = wh / 2 + torch.rand(count, 2, generator=generator) * (1 - wh)
    return torch.cat([image[:, None], classes[:, None], xy, wh], dim=1)


def measure_steps(trainee: Trainee, batch_size: int, img_size: int, steps: int, nc: int) -> float:
    """Images per second of ``steps`` training steps on one fixed uint8 batch (after one warm-up step)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (batch_size, 3, img_size, img_size), generator=generator, dtype=torch.uint8
    )
    targets = random_targets(batch_size, nc)
    trainee.steps(images, targets, 1)  # warm-up
    start = time_sync()
    trainee.steps(images, targets, steps)
    return steps * batch_size / (time_sync() - start)


def measure_epoch(trainee: Trainee, loader) -> float:
    start = time_sync()
    trainee.epoch(loader)
    return len(loader.dataset) / (time_sync() - start)


def build(cfg: str, nc: int, img_size: int, device, precision: Precision) -> Trainee:
    torch.manual_seed(0)  # both precisions of a model start from the same weights
    model = Model(cfg, nc=nc)
    hyp = load_hyp("hyp.scratch-low.yaml")
    gains = scale_loss_gains(hyp, model.detect.nl, nc, img_size)
    return Trainee(model, YoloLoss(model.detect, gains), hyp, device, precision)


def build_reference_yolov5(nc: int, img_size: int, device) -> Trainee | None:
    """The installed `yolov5` package's yolov5s and loss in our training step, or None when it is absent."""
    try:
        import yolov5
        from yolov5.models.yolo import Model as ReferenceModel
        from yolov5.utils.loss import ComputeLoss
    except ImportError:
        return None
    cfg = Path(yolov5.__file__).parent / "models" / "yolov5s.yaml"
    model = ReferenceModel(str(cfg), ch=3, nc=nc).to(device).train()
    model.nc = nc
    hyp = load_hyp("hyp.scratch-low.yaml")
    model.hyp = scale_loss_gains(hyp, model.model[-1].nl, nc, img_size).to_dict()
    return Trainee(model, ComputeLoss(model), hyp, device, FLOAT32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--img", dest="img_size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per round")
    parser.add_argument("--epoch-images", type=int, default=48, help="images in the timed 'epoch'")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(img_size=320, batch_size=8, steps=5, epoch_images=48, rounds=3, workers=2, device="cpu") -> dict:
    device = select_device(device)
    data = load_data_config(None)
    hyp = load_hyp("hyp.scratch-low.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "subset.txt"
        subset.write_text("\n".join(image_files_from_sources(data["train"])[:epoch_images]) + "\n")
        loader, _ = create_dataloader(
            str(subset),
            LoaderConfig(
                img_size=img_size,
                batch_size=batch_size,
                stride=32,
                hyp=hyp,
                augment=True,
                workers=workers,
                shuffle=True,
                nc=data["nc"],
            ),
        )
        precisions = [FLOAT32]
        mixed = training_precision(device)
        if mixed.mixed:
            precisions.append(mixed)
        built = {
            (cfg, precision.name): build(cfg, data["nc"], img_size, device, precision)
            for cfg in MODELS
            for precision in precisions
        }
        results = {key: {"step": [], "epoch": []} for key in built}
        reference = build_reference_yolov5(data["nc"], img_size, device)
        reference_steps = []
        for round_index in range(rounds):
            for key, trainee in built.items():
                results[key]["step"].append(measure_steps(trainee, batch_size, img_size, steps, data["nc"]))
                results[key]["epoch"].append(measure_epoch(trainee, loader))
                label, step_speed = f"{key[0]} {key[1]}", results[key]["step"][-1]
                print(
                    f"round {round_index + 1}/{rounds} {label:27s} step {step_speed:6.2f} img/s, "
                    f"epoch {results[key]['epoch'][-1]:6.2f} img/s",
                    flush=True,
                )
            if reference is not None:
                reference_steps.append(measure_steps(reference, batch_size, img_size, steps, data["nc"]))
                label = "yolov5 (package) float32"
                print(f"round {round_index + 1}/{rounds} {label:27s} step {reference_steps[-1]:6.2f} img/s")
    medians = {key: {k: statistics.median(v) for k, v in r.items()} for key, r in results.items()}
    print(
        f"\nTraining throughput at {img_size} px, batch {batch_size}, {device} "
        f"({torch.get_num_threads()} threads), median of {rounds} interleaved rounds; mixed precision: "
        f"{mixed.name} ({mixed.reason}):"
    )
    print(f"{'model':20s}{'precision':>10s}{'step img/s':>12s}{'epoch img/s':>13s}")
    for cfg, name in medians:
        print(f"{cfg:20s}{name:>10s}{medians[cfg, name]['step']:12.2f}{medians[cfg, name]['epoch']:13.2f}")
    for precision in precisions:
        rep, plain = medians[MODELS[0], precision.name], medians[MODELS[1], precision.name]
        print(
            f"{'ratio rep/plain':20s}{precision.name:>10s}{rep['step'] / plain['step']:12.2f}"
            f"{rep['epoch'] / plain['epoch']:13.2f}   (below 1: the RepVGG training form is slower)"
        )
    if mixed.mixed:
        for cfg in MODELS:
            fast, slow = medians[cfg, mixed.name], medians[cfg, "float32"]
            print(
                f"{cfg:20s}{mixed.name + '/fp32':>10s}{fast['step'] / slow['step']:12.2f}"
                f"{fast['epoch'] / slow['epoch']:13.2f}   (the speed-up of mixed precision)"
            )
    plain = medians[MODELS[1], "float32"]
    if reference_steps:
        theirs = statistics.median(reference_steps)
        print(f"{'yolov5 package':20s}{'float32':>10s}{theirs:12.2f}")
        print(
            f"{'ours/yolov5 (v5s)':20s}{'float32':>10s}{plain['step'] / theirs:12.2f}   "
            "(1 or above: not slower than yolov5)"
        )
        medians["yolov5_package", "float32"] = {"step": theirs}
    else:
        print("(the yolov5 pip package is not installed: no side-by-side with yolov5's own training step)")
    return {f"{cfg} {name}": values for (cfg, name), values in medians.items()}


def main(argv=None) -> dict:
    return run(**vars(parse_args(argv)))


if __name__ == "__main__":
    main()
