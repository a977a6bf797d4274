"""serve.py and utils/serve: every endpoint; /detect's boxes equal Detector's for the same image and
settings; batched answers equal unbatched ones; each bad input answered with its status and one sentence,
and the next good request still served; the server started and stopped on a free loopback port, in this
process and as `python serve.py`. Skips without requirements-serve.txt (FastAPI, uvicorn, httpx)."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="serving needs FastAPI: pip install -r requirements-serve.txt")
pytest.importorskip("uvicorn", reason="serving needs uvicorn: pip install -r requirements-serve.txt")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install -r requirements-serve.txt")

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2 in its TestClient; httpx works as well
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

import serve  # noqa: E402
from utils.deploy.detections import annotate  # noqa: E402
from utils.deploy.detector import Detector  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.paths import ROOT  # noqa: E402
from utils.serve import uploads  # noqa: E402
from utils.serve.app import create_app  # noqa: E402
from utils.serve.batching import DynamicBatcher, ServiceStopped  # noqa: E402
from utils.serve.server import LOOPBACK, BackgroundServer, bind  # noqa: E402
from utils.serve.service import JPEG_QUALITY, DetectionService, ServiceSettings  # noqa: E402

SAMPLES = sorted((ROOT / "data" / "images").glob("*.jpg"))  # 160x160 and one 256x160: two letterbox shapes
SIZE, CONF = 96, 0.1  # the tiny model finds boxes at this size and threshold
NO_NMS = dict(iou=1.0, max_det=5000)  # every candidate a detection, as test_detector compares batches


@pytest.fixture(scope="module")
def detector(serve_detector) -> Detector:
    assert (serve_detector.size, serve_detector.conf) == (SIZE, CONF)
    return serve_detector


@pytest.fixture(scope="module")
def client(detector, weights):
    """The app with limits small enough to test: 0.05 MB uploads, 0.1 megapixels (the samples are 0.04)."""
    settings = ServiceSettings(max_batch=8, max_wait_ms=2, max_upload_mb=0.05, max_megapixels=0.1)
    with local_client(create_app(DetectionService(detector, weights, settings))) as client:
        yield client


def local_client(app) -> TestClient:
    """A TestClient whose requests name localhost in Host, as a browser on this machine does."""
    return TestClient(app, base_url="http://localhost")


def rows(answer: dict) -> list[list[float]]:
    """An answer's detections as Detector's rows: x1, y1, x2, y2, confidence, class."""
    return [found["xyxy"] + [found["confidence"], found["class"]] for found in answer["detections"]]


def same_rows(a: list[list[float]], b: list[list[float]], tolerance: float = 1e-4) -> bool:
    """The same rows in any order (a batched convolution rounds differently from a single one)."""
    a, b = np.array(a).reshape(-1, 6), np.array(b).reshape(-1, 6)
    if a.shape != b.shape:
        return False
    distance = np.abs(a[:, None, :] - b[None, :, :]).max(-1)  # (n, n)
    return bool(distance.min(1).max() < tolerance and distance.min(0).max() < tolerance)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height pixels and that holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(image: np.ndarray, suffix: str) -> bytes:
    return cv2.imencode(suffix, image)[1].tobytes()


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="GIF")
    return buffer.getvalue()


# --- endpoints ------------------------------------------------------------------------------------


def test_detect_answers_exactly_what_detector_returns(client, detector):
    for path in SAMPLES:
        data = path.read_bytes()
        expected = detector(str(path)).xyxy[0].tolist()
        multipart = client.post("/detect", files={"image": (path.name, data, "image/jpeg")})
        raw = client.post("/detect", content=data, headers={"content-type": "image/jpeg"})
        assert multipart.status_code == raw.status_code == 200, multipart.text
        answer = multipart.json()
        height, width = cv2.imread(str(path)).shape[:2]
        assert answer["image"] == {"width": width, "height": height}
        assert rows(answer) == rows(raw.json()) == expected and expected, path.name
        assert all(found["name"] == detector.names[found["class"]] for found in answer["detections"])
        assert {"decode", "inference", "nms", "total"} <= set(answer["ms"]) and answer["batch"] >= 1


def test_detect_query_settings_equal_detector_settings(client, detector):
    path = SAMPLES[1]
    query = "conf=0.2&iou=0.3&classes=0,2&max_det=3"
    answer = client.post(f"/detect?{query}", content=path.read_bytes()).json()
    expected = detector(str(path), conf=0.2, iou=0.3, classes=[0, 2], max_det=3).xyxy[0].tolist()
    assert rows(answer) == expected and len(expected) <= 3
    repeated = client.post(
        "/detect?conf=0.2&iou=0.3&classes=0&classes=2&max_det=3", content=path.read_bytes()
    )
    assert rows(repeated.json()) == expected


def test_annotated_is_the_image_drawn_as_detect_draws_it(client, detector):
    path = SAMPLES[0]
    response = client.post("/detect?annotated=true", files={"image": (path.name, path.read_bytes())})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = cv2.imread(str(path))
    expected = annotate(image, detector(str(path)).xyxy[0], detector.names)
    assert (expected != image).any()  # boxes were drawn
    jpeg = cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
    assert response.content == jpeg.tobytes()
    assert int(response.headers["x-detections"]) == len(detector(str(path)).xyxy[0])


def test_health_model_page_and_metrics(client, detector, weights):
    assert client.get("/health").json() == {"status": "ok", "queued": 0, "in_flight": 0}
    model = client.get("/model").json()
    assert model["names"] == detector.names and model["input_size"] == [SIZE, SIZE]
    assert (
        model["runtime"] == "pytorch" and model["precision"] == "float32" and model["weights"] == weights.name
    )
    assert len(model["colors"]) == len(detector.names) and model["batching"]["max_batch"] == 8
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "<style" not in page.text and " style=" not in page.text
    script, style = client.get("/page.js"), client.get("/page.css")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert style.status_code == 200 and "text/css" in style.headers["content-type"]
    assert '<script src="page.js">' in page.text and "fetch(`detect?" in script.text
    assert '<link rel="stylesheet" href="page.css">' in page.text
    assert not re.search(r"(https?:)?//[a-z]", page.text + script.text + style.text)  # nothing from elsewhere
    client.post("/detect", content=SAMPLES[0].read_bytes())
    client.get("/no-such-page")
    text = client.get("/metrics").text
    assert_prometheus_text(text)
    assert re.search(r'^repyolo_requests_total\{path="/detect",status="200"\} [1-9]', text, re.M)
    assert 'repyolo_requests_total{path="other",status="404"}' in text
    assert 'repyolo_request_errors_total{status="404"}' in text
    assert re.search(r"^repyolo_batch_size_count [1-9]", text, re.M)
    assert 'repyolo_request_duration_seconds_bucket{path="/detect",le="+Inf"}' in text


def assert_prometheus_text(text: str) -> None:
    """Every line a comment or `name{labels} value`; every histogram's buckets cumulative up to its count."""
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+$')
    lines = text.strip().splitlines()
    assert all(line.startswith("# ") or sample.match(line) for line in lines), text
    buckets: dict[str, list[int]] = {}
    for line in lines:
        if "_bucket{" in line:
            series = re.sub(r',?le="[^"]*"', "", line.split(" ")[0].replace("_bucket", "")).replace("{}", "")
            buckets.setdefault(series, []).append(int(line.split(" ")[1]))
    for series, counts in buckets.items():
        assert counts == sorted(counts), series
        count_line = series.replace("{", "_count{") if "{" in series else series + "_count"
        assert f"{count_line} {counts[-1]}" in text, series


