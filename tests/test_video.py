"""Live video: every stream kind opens (a local HTTP file, an MJPEG stream, a stand-in webcam, a .streams
file of two), a slow model drops frames instead of queueing them, a dropped stream reconnects, Ctrl-C and
SIGTERM leave videos that play, and tracking keeps IDs (in labels/ and tracks/ too). All offline: the
servers listen on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from tests.helpers import NAMES, write_images
from utils.boxes import box_iou
from utils.data import sources
from utils.data.sources import LoadSources, LoadStreams, describe_stream, is_stream, stream_names
from utils.data.synthetic_video import VideoScene, write_video
from utils.errors import DataError
from utils.log import masked_url
from utils.paths import ROOT

FAST = {"img_size": 64, "conf_thres": 0.1, "max_det": 10, "device": "cpu"}


def numbered_frame(number: int, size=(96, 72)) -> np.ndarray:
    """A frame whose number can be read back: its gray level (number * 8 % 256) in a corner patch."""
    image = np.full((size[1], size[0], 3), 90, np.uint8)
    image[:8, :8] = number * 8 % 256
    return image


class MJPEGServer:
    """A local HTTP server: /video.mjpg streams JPEG frames (multipart/x-mixed-replace) at ``fps``,
    ``per_connection`` frames per connection (None: forever) for ``connections`` connections, then 404;
    other paths are files of ``folder``."""

    def __init__(
        self, folder: Path, fps: float = 50.0, per_connection: int | None = None, connections: int = 1
    ):
        self.served = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/video.mjpg":
                    return self._file(folder / self.path.lstrip("/"))
                if server.served >= connections:
                    return self.send_error(404)
                server.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                number = 0
                while per_connection is None or number < per_connection:
                    number += 1
                    jpeg = cv2.imencode(".jpg", numbered_frame(number))[1].tobytes()
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    try:
                        self.wfile.write(head + jpeg + b"\r\n")
                    except OSError:  # the client went away
                        return
                    time.sleep(1 / fps)

            def _file(self, path: Path):
                if not path.is_file():
                    return self.send_error(404)
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class StandInCamera:
    """What cv2.VideoCapture(index) gives for a webcam: numbered frames at ``fps``, live (no frame count),
    ``frames`` of them before a read fails (None: never). Cameras whose index is in ``absent`` do not open."""

    absent: set[int] = set()

    def __init__(self, index, *args, fps: float = 200.0, frames: int | None = None):
        self.opened = isinstance(index, int) and index not in self.absent
        self.fps, self.frames, self.number, self.next_time = fps, frames, 0, time.monotonic()

    def isOpened(self):
        return self.opened

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 0.0)

    def grab(self):
        if self.frames is not None and self.number >= self.frames:
            return False
        time.sleep(max(self.next_time - time.monotonic(), 0))
        self.next_time = max(self.next_time, time.monotonic() - 1) + 1 / self.fps
        self.number += 1
        return True

    def read(self):
        return (True, numbered_frame(self.number)) if self.grab() else (False, None)

    def release(self):
        self.opened = False


def number_of(item) -> int:
    return int(item.image[0, 0, 0]) // 8


@pytest.fixture
def camera(monkeypatch):
    """Webcams stand in for cv2.VideoCapture: index 0 and 1 exist, at 200 fps; reopened, they fail."""
    opened: list[int] = []
    real = cv2.VideoCapture

    def open_camera(index, *args, **kwargs):
        if not isinstance(index, int):  # files and URLs: OpenCV's own
            return real(index, *args, **kwargs)
        camera = StandInCamera(index, frames=camera_frames.get(index))
        camera.opened &= index not in opened  # a camera that dropped stays away
        opened.append(index)
        return camera

    camera_frames: dict[int, int | None] = {}
    monkeypatch.setattr(sources.cv2, "VideoCapture", open_camera)
    return camera_frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 20-frame synthetic clip at 25 fps, 320x240, five objects, with its ground truth beside it."""
    return write_video(
        tmp_path_factory.mktemp("clip"), VideoScene(frames=20, size=(320, 240), seed=1, objects=3), fps=25.0
    )


