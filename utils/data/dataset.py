"""The detection Dataset over the images a data YAML names (see utils.data.config), and its DataLoader.

Labels are YOLO txt files found with label_file_for (``/images/`` -> ``/labels/``); an image with no
label file or an empty one is a background image. Polygon rows give their extent as the box and keep
their points for the training mosaic, copy-paste and warp (utils.data.augment). A training set (augment)
in which no image has a label stops with one sentence (DataError), as yolov5 does; another split
without labels is only reported by its evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from utils.boxes import box_normxywh_to_xyxy, box_xyxy_to_normxywh
from utils.data import augment, disk_cache, preprocess, quad
from utils.data.config import IMAGE_SUFFIXES, image_files_from_sources
from utils.data.labels import check_classes, no_training_labels, scan_files, summarize
from utils.data.sampling import ImageWeightSampler
from utils.errors import DataError
from utils.hyp import Hyp

LOGGER = logging.getLogger(__name__)
MIN_EPOCH_BATCHES = 16  # a smaller training set is passed over several times per epoch (repeat=0)


@dataclass
class LoaderConfig:
    """How create_dataloader builds a dataset and its DataLoader; LoadedDataset reads the dataset fields."""

    img_size: int = 640  # long side of the resized images, and the side of the square letterbox or mosaic
    batch_size: int = 16
    stride: int = 32  # the model's largest stride: rect batch shapes are multiples of it
    hyp: Hyp | None = None  # augmentation hyperparameters; None: Hyp()
    augment: bool = False
    rect: bool = False  # batches of similar aspect ratio, each letterboxed to its own shape (fixed order)
    pad: float = 0.5  # rect only: padding added to each batch shape, in strides
    cache: str | None = None  # "ram", "disk" (utils.data.disk_cache) or None
    workers: int = 2  # DataLoader processes, at most the CPUs per DDP process and the number of batches
    shuffle: bool = False
    rank: int = -1  # DDP rank, -1 without DDP
    world_size: int = 1  # DDP processes
    seed: int = 0  # augmentation, shuffling and sampling
    prefix: str = ""  # starts each log message, e.g. "train: "
    nc: int | None = None  # classes in the data YAML, checked against the labels; None: from the labels
    repeat: int = 1  # passes over the dataset per epoch; 0: enough for MIN_EPOCH_BATCHES batches
    single_cls: bool = False  # every label's class read as 0 (yolov5's --single-cls); nc is then 1
    quad: bool = False  # yolov5's quad loader: each 4 images of a batch become one (see quad_collate)
    image_weights: bool = False  # draw images by class weights (utils.data.sampling); one process only

    @property
    def verbose(self) -> bool:
        """Summaries are logged by the main process only."""
        return self.rank in (-1, 0)


class LoadedDataset(Dataset):
    """Detection dataset. Item: (uint8 Tensor[3, H, W] RGB, Tensor[n, 6] (0, class, cx, cy, w, h) normalized,
    path, ((h0, w0), ((ratio_h, ratio_w), (pad_x, pad_y))))."""

    def __init__(self, sources: str | Path | list, config: LoaderConfig | None = None):
        config = config or LoaderConfig()
        self.config = config
        self.img_size, self.stride = config.img_size, config.stride
        self.augment, self.rect = config.augment, config.rect
        self.hyp = config.hyp or Hyp()
        self.perspective = augment.PerspectiveRanges.from_hyp(self.hyp)  # what random_perspective draws from
        self.use_mosaic = config.augment and not config.rect and self.hyp.mosaic > 0
        self.rng = np.random.default_rng(config.seed)
        prefix, nc, cache = config.prefix, config.nc, config.cache
        files = image_files_from_sources(sources)
        if not files:
            raise DataError(
                f"{prefix}no images ({', '.join(IMAGE_SUFFIXES)}) found in {sources}; fix the data paths."
            )
        entries, cache_file = scan_files(files)
        check_classes(entries, None if config.single_cls else nc)  # single_cls: any class becomes 0
        summarize(entries, prefix, cache_file, config.verbose)
        usable = [e for e in entries if not e["error"]]
        if config.augment and (error := no_training_labels(entries, sources, prefix)):
            raise DataError(error)
        if not usable:
            raise DataError(
                f"{prefix}no usable images in {sources} (all {len(entries)} are corrupt, see the warnings "
                "above); fix or remove those files."
            )
        self.image_files = [e["image"] for e in usable]
        self.labels = [np.array(e["labels"], dtype=np.float32).reshape(-1, 5) for e in usable]
        # per image, None (boxes only) or one (k, 2) normalized x, y array per label row (k = 0: a box row)
        self.segments: list[list[np.ndarray] | None] = [
            [np.array(s, dtype=np.float32).reshape(-1, 2) for s in e["segments"]] if e["segments"] else None
            for e in usable
        ]
        self.shapes = np.array([e["shape"] for e in usable], dtype=np.int64)  # (N, 2) original (w, h)
        if config.single_cls:
            nc = 1
            for labels in self.labels:
                labels[:, 0] = 0
        self.nc = (
            nc
            if nc is not None
            else int(max((lb[:, 0].max() for lb in self.labels if len(lb)), default=-1)) + 1
        )
        if config.rect:
            self._init_rect_batches(config.batch_size, config.pad)
        self.copy_paste = self._copy_paste_fraction(prefix, config.verbose)
        self.images: list[np.ndarray | None] = [None] * len(self.image_files)
        self.cache_files: list[Path | None] = [None] * len(self.image_files)  # cache="disk"
        if cache == "ram":
            self._cache_images(prefix, config.verbose)
        elif cache == "disk":
            self._cache_images_on_disk(prefix, config.verbose)
        elif cache not in (None, "", False):
            raise DataError(f"cache={cache!r} is not supported; use 'ram', 'disk' or leave it off.")

    def _init_rect_batches(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio; each batch gets the smallest stride-multiple shape holding its images."""
        aspect = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = aspect.argsort()
        self.image_files = [self.image_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.segments = [self.segments[i] for i in order]
        self.shapes, aspect = self.shapes[order], aspect[order]
        self.batch_index = np.arange(len(order)) // batch_size
        shapes = []
        for b in range(self.batch_index[-1] + 1):
            group = aspect[self.batch_index == b]
            if group.max() < 1:
                shapes.append([group.max(), 1.0])  # all wide: height is the fraction
            elif group.min() > 1:
                shapes.append([1.0, 1.0 / group.min()])  # all tall
            else:
                shapes.append([1.0, 1.0])
        self.batch_shapes = (
            np.ceil(np.array(shapes) * self.img_size / self.stride + pad) * self.stride
        ).astype(int)

    def _copy_paste_fraction(self, prefix: str, verbose: bool) -> float:
        """The hyp's copy_paste where it can act (training mosaics with polygon labels), else 0, said once."""
        fraction = float(getattr(self.hyp, "copy_paste", 0.0))
        if not (self.augment and fraction):
            return 0.0
        if all(segments is None for segments in self.segments):
            reason = "the labels are boxes only, and copy-paste pastes objects labelled with polygons"
        elif not self.use_mosaic:
            reason = "it acts on mosaics, as in yolov5, and mosaics are off"
        else:
            return fraction
        if verbose:
            LOGGER.warning(f"{prefix}copy_paste={fraction:g} does nothing here: {reason}.")
        return 0.0

    def _cache_images(self, prefix: str, verbose: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i, (img, _, _) in enumerate(pool.map(self._read_resized, range(len(self.image_files)))):
                self.images[i] = img
        if verbose:
            gb = sum(img.nbytes for img in self.images) / 1e9
            LOGGER.info(f"{prefix}cached {len(self.images)} images in RAM ({gb:.2f} GB)")

    def _cache_images_on_disk(self, prefix: str, verbose: bool) -> None:
        """Write the missing or outdated .npy files of utils.data.disk_cache (once, threaded) and use them."""
        from concurrent.futures import ThreadPoolExecutor

        def ensure(index: int) -> tuple[int, str]:  # -> (bytes written, error)
            w0, h0 = (int(v) for v in self.shapes[index])
            interpolation = augment.resize_interpolation(h0, w0, self.img_size, self.augment)
            cache_file = disk_cache.cache_file_for(self.image_files[index], self.img_size, interpolation)
            written = 0
            if not disk_cache.is_fresh(cache_file, self.image_files[index]):
                img = self._read_resized(index)[0]
                try:
                    disk_cache.write(cache_file, img, self.image_files[index])
                except OSError as error:
                    return 0, f"{cache_file} ({error})"
                written = img.nbytes
            self.cache_files[index] = cache_file
            return written, ""

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            sizes, errors = zip(*pool.map(ensure, range(len(self.image_files))))
        errors = [error for error in errors if error]
        if errors:
            LOGGER.warning(
                f"{prefix}could not write {len(errors)} image cache file(s), e.g. {errors[0]}; those images "
                "are decoded every time (make their folder writable to cache them)."
            )
        if verbose:
            reused = len(self) - len(errors) - sum(1 for n in sizes if n)
            LOGGER.info(
                f"{prefix}disk cache: {sum(sizes) / 1e9:.2f} GB written as .npy beside the images, "
                f"{reused} up to date"
            )

    def __len__(self) -> int:
        return len(self.image_files)

    def _read_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        path = self.image_files[index]
        img = cv2.imread(path)
        if img is None:
            raise DataError(f"{path} could not be read although the scan accepted it; check the file.")
        h0, w0 = img.shape[:2]
        img = augment.resize_to_fit(img, self.img_size, self.augment)
        return img, (h0, w0), img.shape[:2]

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """-> (BGR image with its long side = img_size, original (h0, w0), resized (h, w))."""
        img = self.images[index]
        if img is None and self.cache_files[index] is not None:
            img = disk_cache.read(self.cache_files[index], self._resized_hw(index))  # None: decode instead
        if img is not None:
            w0, h0 = self.shapes[index]
            return img, (int(h0), int(w0)), img.shape[:2]
        return self._read_resized(index)

    def _pixel_labels(self, index: int, width: float, height: float, pad_x: float = 0, pad_y: float = 0):
        """Labels for the image resized to (width, height) plus pad: ((n, 5) class, x1, y1, x2, y2 pixels,
        their segments in pixels or None, as utils.data.augment takes them)."""
        labels = self.labels[index].astype(np.float64)
        if len(labels):
            labels[:, 1:] = box_normxywh_to_xyxy(labels[:, 1:], width, height, pad_x, pad_y)
        segments = self.segments[index]
        if segments is not None:
            segments = [s.astype(np.float64) * (width, height) + (pad_x, pad_y) for s in segments]
        return labels, segments

    def _load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """A 4-image mosaic (this image + 3 random ones), randomly transformed to img_size square."""
        indices = [index, *(int(i) for i in self.rng.integers(0, len(self), size=3))]

        def load_piece(k: int) -> tuple[np.ndarray, np.ndarray, list | None]:
            img, _, (h, w) = self.load_image(indices[k])
            return img, *self._pixel_labels(indices[k], w, h)

        shapes_hw = [self._resized_hw(i) for i in indices]
        img, labels, _ = augment.random_mosaic(
            load_piece, shapes_hw, self.img_size, self.rng, self.perspective, self.copy_paste
        )
        return img, labels

    def _resized_hw(self, index: int) -> tuple[int, int]:
        """(h, w) that load_image will return, known without reading the image."""
        w0, h0 = (int(v) for v in self.shapes[index])
        return augment.fit_shape(h0, w0, self.img_size)

    def _load_letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.img_size
        img, (ratio_h, ratio_w), (pad_x, pad_y) = preprocess.letterbox(
            img, shape, auto=False, scaleup=self.augment
        )
        labels, segments = self._pixel_labels(index, w * ratio_w, h * ratio_h, pad_x, pad_y)
        shapes = ((h0, w0), ((h * ratio_h / h0, w * ratio_w / w0), (pad_x, pad_y)))
        if self.augment:
            img, labels, _ = augment.random_perspective(
                img, labels, self.rng, self.perspective, segments=segments
            )
        return img, labels, shapes

    def __getitem__(self, index: int):
        hyp = self.hyp
        if self.use_mosaic and self.rng.random() < hyp.mosaic:
            img, labels = self._load_mosaic(index)
            if self.rng.random() < hyp.mixup:
                other_img, other_labels = self._load_mosaic(int(self.rng.integers(0, len(self))))
                img, labels = augment.mixup(img, labels, other_img, other_labels, self.rng)
            w0, h0 = self.shapes[index]
            shapes = ((int(h0), int(w0)), ((1.0, 1.0), (0.0, 0.0)))  # mosaics do not map back to one original
        else:
            img, labels, shapes = self._load_letterboxed(index)
        height, width = img.shape[:2]
        labels_normalized = labels.copy()
        if len(labels):
            labels_normalized[:, 1:] = box_xyxy_to_normxywh(labels[:, 1:5], width, height)
        if self.augment:
            img, labels_normalized = augment.augment_colors_and_flips(img, labels_normalized, self.rng, hyp)
        targets = torch.zeros((len(labels_normalized), 6))
        if len(labels_normalized):
            targets[:, 1:] = torch.from_numpy(labels_normalized)
        return preprocess.image_to_tensor(img), targets, self.image_files[index], shapes


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str], list]:
    """-> (uint8 images (B, 3, H, W), targets (M, 6) [index in batch, class, cx, cy, w, h], paths, shapes).

    Images of different sizes (rect batches split by a DistributedSampler) are padded at the bottom and
    right to the largest, and their normalized targets rescaled to the padded size.
    """
    images, targets, paths, shapes = zip(*batch)
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    padded = []
    for i, (img, target) in enumerate(zip(images, targets)):
        target[:, 0] = i
        if img.shape[1:] != (height, width):
            scale_x, scale_y = img.shape[2] / width, img.shape[1] / height
            target[:, [2, 4]] *= scale_x
            target[:, [3, 5]] *= scale_y
            canvas = torch.full((3, height, width), preprocess.PAD_VALUE, dtype=img.dtype)
            canvas[:, : img.shape[1], : img.shape[2]] = img
            img = canvas
        padded.append(img)
    return torch.stack(padded), torch.cat(targets, 0), list(paths), list(shapes)


