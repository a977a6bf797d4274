"""What a /detect request sends, read and checked before any of it is decoded: the body's size (413 past
the limit) and how long it takes to arrive (408 past the read timeout), the multipart field or raw body
that holds the image, its format, sides and pixel count read from the header alone (415 for what is not an
image this service decodes, 413 past the side or pixel limit, so a decompression bomb is never decoded),
and last the pixels (422 for a corrupt or truncated file, whatever the decoder raises).

Every refusal is a ``RequestError``: an HTTP status and one sentence naming the problem.
"""

from __future__ import annotations

import asyncio
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
# OpenCV refuses (asserts on) a side over 2**20 pixels (CV_IO_MAX_IMAGE_WIDTH / HEIGHT); ours is lower:
# 65,535 is the largest side JPEG and WebP can hold, and no camera or scan comes near it
MAX_SIDE = 65_535


class RequestError(Exception):
    """A request the service refuses: ``status`` (HTTP) and a one-sentence ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g} MB"


async def read_body(
    chunks: AsyncIterator[bytes], content_length: str | None, limit: int, timeout_s: float
) -> bytes:
    """The whole body from its ``chunks``, refused (413) as soon as it is known to exceed ``limit`` bytes:
    from the Content-Length header before reading, or while reading a body sent without one. A body not
    whole within ``timeout_s`` seconds is refused (408) and what had arrived is let go."""
    too_large = RequestError(
        413, f"the upload is over this service's limit of {megabytes(limit)}; send a smaller image."
    )
    if declared_size(content_length) > limit:
        raise too_large
    parts, size = [], 0
    try:
        async for chunk in within(chunks, timeout_s):
            size += len(chunk)
            if size > limit:
                raise too_large
            parts.append(chunk)
    except asyncio.TimeoutError:
        raise RequestError(408, _too_slow(timeout_s)) from None
    return b"".join(parts)


async def discard_body(chunks: AsyncIterator[bytes], limit: int, timeout_s: float) -> None:
    """Read the body and keep none of it (so that a refusal reaches a client still sending), giving up
    past ``limit`` bytes or ``timeout_s`` seconds."""
    size = 0
    try:
        async for chunk in within(chunks, timeout_s):
            size += len(chunk)
            if size > limit:
                return
    except asyncio.TimeoutError:
        return


async def within(chunks: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """``chunks`` as they come, raising asyncio.TimeoutError once ``timeout_s`` seconds have passed in all
    (a client sending a byte a second never times out a per-chunk wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    iterator = chunks.__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(iterator.__anext__(), max(deadline - loop.time(), 0.0))
        except StopAsyncIteration:
            return


def declared_size(content_length: str | None) -> int:
    """The Content-Length header's byte count; 0 when it is absent, -1 when it is not a decimal number
    (the HTTP server refuses those before they get here)."""
    if content_length is None:
        return 0
    value = content_length.strip()
    if not (value.isascii() and value.isdigit()):
        return -1
    return int(value) if len(value) <= 18 else 2**63  # 18 digits: far past any limit, and int() is cheap


def _too_slow(timeout_s: float) -> str:
    return (
        f"the request body did not arrive within this service's read timeout of {timeout_s:g} s; send the "
        "whole image at once."
    )


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
    except Exception as error:  # MultiPartException mostly; python-multipart may raise its own errors
        reason = str(error).rstrip(".") if isinstance(error, MultiPartException) else type(error).__name__
        raise RequestError(
            422,
            f"the multipart body cannot be parsed ({reason[:200]}); send the image in the field "
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


def check_header(data: bytes, max_pixels: int, max_side: int = MAX_SIDE) -> tuple[str, int, int]:
    """(format, width, height) from the image's header alone. Raises RequestError: 415 for data that is not
    an image of a format this service decodes, 413 for an image of more than ``max_pixels`` pixels or a
    side over ``max_side`` (at most OpenCV's own limit), 422 for a header that announces no pixels."""
    try:
        with warnings.catch_warnings():  # PIL warns of large images; the limit below decides
            warnings.simplefilter("ignore")  # of large images, of corrupt EXIF: the checks below decide
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
    if width < 1 or height < 1:
        raise RequestError(422, f"the {kind} header announces a {width}x{height} image; send a real image.")
    max_side = min(max_side, MAX_SIDE)
    if max(width, height) > max_side:
        raise RequestError(
            413,
            f"the image is {width}x{height} pixels, and a side over this service's limit of {max_side} "
            "pixels cannot be decoded; send a smaller image.",
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
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # its decoders assert on what they cannot read: as corrupt as a None
        image = None
    if image is None or image.size == 0:
        raise RequestError(
            422,
            f"the {kind} image is corrupt or truncated, or of a kind OpenCV cannot decode (a float TIFF, "
            "say); send the complete file in 8- or 16-bit color.",
        )
    return image
