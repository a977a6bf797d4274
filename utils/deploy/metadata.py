"""The exported files' format: what the graph's input and output are called and how the metadata a loader
needs (class names, stride, input size, whether the axes are dynamic) travels with them, in one of the
ways this module writes and reads: string entries in the model file (an ONNX model's ``metadata_props``,
a CoreML model's user-defined metadata), ``metadata.yaml`` in a model folder (OpenVINO, NCNN), or a zip
archive appended to a flatbuffer file (LiteRT, ExecuTorch: their runtimes read the model from the start
of the file and ignore what follows, as yolov5 does for TFLite). Each format's module
(utils.deploy.formats) says which it uses.

The graph has one input ``images`` (B, 3, H, W) float32 RGB in 0..1 and one output ``output``
(B, N, 5 + nc) with the decoded predictions (cx, cy, w, h in input pixels, objectness, class scores),
the same as ``Model`` in eval mode.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from utils.errors import WeightsError
from utils.paths import load_yaml_mapping, write_text_atomic

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "images"
OUTPUT_NAME = "output"
FOLDER_METADATA = "metadata.yaml"  # in a model folder
ZIP_METADATA = "metadata.json"  # in the zip appended to a flatbuffer file


def write_metadata(onnx_model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Add ``values`` to metadata_props: strings as they are, anything else as JSON."""
    for key, value in values.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, encoded(value)


def read_metadata(onnx_model: onnx.ModelProto) -> dict[str, Any]:
    """metadata_props as a dict, JSON values decoded (decoded)."""
    return decoded((entry.key, entry.value) for entry in onnx_model.metadata_props)


def encoded(value: Any) -> str:
    """A metadata value as a string entry of a model file (ONNX, CoreML): strings as they are, anything
    else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def decoded(entries: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """String entries (key, value) as a dict, JSON values decoded (strings that are not JSON stay
    strings): what encoded wrote."""
    out: dict[str, Any] = {}
    for key, value in entries:
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def write_folder_metadata(folder: Path, metadata: dict[str, Any]) -> Path:
    return write_text_atomic(folder / FOLDER_METADATA, yaml.safe_dump(metadata, sort_keys=False))


def read_folder_metadata(folder: Path, model_file: str, flag: str) -> dict[str, Any]:
    """The metadata.yaml in an exported model's folder. Raises WeightsError when it is missing, unreadable
    or malformed (check_metadata), naming convert.py's ``flag`` that writes such a folder."""
    metadata_file = folder / FOLDER_METADATA
    if not metadata_file.is_file():
        raise WeightsError(
            f"{folder} has no {FOLDER_METADATA} beside {model_file}, so it was not exported by RepYOLO; "
            f"export the checkpoint with convert.py {flag}."
        )
    metadata = load_yaml_mapping(metadata_file, WeightsError, "export metadata (names, stride)")
    return check_metadata(folder, metadata, flag)


def with_zip_metadata(content: bytes, metadata: dict[str, Any]) -> bytes:
    """A model file's ``content`` with ``metadata`` appended as a zip archive holding metadata.json."""
    buffer = io.BytesIO(content)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr(ZIP_METADATA, json.dumps(metadata))
    return buffer.getvalue()


def read_zip_metadata(path: Path, flag: str) -> Any:
    """The metadata appended by with_zip_metadata, as its JSON holds it (check_metadata checks it); None when
    the file carries none (no zip at its end, or one without metadata.json). WeightsError (one sentence naming
    the file and convert.py's ``flag`` that re-exports it) when the zip is there but damaged or its
    metadata.json is not JSON."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):  # no zip at its end: not written by RepYOLO
        return None
    with archive:
        if ZIP_METADATA not in archive.namelist():
            return None
        try:
            text = archive.read(ZIP_METADATA)
        except Exception as error:  # a damaged member: BadZipFile (CRC), zlib.error, EOFError, ...
            raise malformed(path, f"the zip at its end is damaged ({error})", flag) from None
    return parse_json_metadata(path, text, ZIP_METADATA, flag)


def parse_json_metadata(path: Path, text: str | bytes, where: str, flag: str) -> Any:
    """The JSON ``text`` of the metadata of ``path`` (``where``: where in the file it is, for the sentence);
    WeightsError when it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise malformed(path, f"its {where} is not JSON", flag) from None


def check_metadata(path: Path, metadata: Any, flag: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``metadata`` as read from the export ``path``, once it is a mapping that has the ``required`` entries
    and whose entries that the loaders read have their types: class names a list of strings, stride a
    positive whole number, img_size two of them. WeightsError (one sentence naming the file, the entry and
    convert.py's ``flag``) otherwise: a hand-edited or damaged file must not reach the loader as a
    TypeError."""
    if not isinstance(metadata, dict):
        raise malformed(path, f"it is {shown(metadata)}, not a mapping of names, stride and input size", flag)
    missing = [key for key in required if key not in metadata]
    if missing:
        raise malformed(path, f"it has no {' and no '.join(missing)}", flag)
    names, stride, img_size = metadata.get("names"), metadata.get("stride"), metadata.get("img_size")
    if "names" in metadata and not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise malformed(path, f"names is {shown(names)}, not a list of class names", flag)
    if "stride" in metadata and not positive_whole(stride):
        raise malformed(path, f"stride is {shown(stride)}, not a positive whole number", flag)
    if "img_size" in metadata and not (
        isinstance(img_size, list) and len(img_size) == 2 and all(map(positive_whole, img_size))
    ):
        raise malformed(path, f"img_size is {shown(img_size)}, not [height, width] in pixels", flag)
    return metadata


def positive_whole(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and value > 0 and float(value).is_integer()


def shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def malformed(path: Path, problem: str, flag: str) -> WeightsError:
    return WeightsError(
        f"{path} carries malformed RepYOLO metadata ({problem}); re-export it with convert.py {flag}."
    )