def quad_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str], list]:
    """yolov5's quad loader: collate, then each 4 images become one of twice the side (utils.data.quad);
    paths and shapes are those of each 4's first image."""
    images, targets, paths, shapes = collate(batch)
    images, targets = quad.random_quads(images, targets)
    return images, targets, paths[: 4 * len(images) : 4], shapes[: 4 * len(images) : 4]


def _worker_init(worker_id: int) -> None:
    cv2.setNumThreads(0)  # workers are the parallelism; cv2's own threads would oversubscribe the cores
    info = torch.utils.data.get_worker_info()
    getattr(info.dataset, "dataset", info.dataset).rng = np.random.default_rng(info.seed % 2**63)


def epoch_repeats(images: int, batch_size: int) -> int:
    """Passes over a training set of `images` per epoch so that an epoch has at least MIN_EPOCH_BATCHES
    batches of `batch_size` (all processes together). A tiny set (64 images at batch 16: 4 batches)
    otherwise gets so few optimizer steps in a run that it barely leaves the initialization; see the
    accuracy study (bench/README.md). A set of MIN_EPOCH_BATCHES batches or more is passed over once."""
    return max(1, math.ceil(MIN_EPOCH_BATCHES * batch_size / max(images, 1)))


def create_dataloader(sources: str | Path | list, config: LoaderConfig) -> tuple[DataLoader, LoadedDataset]:
    """Build the dataset and its DataLoader (one batch: see collate). Under DDP (config.rank >= 0,
    config.world_size processes) a DistributedSampler splits the data; call loader.sampler.set_epoch(epoch)
    each epoch. config.repeat: passes over the dataset per epoch (each pass in its own order); 0 picks
    enough passes for MIN_EPOCH_BATCHES batches (see epoch_repeats). config.image_weights: the loader's
    sampler is an ImageWeightSampler (utils.data.sampling) drawing that many images per epoch by class
    weights, for one process (it splits nothing between DDP processes); rect batches are turned off."""
    shuffle, rank, seed, prefix = config.shuffle, config.rank, config.seed, config.prefix
    if config.image_weights and config.rect:
        LOGGER.warning(f"{prefix}images drawn by class weights make no rect batches; rect turned off.")
        config = dataclasses.replace(config, rect=False)
    if config.rect and shuffle:
        LOGGER.warning(f"{prefix}rect batches need a fixed order; shuffle turned off.")
        shuffle = False
    dataset = LoadedDataset(sources, config)
    batch_size = min(config.batch_size, len(dataset))
    if config.quad and batch_size < 4:
        raise DataError(
            f"{prefix}the quad loader makes one image of each 4 in a batch, but a batch here holds "
            f"{batch_size}; give a batch size of 4 or more (and at least 4 images)."
        )
    world_size = config.world_size if rank >= 0 else 1
    cpus = (os.cpu_count() or 1) // world_size
    workers = max(0, min(config.workers, cpus, math.ceil(len(dataset) / batch_size)))
    repeat = config.repeat
    if repeat == 0:
        repeat = epoch_repeats(len(dataset), batch_size * world_size)
        if repeat > 1:
            LOGGER.info(
                f"{prefix}{len(dataset)} images are passed over {repeat} times per epoch, so that an epoch "
                f"has at least {MIN_EPOCH_BATCHES} batches (repeat=1 makes an epoch one pass)."
            )
    epoch_set = dataset if repeat <= 1 else Subset(dataset, list(range(len(dataset))) * repeat)
    sampler = DistributedSampler(epoch_set, shuffle=shuffle, seed=seed) if rank >= 0 else None
    if config.image_weights:  # the passes' worth of images, drawn from the whole set by weight
        sampler = ImageWeightSampler(dataset.labels, dataset.nc, len(epoch_set), seed)
        epoch_set = dataset
    generator = torch.Generator()
    generator.manual_seed(seed * 1000 + max(rank, 0))
    loader = DataLoader(
        epoch_set,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=quad_collate if config.quad else collate,
        drop_last=config.quad,  # as yolov5's: a quad batch is made of whole 4s
        worker_init_fn=_worker_init,
        generator=generator,
        persistent_workers=workers > 0,
    )
    return loader, dataset
