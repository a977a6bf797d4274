"""The service fuzzed: Schemathesis against the app's own OpenAPI schema, and hypothesis-made image bodies
(random bytes; truncated and bit-flipped JPEG, PNG, BMP, TIFF and WebP; extreme sizes written into their
headers; 16-bit, grayscale, alpha, CMYK, palette and animated images). No answer is a 5xx (these tests
never fill the queue, so not even 503), and after each case a good request gets exactly Detector's boxes.

The example counts are bounded (FUZZ_EXAMPLES, SCHEMA_EXAMPLES) and the runs derandomized, so the suite
takes the same few seconds each time; raise them locally to search longer. Skips without
requirements-serve.txt (FastAPI, uvicorn, httpx; Schemathesis for its test alone)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="serving needs FastAPI: pip install -r requirements-serve.txt")
pytest.importorskip("uvicorn", reason="serving needs uvicorn: pip install -r requirements-serve.txt")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install -r requirements-serve.txt")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.test_serve import local_client, rows  # noqa: E402
from utils.paths import ROOT  # noqa: E402
from utils.serve.app import create_app  # noqa: E402
from utils.serve.server import BackgroundServer  # noqa: E402
from utils.serve.service import DetectionService, ServiceSettings  # noqa: E402

FUZZ_EXAMPLES = 150  # hypothesis-made bodies
SCHEMA_EXAMPLES = 40  # Schemathesis cases per operation
CLIENT_FAULTS = {200, 400, 408, 413, 415, 422}  # every answer but a server's error
GOOD = ROOT / "data" / "images" / "shapes0.jpg"
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def service_app(serve_detector, weights):
    """The app with small limits (0.5 MB, 1 megapixel) so that oversized cases are refused quickly."""
    settings = ServiceSettings(max_batch=4, max_wait_ms=1, max_upload_mb=0.5, max_megapixels=1.0)
    return create_app(DetectionService(serve_detector, weights, settings))


@pytest.fixture(scope="module")
def client(service_app):
    with local_client(service_app) as client:
        yield client


@pytest.fixture(scope="module")
def expected(serve_detector) -> list[list[float]]:
    return serve_detector(str(GOOD)).xyxy[0].tolist()


# --- the images the bodies are made from ----------------------------------------------------------


def picture(height: int = 48, width: int = 64, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """A gradient with a bright square: something every decoder has real work to do on."""
    peak = np.iinfo(dtype).max
    y, x = np.mgrid[0:height, 0:width]
    plane = ((x * 3 + y * 5) % 256 / 255 * peak).astype(dtype)
    plane[height // 4 : height // 2, width // 4 : width // 2] = peak
    return np.dstack([np.roll(plane, shift, axis=1) for shift in range(channels)]) if channels > 1 else plane


def pil_bytes(image: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def seed_files() -> dict[str, bytes]:
    """One small file of each kind the service meets: every decoded format, bit depth and color model."""
    color = picture()
    rgb = Image.fromarray(color[..., ::-1].copy())
    frames = [Image.fromarray(np.roll(color, k * 8, axis=1)) for k in range(3)]
    return {
        "jpeg": cv2.imencode(".jpg", color)[1].tobytes(),
        "png": cv2.imencode(".png", color)[1].tobytes(),
        "bmp": cv2.imencode(".bmp", color)[1].tobytes(),
        "tiff": cv2.imencode(".tiff", color)[1].tobytes(),
        "webp": cv2.imencode(".webp", color)[1].tobytes(),
        "png 16-bit": cv2.imencode(".png", picture(dtype=np.uint16))[1].tobytes(),
        "tiff 16-bit": cv2.imencode(".tiff", picture(dtype=np.uint16))[1].tobytes(),
        "png gray": cv2.imencode(".png", picture(channels=1))[1].tobytes(),
        "jpeg gray": cv2.imencode(".jpg", picture(channels=1))[1].tobytes(),
        "png alpha": cv2.imencode(".png", picture(channels=4))[1].tobytes(),
        "jpeg cmyk": pil_bytes(rgb.convert("CMYK"), "JPEG"),
        "tiff cmyk": pil_bytes(rgb.convert("CMYK"), "TIFF"),
        "png palette": pil_bytes(rgb.convert("P"), "PNG"),
        "tiff float": pil_bytes(Image.fromarray(picture(channels=1).astype(np.float32)), "TIFF"),
        "png animated": pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "webp animated": pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "gif animated": pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "jpeg progressive": pil_bytes(rgb, "JPEG", progressive=True),
    }


SEEDS = seed_files()
EXTREME_SIDES = [0, 1, 2, 65_535, 65_536, 2**20 + 1, 2**31 - 1, 2**32 - 1]


def with_sides(data: bytes, width: int, height: int) -> bytes:
    """``data`` with ``width`` and ``height`` written into its header where its format keeps them (PNG's
    IHDR, with its CRC fixed; BMP's info header; a JPEG's first start-of-frame); other files as they are."""
    if data.startswith(b"\x89PNG"):
        ihdr = struct.pack(">II", width % 2**32, height % 2**32) + data[24:29]
        return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]
    if data.startswith(b"BM"):
        return data[:18] + struct.pack("<ii", width % 2**31, height % 2**31) + data[26:]
    if data.startswith(b"\xff\xd8"):
        at = next(
            (k for k in range(2, len(data) - 9) if data[k] == 0xFF and data[k + 1] in (0xC0, 0xC2)), None
        )
        if at is not None:
            return data[: at + 5] + struct.pack(">HH", height % 2**16, width % 2**16) + data[at + 9 :]
    return data


@st.composite
def bodies(draw) -> bytes:
    """A body to upload: random bytes, or a seed file truncated, bit-flipped or given extreme sides."""
    how = draw(st.sampled_from(["random", "seed", "truncated", "flipped", "sides"]))
    if how == "random":
        return draw(st.binary(max_size=4096))
    data = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    if how == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flipped":
        flipped = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=8)):
            flipped[position // 8] ^= 1 << (position % 8)
        return bytes(flipped)
    if how == "sides":
        sides = st.sampled_from(EXTREME_SIDES) | st.integers(0, 2**32 - 1)
        return with_sides(data, draw(sides), draw(sides))
    return data


# --- the tests ------------------------------------------------------------------------------------


def test_every_seed_file_is_answered_as_a_client_fault_or_detected(client):
    for kind, data in SEEDS.items():
        response = client.post("/detect", content=data)
        expected_status = {"gif animated": 415, "tiff float": 422}.get(kind, 200)
        assert response.status_code == expected_status, (kind, response.text)


@given(body=bodies(), multipart=st.booleans())
@settings(max_examples=FUZZ_EXAMPLES, **FUZZ_SETTINGS)
def test_fuzzed_bodies_never_get_a_server_error(client, expected, body, multipart):
    sent = {"files": {"image": ("fuzz.bin", body)}} if multipart else {"content": body}
    response = client.post("/detect", **sent)
    assert response.status_code in CLIENT_FAULTS, response.text
    if response.status_code != 200:
        detail = response.json()["detail"]
        assert detail.endswith(".") and len(detail) < 400, detail
    good = client.post("/detect", content=GOOD.read_bytes())
    assert good.status_code == 200 and rows(good.json()) == expected


def test_schemathesis_finds_no_server_error(service_app, expected):
    """Every operation of the app's own OpenAPI schema, SCHEMA_EXAMPLES cases each, over a live loopback
    server; after each case a good request gets exactly Detector's boxes."""
    schemathesis = pytest.importorskip("schemathesis", reason="pip install -r requirements-serve.txt")
    import requests

    schema = schemathesis.openapi.from_dict(service_app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/detect", "/health", "/model", "/metrics"}
    seen: dict[tuple[str, int], int] = {}
    with BackgroundServer(service_app) as server:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=SCHEMA_EXAMPLES, **FUZZ_SETTINGS)
            def check(case) -> None:
                response = case.call(base_url=server.url, timeout=30)
                key = (operation.path, response.status_code)
                seen[key] = seen.get(key, 0) + 1
                assert response.status_code in CLIENT_FAULTS, (case.query, response.text)
                good = requests.post(f"{server.url}/detect", data=GOOD.read_bytes(), timeout=30)
                assert good.status_code == 200 and rows(good.json()) == expected

            check()
    assert any(path == "/detect" and status == 422 for path, status in seen), seen