def test_sources_are_told_apart_and_streams_named_as_yolov5_names_them(tmp_path):
    assert all(is_stream(s) for s in ("0", "rtsp://cam/live", "RTMP://x/y", "http://h/v.mp4", "a.streams"))
    assert not any(is_stream(s) for s in ("data/images", "clip.mp4", "list.txt", "*.jpg"))
    urls = [
        "0",
        "rtsp://user:pw@cam/live",
        "rtsp://other/live",
        "http://127.0.0.1:8000/video.mjpg",
        "http://h:80/",
    ]
    assert stream_names(urls) == ["0", "live_1", "live_2", "video", "h_80"]
    assert describe_stream(urls[1]) == "rtsp://user:***@cam/live"  # the log never shows a password
    assert masked_url("postgresql://u:p@ss@db/x") == "postgresql://u:***@db/x"  # nor one holding an @
    listing = tmp_path / "empty.streams"
    listing.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="empty.streams lists no streams"):
        LoadStreams(listing)


def test_an_unreachable_stream_is_one_sentence_naming_it(camera):
    StandInCamera.absent = {7}
    try:
        with pytest.raises(DataError, match="webcam 7 cannot be opened: no camera answers at index 7"):
            LoadStreams("7")
    finally:
        StandInCamera.absent = set()