def test_an_onnx_export_is_served_and_described(tmp_path):
    """Any weights val.py takes: here a fused ONNX export, /model naming its runtime."""
    pytest.importorskip("onnxruntime")
    from tests.helpers import NAMES, tiny_model
    from utils.deploy.formats.onnx import export_onnx

    metadata = {"names": NAMES, "nc": len(NAMES), "stride": 32, "deploy": True}
    fused = tiny_model().reparameterize().eval()
    path = export_onnx(fused, tmp_path / "tiny.onnx", (64, 64), dynamic=True, metadata=metadata)
    detector = Detector(path, device="cpu")
    detector.size, detector.conf = 64, CONF
    with local_client(create_app(DetectionService(detector, path))) as client:
        model = client.get("/model").json()
        answer = client.post("/detect", content=SAMPLES[0].read_bytes()).json()
    assert (model["runtime"], model["precision"], model["weights"]) == ("onnx", "float32", path.name)
    assert rows(answer) == detector(str(SAMPLES[0])).xyxy[0].tolist()


def test_a_quantized_onnx_graph_is_described_as_int8(tmp_path):
    """/model's precision of an INT8 export: a graph with QuantizeLinear / DequantizeLinear nodes."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch
    from onnx import TensorProto, helper

    from utils.deploy.formats.onnx import OnnxInferenceModel
    from utils.deploy.metadata import write_metadata

    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255])
    zero = helper.make_tensor("zero", TensorProto.UINT8, [], [0])
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["images", "scale", "zero"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["output"])],
        "qdq",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])],
        [scale, zero],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_metadata(model, {"names": ["a"], "stride": 8})
    onnx.save(model, str(tmp_path / "tiny_int8.onnx"))
    assert OnnxInferenceModel(tmp_path / "tiny_int8.onnx", torch.device("cpu")).precision == "int8"


# --- bad input: its status and sentence, and the service answering after it ------------------------

BAD_QUERIES = [
    ("conf=2", "conf"),
    ("iou=-0.5", "iou"),
    ("conf=high", "conf"),
    ("classes=9", "out of range"),
    ("classes=1,x", "classes"),
    ("max_det=0", "max_det"),
    ("annotated=maybe", "annotated"),
]


def bad_uploads() -> list[tuple[str, dict, int, str]]:
    sample = SAMPLES[0].read_bytes()
    blank = np.zeros((2000, 2000, 3), np.uint8)  # 4 megapixels in a few kB of PNG: a small bomb
    return [
        ("too large", {"content": b"\xff" * 60_000}, 413, "over this service's limit of 0.05 MB"),
        ("too large, chunked", {"content": iter([b"\xff" * 30_000] * 3)}, 413, "limit of 0.05 MB"),
        ("text", {"content": b"this is not a picture"}, 415, "not an image"),
        ("GIF", {"content": gif_bytes()}, 415, "GIF"),
        ("truncated JPEG", {"content": sample[: len(sample) // 2]}, 422, "corrupt or truncated"),
        ("header-only bomb", {"content": png_header(12_000, 12_000)}, 413, "12000x12000 pixels"),
        ("huge header", {"content": png_header(30_000, 30_000)}, 413, "limit of 0.1 megapixels"),
        ("4 megapixel PNG", {"content": encoded(blank, ".png")}, 413, "2000x2000 pixels"),
        ("empty body", {"content": b""}, 422, "holds no image"),
        ("no image field", {"files": {"picture": ("a.jpg", sample)}}, 422, "no file in the field 'image'"),
        ("text field", {"data": {"image": "x"}, "files": {"other": ("a.jpg", sample)}}, 422, "field 'image'"),
    ]


@pytest.mark.parametrize(
    "name, request_kwargs, status, sentence", bad_uploads(), ids=[b[0] for b in bad_uploads()]
)
def test_bad_upload_gets_its_status_and_the_next_request_succeeds(
    client, name, request_kwargs, status, sentence, monkeypatch
):
    decoded, imdecode = [], cv2.imdecode
    monkeypatch.setattr(uploads.cv2, "imdecode", lambda *args: decoded.append(1) or imdecode(*args))
    response = client.post("/detect", **request_kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert sentence in detail and detail.endswith(".") and detail.count(". ") == 0, detail
    if status == 413:
        assert not decoded, "an image over a limit was decoded"
    assert client.post("/detect", content=SAMPLES[0].read_bytes()).status_code == 200


@pytest.mark.parametrize("query, named", BAD_QUERIES, ids=[q for q, _ in BAD_QUERIES])
def test_bad_query_gets_422_and_the_next_request_succeeds(client, query, named):
    response = client.post(f"/detect?{query}", content=SAMPLES[0].read_bytes())
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert named in detail and detail.endswith("."), detail
    assert client.post("/detect", content=SAMPLES[0].read_bytes()).status_code == 200


def test_a_failing_model_answers_500_and_the_service_goes_on(client, detector, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(detector, "run_prepared", broken)
    response = client.post("/detect", content=SAMPLES[0].read_bytes())
    assert response.status_code == 500 and "out of memory" in response.json()["detail"]
    monkeypatch.undo()
    assert client.post("/detect", content=SAMPLES[0].read_bytes()).status_code == 200


# --- batching -------------------------------------------------------------------------------------


def test_batched_answers_equal_unbatched_ones(detector, weights):
    """All samples sent at once to a service that waits for them: one gathered batch (one forward pass per
    letterbox shape), each answer the same as from a service that never batches."""
    datas = [path.read_bytes() for path in SAMPLES]

    async def answers(settings: ServiceSettings, together: bool) -> list:
        service = DetectionService(detector, weights, settings)
        await service.start()
        try:
            thresholds = service.thresholds(CONF, NO_NMS["iou"], None, NO_NMS["max_det"])
            if together:
                return await asyncio.gather(*(service.detect(data, thresholds) for data in datas))
            return [await service.detect(data, thresholds) for data in datas]
        finally:
            await service.stop()

    gathered = ServiceSettings(max_batch=len(datas), max_wait_ms=10_000, max_det_cap=NO_NMS["max_det"])
    batched = asyncio.run(answers(gathered, together=True))
    alone = asyncio.run(answers(ServiceSettings(max_batch=1, max_det_cap=NO_NMS["max_det"]), together=False))
    shapes = [cv2.imread(str(path)).shape for path in SAMPLES]  # one forward pass per letterbox shape
    assert [result.batch_size for result in batched] == [shapes.count(shape) for shape in shapes]
    assert [result.batch_size for result in alone] == [1] * len(datas)
    for path, one, many in zip(SAMPLES, alone, batched):
        assert len(one.detections) > 50, path.name
        assert same_rows(one.detections.tolist(), many.detections.tolist()), path.name


def test_batcher_gathers_up_to_max_batch_and_fails_only_what_failed():
    seen: list[list] = []

    def run_batch(jobs: list) -> list:
        seen.append(list(jobs))
        if "bad batch" in jobs:
            raise ValueError("the whole batch failed")
        return [ValueError("this job failed") if job == "bad job" else job * 10 for job in jobs]

    async def scenario() -> tuple:
        batcher = DynamicBatcher(run_batch, max_batch=3, max_wait_s=0.05, on_batch=sizes.append)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
        failed = await asyncio.gather(batcher.submit("bad batch"), batcher.submit(1), return_exceptions=True)
        mixed = await asyncio.gather(batcher.submit("bad job"), batcher.submit(2), return_exceptions=True)
        after = await batcher.submit(3)
        await batcher.stop()
        with pytest.raises(ServiceStopped):
            await batcher.submit(4)
        return results, failed, mixed, after

    async def stopped_while_waiting() -> None:
        batcher = DynamicBatcher(run_batch, max_batch=2, max_wait_s=60)
        await batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(5))
        await asyncio.sleep(0.05)
        await batcher.stop()
        with pytest.raises(ServiceStopped):
            await waiting

    sizes: list[int] = []
    results, failed, mixed, after = asyncio.run(scenario())
    assert results == [0, 10, 20, 30, 40, 50, 60] and seen[:3] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [type(error) for error in failed] == [ValueError, ValueError]
    assert isinstance(mixed[0], ValueError) and mixed[1] == 20 and after == 30
    assert sizes == [3, 3, 1, 2, 1]  # the failed batch is not counted
    asyncio.run(stopped_while_waiting())


def test_concurrent_http_requests_share_batches_on_a_live_server(detector, weights):
    """Requests sent together to a real server over loopback are answered from shared batches, each answer
    the same as alone."""
    settings = ServiceSettings(max_batch=len(SAMPLES), max_wait_ms=500, max_det_cap=5000)
    app = create_app(DetectionService(detector, weights, settings))
    answers: dict[int, dict] = {}
    with BackgroundServer(app) as server:
        query = f"{server.url}/detect?conf={CONF}&iou=1.0&max_det=5000"

        def send(index: int) -> None:
            request = urllib.request.Request(query, data=SAMPLES[index].read_bytes(), method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[index] = json.load(response)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(SAMPLES))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        alone = [detector(str(path), iou=1.0, max_det=5000).xyxy[0].tolist() for path in SAMPLES]
    assert sorted(answers) == list(range(len(SAMPLES)))
    assert max(answer["batch"] for answer in answers.values()) > 1
    for index, expected in enumerate(alone):
        assert same_rows(rows(answers[index]), expected), SAMPLES[index].name


# --- the server: loopback, start and stop -----------------------------------------------------------


def test_background_server_starts_and_stops_on_a_free_loopback_port(detector, weights):
    service = DetectionService(detector, weights)
    with BackgroundServer(create_app(service)) as server:
        assert server.url.startswith(f"http://{LOOPBACK}:") and server.port > 0
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
            assert json.load(response)["status"] == "ok"
    assert not server.thread.is_alive() and not service.batcher.running
    bind(LOOPBACK, server.port).close()  # the port is free again


def test_serve_py_listens_on_loopback_and_stops_on_sigint(weights):
    sock = bind(LOOPBACK, 0)
    port = sock.getsockname()[1]
    sock.close()
    command = [sys.executable, "serve.py", "--weights", str(weights), "--port", str(port), "--img", str(SIZE)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        model = wait_for_json(f"http://{LOOPBACK}:{port}/model", process)
        assert model["weights"] == weights.name and model["input_size"] == [SIZE, SIZE]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert f"on http://{LOOPBACK}:{port}" in output and "Traceback" not in output


def wait_for_json(url: str, process: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve.py exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"serve.py did not answer {url} within {timeout} s")


# --- options --------------------------------------------------------------------------------------


def test_options_parse_and_bad_settings_are_one_sentence(weights, capsys):
    options = serve.parse_args(
        ["--weights", str(weights), "--max-batch", "4", "--conf", "0.3", "--img", "64"]
    )
    assert options.host == "127.0.0.1" and options.port == 8000 and options.max_batch == 4
    assert options.conf_thres == 0.3 and options.img_size == [64]
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--help"])
    assert exit_info.value.code == 0 and "--max-wait-ms" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--weights", str(weights), "--max-batch", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(ConfigError, match="max_batch >= 1"):
        ServiceSettings(max_batch=0)


def test_options_and_project_import_without_fastapi(weights, monkeypatch):
    """serve.py and the service's modules import without FastAPI, Starlette and uvicorn; run() needs them
    and says so in one sentence."""
    for name in ("fastapi", "starlette", "uvicorn"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing them fails
    for name in [name for name in sys.modules if name == "serve" or name.startswith("utils.serve")]:
        monkeypatch.delitem(sys.modules, name)
    fresh = importlib.import_module("serve")
    options = fresh.parse_args(["--weights", str(weights)])
    with pytest.raises(ConfigError, match="requirements-serve.txt"):
        fresh.run(options)


def test_decode_image_equals_cv2_imread():
    for path in SAMPLES:
        assert np.array_equal(uploads.decode_image(path.read_bytes(), 10**6), cv2.imread(str(path)))


def test_the_listening_socket_sends_answers_without_waiting_for_acks():
    """TCP_NODELAY on the bound socket (accepted connections inherit it): without it, one request alone
    took 44 ms more than the service's own time (Nagle's algorithm against the client's delayed ACK)."""
    import socket

    from utils.serve.server import LOOPBACK, bind

    sock = bind(LOOPBACK, 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


# --- hostile input: every client fault a 4xx with one sentence, before any work ----------------------


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP whose header announces width x height pixels and that holds no pixel rows."""
    row_bytes = (width * 3 + 3) // 4 * 4
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, row_bytes * height, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + row_bytes * height, 0, 0, 54) + info


def hostile_requests() -> list[tuple[str, str, dict, int, str]]:
    sample = {"content": SAMPLES[0].read_bytes()}
    no_boundary = {**sample, "headers": {"content-type": "multipart/form-data"}}
    return [
        ("unicode digit class", "classes=%C2%B2", sample, 422, "classes"),
        ("5000-digit class", "classes=" + "9" * 5000, sample, 422, "classes"),
        ("5000-digit max_det", "max_det=" + "9" * 5000, sample, 422, "max_det"),
        ("conf under the floor", "conf=0", sample, 422, "floor of 0.001"),
        ("max_det over the cap", "conf=0.001&max_det=30000", sample, 422, "cap of 1000"),
        ("70,000 x 1 BMP", "", {"content": bmp_header(70_000, 1)}, 413, "limit of 65535 pixels"),
        ("0 x 10 PNG", "", {"content": png_header(0, 10)}, 415, "not an image"),
        ("multipart without a boundary", "", no_boundary, 422, "multipart body cannot be parsed"),
    ]


@pytest.mark.parametrize(
    "name, query, request_kwargs, status, sentence",
    hostile_requests(),
    ids=[h[0] for h in hostile_requests()],
)
def test_hostile_request_gets_a_4xx_sentence_and_the_next_request_succeeds(
    client, name, query, request_kwargs, status, sentence
):
    response = client.post(f"/detect?{query}", **request_kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert sentence in detail and detail.endswith(".") and len(detail) < 400, detail
    assert client.post("/detect", content=SAMPLES[0].read_bytes()).status_code == 200


def test_a_side_past_opencvs_limit_is_refused_from_the_header_under_the_pixel_limit():
    """The issue's 1,100,000 x 1 BMP: 1.1 megapixels, under the default 40, but OpenCV asserts on a side
    over 2**20: refused 413 from its header, never decoded."""
    with pytest.raises(uploads.RequestError) as refused:
        uploads.decode_image(bmp_header(1_100_000, 1), ServiceSettings().max_pixels)
    assert refused.value.status == 413 and "1100000x1 pixels" in refused.value.message


def test_a_60000_x_1_image_is_detected_in(client, detector):
    """An extreme aspect ratio under every limit letterboxes to at least one pixel row and is answered."""
    data = encoded(np.full((1, 60_000, 3), 127, np.uint8), ".png")
    response = client.post("/detect", content=data)
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 60_000, "height": 1}


def test_limits_are_named_in_model(client):
    limits = client.get("/model").json()["limits"]
    assert limits["conf_floor"] == 0.001 and limits["max_det_cap"] == 1000 and limits["max_side"] == 65535
    assert {"max_queue", "max_connections", "body_timeout_s", "graceful_timeout_s"} <= set(limits)


# --- headers: the Host check and what every answer carries ---------------------------------------


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:80", "[::1]:8000", "LOCALHOST"])
def test_loopback_host_names_are_answered(client, host):
    assert client.get("/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["rebound.example", "rebound.example:8000", "127.0.0.1.example", ""])
def test_other_host_names_are_refused_with_400(client, host):
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name in Host."""
    response = client.post("/detect", content=SAMPLES[0].read_bytes(), headers={"host": host})
    assert response.status_code == 400, response.text
    assert "--allowed-hosts" in response.json()["detail"]


def test_allowed_hosts_add_names_and_star_allows_any(detector, weights):
    service = DetectionService(detector, weights)
    with local_client(create_app(service, ["camera.lan"])) as named:
        assert named.get("/health", headers={"host": "camera.lan:8000"}).status_code == 200
        assert named.get("/health", headers={"host": "other.lan"}).status_code == 400
    with local_client(create_app(DetectionService(detector, weights), ["*"])) as anything:
        assert anything.get("/health", headers={"host": "other.lan"}).status_code == 200


def test_every_answer_is_nosniff_and_never_framed(client):
    answers = [
        client.get("/health"),
        client.get("/model"),
        client.get("/metrics"),
        client.get("/page.js"),
        client.get("/no-such-page"),
        client.post("/detect", content=SAMPLES[0].read_bytes()),
        client.post("/detect?conf=2", content=SAMPLES[0].read_bytes()),
        client.get("/health", headers={"host": "rebound.example"}),
    ]
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], response.url


