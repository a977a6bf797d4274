"""Dataset configuration in yolov5's format: the data YAML and the image lists it names.

A data YAML has ``path`` (optional root), ``train``/``val``/``test`` (each a folder of images, a .txt
list of image paths, or a list of either), ``nc`` and ``names`` (a list, or a dict {index: name}).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.errors import DataError, DataNotFoundError
from utils.paths import ROOT, load_yaml_mapping

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BUNDLED_DATA = ROOT / "data" / "shapes.yaml"
SINGLE_CLASS_NAME = "item"  # yolov5's name for the one class of a single-class run


def _resolve_root(data: dict, yaml_file: Path) -> Path:
    """A relative ``path`` is tried next to the YAML, then from the repository root (yolov5's habit)."""
    if not data.get("path"):
        return yaml_file.parent
    root = Path(data["path"]).expanduser()
    if root.is_absolute():
        return root
    if "generate" in data:  # a generated dataset lives next to its YAML
        return (yaml_file.parent / root).resolve()
    for base in (yaml_file.parent, ROOT, Path.cwd()):
        if (base / root).exists():
            return (base / root).resolve()
    return (ROOT / root).resolve()


def _split_sources(value: Any, root: Path) -> list[str] | None:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    return [
        str(p if (p := Path(str(v)).expanduser()).is_absolute() else (root / p).resolve()) for v in values
    ]


def _class_names(data: dict, yaml_file: Path) -> tuple[int, list[str]]:
    names = data.get("names")
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names, key=int)]
    nc = data.get("nc", len(names) if names else None)
    if nc is None:
        raise DataError(
            f"{yaml_file}: neither 'nc' nor 'names' is given; add 'names: [...]' to the data YAML."
        )
    names = [str(n) for n in names] if names else [f"class{i}" for i in range(int(nc))]
    if len(names) != int(nc):
        raise DataError(f"{yaml_file}: nc is {nc} but {len(names)} names are listed; make them agree.")
    return int(nc), names


def load_data_config(path: str | Path | None = None) -> dict:
    """Load a data YAML; None means the bundled synthetic dataset (generated under data/shapes/ on first use).

    A bare name that does not exist is looked up in data/. -> dict with "path", "train", "val", "test"
    (absolute list[str] or None), "nc", "names" (list[str]), "yaml_file", plus any other YAML keys.
    """
    yaml_file = Path(path) if path is not None else BUNDLED_DATA
    if not yaml_file.exists() and (ROOT / "data" / yaml_file.name).exists():
        yaml_file = ROOT / "data" / yaml_file.name
    if not yaml_file.is_file():
        raise DataNotFoundError(
            f"Data file {yaml_file} does not exist; pass a dataset YAML such as data/coco.yaml."
        )
    yaml_file = yaml_file.resolve()
    data = load_yaml_mapping(yaml_file, DataError, "train/val/nc/names keys (see data/coco.yaml)")
    root = _resolve_root(data, yaml_file)
    if "generate" in data:  # the bundled synthetic dataset: create it on first use
        from utils.data.synthetic import ensure_dataset

        ensure_dataset(root, **data["generate"])
    nc, names = _class_names(data, yaml_file)
    for key in ("train", "val"):
        if data.get(key) is None:
            raise DataError(f"{yaml_file}: the '{key}' key is missing; add the {key} image folder or list.")
    config = dict(data)
    config.update(
        path=str(root),
        train=_split_sources(data.get("train"), root),
        val=_split_sources(data.get("val"), root),
        test=_split_sources(data.get("test"), root),
        nc=nc,
        names=names,
        yaml_file=str(yaml_file),
    )
    return config


def single_class_config(config: dict) -> dict:
    """The data config read as one class, as yolov5's --single-cls reads it: nc 1, named as the dataset's
    one name when it has exactly one, else "item". The labels' classes become 0 where they are loaded
    (utils.data.dataset.LoaderConfig.single_cls)."""
    names = config["names"] if len(config["names"]) == 1 else [SINGLE_CLASS_NAME]
    return {**config, "nc": 1, "names": list(names)}


def bundled_defaults(config: dict, named: bool) -> dict:
    """The data YAML's ``defaults:`` block (img_size, epochs, batch_size, hyp): honored for the bundled
    dataset used without --data and for any generated dataset (a ``generate:`` block, such as
    data/shapes-hard.yaml) even when named; a user's own dataset gets yolov5's defaults instead."""
    if named and "generate" not in config:
        return {}
    return dict(config.get("defaults") or {})


def read_path_list(list_file: str | Path) -> list[Path]:
    """The paths a .txt list names, one per line; blank lines and '#' comments are skipped. A relative
    path is taken from the list's folder (yolov5's rule), or from the current directory when it exists
    only there."""
    list_file = Path(list_file)
    paths = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        if not path.is_absolute():
            beside = list_file.parent / path
            path = path if not beside.exists() and path.exists() else beside
        paths.append(path)
    return paths


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files_from_sources(sources: str | Path | list) -> list[str]:
    """Image files from folders (searched recursively), .txt lists (see read_path_list) and single image
    files. -> sorted absolute paths, duplicates removed."""
    files: list[str] = []
    for source in sources if isinstance(sources, (list, tuple)) else [sources]:
        source = Path(source).expanduser()
        if source.is_dir():
            files += [str(p.resolve()) for p in source.rglob("*") if is_image_file(p)]
        elif source.is_file() and source.suffix.lower() == ".txt":
            files += [str(p.resolve()) for p in read_path_list(source) if is_image_file(p)]
        elif source.is_file() and is_image_file(source):
            files.append(str(source.resolve()))
        else:
            raise DataNotFoundError(
                f"{source} is not an image folder, a .txt list of images or an image; "
                "fix the path in the data YAML (or download the dataset first)."
            )
    return sorted(set(files))