def test_unopenable_url_exits_2_naming_it(weights, tmp_path):
    url = "rtsp://127.0.0.1:9/nothing"  # port 9 refuses at once
    result = subprocess.run(
        [sys.executable, "detect.py", "--weights", str(weights), "--source", url, "--project", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"stream {url} cannot be opened" in result.stderr + result.stdout


def test_a_video_url_plays_to_its_end_at_its_frame_rate(clip):
    server = MJPEGServer(clip.parent)
    try:
        started = time.monotonic()
        streams = LoadStreams(f"{server.url}/{clip.name}")
        frames = [item.frame for batch in streams for item in batch]
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert frames == list(range(1, 21))  # a fast consumer takes every frame, in order
    assert elapsed >= 19 / 25 * 0.9  # paced like a camera, not read as fast as it decodes
    assert streams.readers[0].frames == 20 and streams.counts == {"shapes": (20, 0)}


def test_mjpeg_stream_reconnects_after_a_drop_and_ends_when_it_stays_away(caplog):
    caplog.set_level("INFO")
    server = MJPEGServer(Path("."), per_connection=6, connections=2)
    try:
        streams = LoadStreams(f"{server.url}/video.mjpg", reconnect_timeout=1.0)
        items = [item for batch in streams for item in batch]
    finally:
        server.close()
    assert server.served == 2
    numbers = [number_of(item) for item in items]
    second = numbers.index(6) + 1  # frames of both connections, the last of each among them
    assert numbers[:second] == sorted(numbers[:second]) and numbers[second:] == sorted(numbers[second:])
    assert numbers[second - 1] == numbers[-1] == 6 and len(numbers) >= 8  # (opening may read two at once)
    frames = [item.frame for item in items]
    assert frames == sorted(set(frames)) and frames[-1] == 12  # frames count on across the reconnection
    assert "dropped after frame 6; reconnecting" in caplog.text
    assert "reconnected after 1 attempt(s)" in caplog.text
    assert "could not be reopened in 1 s" in caplog.text


def test_a_slow_model_drops_frames_and_never_falls_behind(camera):
    streams = LoadStreams("0")
    taken = []
    try:
        for batch in streams:
            (item,) = batch
            taken.append((item.frame, time.monotonic() - item.captured))
            time.sleep(0.05)  # a model at 20 fps behind a camera at 200
            if len(taken) == 8:
                break
    finally:
        streams.close()
    numbers = [number for number, _ in taken]
    gaps = np.diff(numbers)
    assert (gaps >= 3).all()  # frames came in while the model worked, and were skipped
    assert max(age for _, age in taken[1:]) < 0.03  # each frame taken was the newest one, not a queued one
    kept, dropped = streams.counts["0"]
    assert dropped >= kept - len(taken) - 1 and dropped > 10


def test_vid_stride_keeps_every_nth_frame_as_yolov5(clip, camera, caplog):
    assert [item.frame for item in LoadSources(clip, vid_stride=3)] == [3, 6, 9, 12, 15, 18]
    camera[0] = 9
    streams = LoadStreams("0", vid_stride=3, reconnect_timeout=0)
    assert [number_of(item) for batch in streams for item in batch] == [3, 6, 9]
    assert list(LoadSources(clip, vid_stride=25)) == []
    assert "it has 20 frames, fewer than --vid-stride 25" in caplog.text
    with pytest.raises(DataError, match="--vid-stride 0"):
        LoadSources(clip, vid_stride=0)


def test_two_streams_of_a_streams_file_run_as_one_batch_with_outputs_apart(weights, camera, tmp_path, caplog):
    caplog.set_level("INFO")
    camera.update({0: 12, 1: 12})
    listing = tmp_path / "two.streams"
    listing.write_text("0\n# a comment\n1\n")
    batches = []
    original = detect.DetectRun.detect

    def detect_batch(self, batch):
        batches.append(len(batch))
        return original(self, batch)

    detect.DetectRun.detect = detect_batch
    try:
        results = detect.run(weights, listing, project=tmp_path, name="exp", save_txt=True, save_crop=True,
                             reconnect_timeout=0.2, **FAST)  # fmt: skip
    finally:
        detect.DetectRun.detect = original
    save_dir = tmp_path / "exp"
    assert max(batches) == 2  # the newest frames of both streams ran together
    for name in ("0", "1"):
        video = cv2.VideoCapture(str(save_dir / f"{name}.mp4"))
        assert video.isOpened() and video.get(cv2.CAP_PROP_FRAME_COUNT) >= 1
        video.release()
        assert {r["path"] for r in results} == {"0", "1"}
    labels = sorted(p.name for p in (save_dir / "labels").iterdir())
    assert labels and all(name.startswith(("0_", "1_")) for name in labels)
    assert "stream 2/2 (frame" in caplog.text and "frames read," in caplog.text


def test_view_img_without_a_display_is_one_warning(weights, tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    images = write_images(tmp_path / "images", count=2)
    detect.run(weights, images[0].parent, project=tmp_path, name="exp", view_img=True, **FAST)
    assert caplog.text.count("--view-img: no display here") == 1
    assert (tmp_path / "exp" / images[0].name).is_file()


def interruptible() -> None:
    """In the child, before detect.py starts: Ctrl-C's signal as a terminal's foreground process gets it
    (a shell starts background jobs, such as a CI run, with SIGINT ignored, and Python keeps that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_stopping_a_live_run_leaves_videos_that_play(weights, tmp_path, stop):
    server = MJPEGServer(Path("."), fps=30.0, connections=1000)  # endless, and reopened if a read stalls
    command = [sys.executable, "detect.py", "--weights", str(weights), "--source", f"{server.url}/video.mjpg",
               "--img", "64", "--device", "cpu", "--project", str(tmp_path), "--name", "exp"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
                               preexec_fn=interruptible)  # fmt: skip
    watchdog = threading.Timer(120, process.kill)  # a run that never logs five frames fails, it never hangs
    watchdog.start()
    try:
        log = []
        for line in process.stdout:
            log.append(line)
            if sum("stream 1/1 (frame" in seen for seen in log) >= 5:
                break
        process.send_signal(stop)
        log.extend(process.stdout)
        assert process.wait(timeout=60) == 0, "".join(log)
    finally:
        watchdog.cancel()
        process.kill()
        server.close()
    assert "interrupted: finishing the outputs" in "".join(log)
    video = cv2.VideoCapture(str(tmp_path / "exp" / "video.mp4"))
    frames = 0
    while video.read()[0]:
        frames += 1
    assert frames >= 5


# --- tracking (Roboflow's trackers library: requirements-track.txt) ----------------------------------------


@pytest.fixture
def tracking():
    pytest.importorskip("trackers", reason="tracking needs pip install -r requirements-track.txt")
    from utils.deploy.tracking import Tracker

    return Tracker


def test_ids_persist_across_a_scripted_two_object_crossing(tracking):
    """Two boxes cross head-on; the far one is hidden for three frames at the crossing."""
    tracker = tracking(conf=0.25, fps=30.0)
    ids_of = {0: [], 1: []}
    for frame in range(40):
        rows = []
        for obj, (start, step) in enumerate(((20.0, 6.0), (254.0, -6.0))):
            x = start + step * frame
            hidden = obj == 1 and 19 <= frame <= 21
            if not hidden:
                rows.append([x, 100, x + 40, 140, 0.9 if abs(x - 137) > 30 else 0.4, obj])
        tracked = tracker.update(torch.tensor(rows).reshape(-1, 6), timestamp=frame / 30)
        for row in tracked.tolist():
            ids_of[int(row[5])].append(int(row[6]))
    assert (
        len(ids_of[0]) >= 38 and len(ids_of[1]) >= 35
    )  # confirmed on the second frame, kept at the crossing
    assert len(set(ids_of[0])) == 1 and len(set(ids_of[1])) == 1 and set(ids_of[0]) != set(ids_of[1])


def corners(boxes: torch.Tensor) -> torch.Tensor:
    """(left, top, width, height) -> (x1, y1, x2, y2)."""
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1).float()


def test_track_writes_ids_to_labels_and_a_mot_file(weights, clip, tmp_path, monkeypatch, tracking):
    """detect.py --track on the synthetic clip, with the ground truth as the detector's boxes: each true
    track keeps one ID, in the drawn video, the --save-txt rows and tracks/shapes.txt."""
    truth = np.loadtxt(clip.parent / "gt" / "gt.txt", delimiter=",", ndmin=2)
    frames = iter(range(1, 21))

    def ground_truth(self, prepared, thresholds, augment=False):
        rows = truth[truth[:, 0] == next(frames)]
        boxes = np.c_[
            rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6], np.full(len(rows), 0.9), rows[:, 7] % len(NAMES)
        ]
        return [torch.tensor(boxes, dtype=torch.float32)], np.zeros(3)

    monkeypatch.setattr(detect.Detector, "run_prepared", ground_truth)
    results = detect.run(weights, clip, project=tmp_path, name="exp", track=True, save_txt=True, **FAST)
    save_dir = tmp_path / "exp"
    assert all(r["detections"].shape[1] == 7 for r in results)
    mot = np.loadtxt(save_dir / "tracks" / "shapes.txt", delimiter=",", ndmin=2)
    assert mot.shape[1] == 10 and (mot[:, 7:] == -1).all()
    pairs = set()
    for frame, track_id, *box in mot[:, :6].tolist():
        rows = truth[truth[:, 0] == frame]
        overlaps = box_iou(corners(torch.tensor([box])), corners(torch.from_numpy(rows[:, 2:6])))
        pairs.add((int(rows[int(overlaps.argmax()), 1]), int(track_id)))
    true_ids = {t for t, _ in pairs}
    assert len(pairs) == len(true_ids) == len({i for _, i in pairs}) >= 2  # one ID per true track
    label = np.loadtxt(save_dir / "labels" / "shapes_10.txt", ndmin=2)
    assert label.shape[1] == 6 and set(label[:, 5].astype(int)) <= {i for _, i in pairs}
    assert cv2.VideoCapture(str(save_dir / "shapes.mp4")).isOpened()


def test_detector_track_keeps_one_tracker_per_stream(weights, tracking):
    from utils.deploy.detector import Detector

    detector = Detector(weights, device="cpu")
    detector.size, detector.conf = 64, 0.1
    frame = np.zeros((64, 64, 3), np.uint8)
    assert detector.track(frame).shape[1] == 7
    detector.track(frame, stream="cam-b")
    assert set(detector.trackers) == {0, "cam-b"}


def test_synthetic_video_ground_truth(clip):
    truth = np.loadtxt(clip.parent / "gt" / "gt.txt", delimiter=",", ndmin=2)
    assert truth.shape[1] == 9 and set(truth[:, 0].astype(int)) <= set(range(1, 21))
    assert (truth[:, 8] >= 0).all() and (truth[:, 8] <= 1).all() and (truth[:, 4:6] >= 1).all()
    for frame in range(1, 21):  # one row per object and frame
        ids = truth[truth[:, 0] == frame, 1]
        assert len(ids) == len(set(ids))
    video = cv2.VideoCapture(str(clip))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 20
    scene = VideoScene(frames=300)
    meet = scene.render(100)[1]  # the scripted pair meets at a third of the video: one hides the other
    assert meet[meet[:, 1] == 1, 8][0] < 0.1 and meet[meet[:, 1] == 2, 8][0] == 1.0


def test_bench_video_runs_batches_of_tracked_streams(weights, tracking):
    from bench.video import live_run
    from utils.deploy.detector import Detector

    detector = Detector(weights, device="cpu")
    detector.size = 64
    row = live_run(detector, [numbered_frame(k) for k in range(10)], 2, True, seconds=0.5, camera_fps=30.0)
    assert row["fps"] > 0 and 0 <= row["dropped"] < 1 and row["p50_ms"] <= row["p95_ms"]
    assert set(detector.trackers) == {"0", "1"}  # one tracker per stream
