"""What a /detect request sends, read and checked before any of it is decoded: the body's size (413 past
the limit), the multipart field or raw body that holds the image, its format and pixel count read from the
header alone (415 for what is not an image this service decodes, 413 past the pixel limit, so a
decompression bomb is never decoded), and last the pixels (422 for a corrupt or truncated file).

Every refusal is a ``RequestError``: an HTTP status and one sentence naming the problem.
"""

from __future__ import annotations

import io
import warnings
from typing import AsyncIterator, Mapping

import cv2
import numpy as np
from PIL import Image

IMAGE_FIELD = "image"  # the multipart field /detect reads
# PIL's names of the formats OpenCV decodes here (MPO: the multi-picture JPEG of many phone cameras)
DECODED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "BMP": "BMP", "WEBP": "WebP", "TIFF": "TIFF"}
FORMAT_LIST = "JPEG, PNG, BMP, WebP or TIFF"


class RequestError(Exception):
    """A request the service refuses: ``status`` (HTTP) and a one-sentence ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g} MB"


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body from its ``chunks``, refused (413) as soon as it is known to exceed ``limit`` bytes:
    from the Content-Length header before reading, or while reading a body sent without one."""
    too_large = RequestError(
        413, f"the upload is over this service's limit of {megabytes(limit)}; send a smaller image."
    )
    if content_length is not None and content_length.strip().isdigit() and int(content_length) > limit:
        raise too_large
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def image_bytes(headers: Mapping[str, str], body: bytes) -> bytes:
    """The image a request sent: the file in the multipart field 'image' of a multipart/form-data body,
    else the raw body. Raises RequestError (422) when there is none."""
    if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
        data = body
    else:
        data = await _multipart_image(headers, body)
    if not data:
        raise RequestError(
            422,
            f"the request holds no image; send one as the multipart field '{IMAGE_FIELD}' or as the raw "
            "body.",
        )
    return data


async def _multipart_image(headers: Mapping[str, str], body: bytes) -> bytes:
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream():
        yield body
        yield b""

    parser = MultiPartParser(Headers(headers=dict(headers)), stream(), max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise RequestError(
            422,
            f"the multipart body cannot be parsed ({str(error).rstrip('.')}); send the image in the field "
            f"'{IMAGE_FIELD}' of a well-formed multipart/form-data body, or as the raw body.",
        ) from None
    try:
        upload = form.get(IMAGE_FIELD)
        if not isinstance(upload, UploadFile):
            raise RequestError(
                422,
                f"the multipart body has no file in the field '{IMAGE_FIELD}'; send the image as that "
                f"field (curl -F {IMAGE_FIELD}=@picture.jpg).",
            )
        return await upload.read()
    finally:
        await form.close()


def check_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) from the image's header alone. Raises RequestError: 415 for data that is not
    an image of a format this service decodes, 413 for an image of more than ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():  # PIL warns of large images; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header, decodes nothing
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise RequestError(413, _too_many_pixels("the image", max_pixels)) from None
    except Exception:  # UnidentifiedImageError mostly; a mangled header may raise anything
        raise RequestError(
            415, f"the body is not an image this service can read; send a {FORMAT_LIST} file."
        ) from None
    if kind not in DECODED_FORMATS:
        raise RequestError(
            415, f"the body is a {kind} image, which this service does not decode; send a {FORMAT_LIST} file."
        )
    if width * height > max_pixels:
        raise RequestError(413, _too_many_pixels(f"the image is {width}x{height} pixels, which", max_pixels))
    return DECODED_FORMATS[kind], width, height


def _too_many_pixels(subject: str, max_pixels: int) -> str:
    return (
        f"{subject} is over this service's limit of {max_pixels / 1e6:.3g} megapixels; send a smaller image."
    )


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """The image as BGR uint8 (H, W, 3), decoded as cv2.imread decodes a file (EXIF orientation applied),
    so the detections equal those of the same file passed to Detector. The header is checked first
    (check_header); RequestError 422 for a file that is corrupt or truncated."""
    kind, _, _ = check_header(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise RequestError(
            422, f"the {kind} image is corrupt or truncated and cannot be decoded; send the complete file."
        )
    return image