# --- admission control, read timeout, the worker and shutdown -----------------------------------


class HeldModel:
    """Makes ``detector.run_prepared`` wait until ``release()`` (at most 60 s): requests stay in flight."""

    def __init__(self, detector: Detector, monkeypatch) -> None:
        self.gate, self.run = threading.Event(), detector.run_prepared
        monkeypatch.setattr(detector, "run_prepared", self.held)

    def held(self, *args):
        self.gate.wait(60)
        return self.run(*args)

    def release(self) -> None:
        self.gate.set()


def post_in_thread(url: str, data: bytes, answers: list) -> threading.Thread:
    """POST ``data`` to ``url`` from a thread that appends (status, JSON answer) to ``answers``."""

    def send() -> None:
        request = urllib.request.Request(url, data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append((response.status, json.load(response)))
        except urllib.error.HTTPError as error:
            answers.append((error.code, json.load(error)))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def raw_exchange(port: int, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` on a new connection and read until the server closes it or the timeout."""
    import socket

    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                head, _, body = received.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.I)
                if length and len(body) >= int(length.group(1)):
                    break
        except TimeoutError:
            pass
    return received


def test_past_max_queue_a_request_gets_503_with_retry_after(detector, weights, monkeypatch):
    held = HeldModel(detector, monkeypatch)
    service = DetectionService(detector, weights, ServiceSettings(max_batch=1, max_queue=1, max_wait_ms=0))
    sample = SAMPLES[0].read_bytes()
    with BackgroundServer(create_app(service)) as server:
        first: list = []
        thread = post_in_thread(f"{server.url}/detect", sample, first)
        wait_until(lambda: service.admitted == 1)
        request = urllib.request.Request(f"{server.url}/detect", data=sample, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "1"
        assert "limit of 1 images in flight" in json.load(refused.value)["detail"]
        head = (
            f"POST /detect HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(sample)}\r\n"
            "Expect: 100-continue\r\n\r\n"
        ).encode()
        answer = raw_exchange(server.port, head)  # the body is never sent: it is refused unread
        assert answer.startswith(b"HTTP/1.1 503") and b"100 Continue" not in answer
        held.release()
        thread.join(60)
    assert first[0][0] == 200 and service.admitted == 0


def test_a_body_that_does_not_arrive_in_time_gets_408(detector, weights):
    service = DetectionService(detector, weights, ServiceSettings(body_timeout_s=0.5))
    with BackgroundServer(create_app(service)) as server:
        head = b"POST /detect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n\xff\xd8"
        started = time.monotonic()
        answer = raw_exchange(server.port, head)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"read timeout of 0.5 s" in answer and time.monotonic() - started < 10
        request = urllib.request.Request(f"{server.url}/detect", data=SAMPLES[0].read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def gathered_detections(detector, weights, settings: ServiceSettings) -> tuple[list, DetectionService]:
    """Every sample sent to one started service at once: (each result or exception, the service)."""
    service = DetectionService(detector, weights, settings)

    async def scenario() -> list:
        await service.start()
        try:
            thresholds = service.thresholds(None, None, None, None)
            sent = (service.detect(path.read_bytes(), thresholds) for path in SAMPLES)
            return await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 60)
        finally:
            await service.stop()

    return asyncio.run(scenario()), service


def test_an_image_that_fails_fails_only_its_own_request(detector, weights, monkeypatch):
    run = detector.run_prepared

    def fails_on_the_wide_image(prepared, thresholds):
        if any(item.original_hw[1] > item.original_hw[0] for item in prepared):
            raise RuntimeError("this image broke the model")
        return run(prepared, thresholds)

    monkeypatch.setattr(detector, "run_prepared", fails_on_the_wide_image)
    settings = ServiceSettings(max_batch=len(SAMPLES), max_wait_ms=10_000)
    results, _ = gathered_detections(detector, weights, settings)
    for path, result in zip(SAMPLES, results):
        if cv2.imread(str(path)).shape[1] > 160:
            assert isinstance(result, RuntimeError) and "broke the model" in str(result)
        else:
            assert same_rows(result.detections.tolist(), run([detector.prepare(cv2.imread(str(path)),
                             service_hw(detector))], [detector.thresholds()])[0][0].tolist())  # fmt: skip


def service_hw(detector: Detector) -> tuple[int, int]:
    return detector.input_hw()


def test_a_short_result_list_is_an_error_for_every_request_never_a_hang(detector, weights, monkeypatch):
    run = detector.run_prepared
    monkeypatch.setattr(detector, "run_prepared", lambda *args: (run(*args)[0][:-1], run(*args)[1]))
    settings = ServiceSettings(max_batch=len(SAMPLES), max_wait_ms=10_000)
    results, _ = gathered_detections(detector, weights, settings)
    assert all(
        isinstance(result, RuntimeError) and "results for a batch of" in str(result) for result in results
    )


def test_the_histogram_counts_images_per_forward_pass(detector, weights):
    settings = ServiceSettings(max_batch=len(SAMPLES), max_wait_ms=10_000)
    results, service = gathered_detections(detector, weights, settings)
    shapes = [cv2.imread(str(path)).shape for path in SAMPLES]
    assert service.metrics.batch_size.count == len(set(shapes))  # one pass per letterbox shape
    assert service.metrics.batch_size.sum == len(SAMPLES)
    assert sorted(result.batch_size for result in results) == sorted(shapes.count(s) for s in shapes)


def test_a_worker_that_stops_makes_health_answer_503(client):
    """A bug that ends the batcher's worker (here: a job that is not one) is logged, no request waits
    forever, and /health answers 503."""
    batcher = client.app.state.service.batcher
    client.portal.call(batcher._queue.put_nowait, None)  # on the loop: asyncio.Queue is not thread-safe
    wait_until(lambda: not batcher.running)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "stopped"
    assert client.post("/detect", content=SAMPLES[0].read_bytes()).status_code == 503
    client.portal.call(batcher.start)  # the module's client serves on for the tests after this one
    assert client.post("/detect", content=SAMPLES[0].read_bytes()).status_code == 200


@pytest.mark.parametrize("released_after_s, status", [(0.1, 200), (None, 503)])
def test_shutdown_answers_requests_in_flight_within_the_grace_period(
    detector, weights, monkeypatch, released_after_s, status
):
    """A request still running when shutdown begins gets its answer if it finishes within the grace
    period, else 503; never a dropped connection."""
    held = HeldModel(detector, monkeypatch)
    service = DetectionService(detector, weights, ServiceSettings(max_batch=1, graceful_timeout_s=1.0))
    server = BackgroundServer(create_app(service)).__enter__()
    answers: list = []
    thread = post_in_thread(f"{server.url}/detect", SAMPLES[0].read_bytes(), answers)
    wait_until(lambda: service.admitted == 1)
    stopping = threading.Thread(target=server.stop, daemon=True)
    stopping.start()
    if released_after_s is not None:
        time.sleep(released_after_s)
        held.release()
    thread.join(30)
    held.release()
    stopping.join(30)
    assert answers and answers[0][0] == status, answers
    if status == 503:
        assert "shutting down" in answers[0][1]["detail"]
    assert not server.thread.is_alive()
