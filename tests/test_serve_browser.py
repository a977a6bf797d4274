"""The service's page in a real browser: headless Chromium from the distribution's package (apt-get install
chromium), driven by Playwright's Python API (pip install playwright; no browser is downloaded), loads the
page from a live server on a loopback port, uploads a bundled sample image and waits until the boxes are
drawn and the table lists them. Skips where Chromium, Playwright or requirements-serve.txt is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving needs FastAPI: pip install -r requirements-serve.txt")
pytest.importorskip("uvicorn", reason="serving needs uvicorn: pip install -r requirements-serve.txt")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs pip install playwright")

from utils.deploy.detector import Detector  # noqa: E402
from utils.paths import ROOT  # noqa: E402
from utils.serve.app import create_app  # noqa: E402
from utils.serve.server import BackgroundServer  # noqa: E402
from utils.serve.service import DetectionService  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that would reach past the loopback server: no sync, updates or background traffic.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SAMPLE = ROOT / "data" / "images" / "shapes0.jpg"
SIZE, CONF = 96, 0.1  # the tiny model finds boxes at this size and threshold

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
)


def palette_pixels(page, color: str) -> int:
    """How many pixels of the page's canvas are exactly ``color`` ('#RRGGBB')."""
    return page.evaluate(
        """(color) => {
            const canvas = document.getElementById("canvas");
            const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            const [r, g, b] = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
            let count = 0;
            for (let i = 0; i < pixels.length; i += 4) {
                if (pixels[i] === r && pixels[i + 1] === g && pixels[i + 2] === b) count += 1;
            }
            return count;
        }""",
        color,
    )


def test_page_draws_the_boxes_of_an_uploaded_image_and_lists_them(weights):
    detector = Detector(weights, device="cpu")
    detector.size, detector.conf = SIZE, CONF
    expected = detector(str(SAMPLE)).xyxy[0].tolist()
    assert expected, "the tiny model should find boxes in the sample"
    service = DetectionService(detector, weights)
    problems: list[str] = []
    with BackgroundServer(create_app(service)) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.goto(server.url)
            page.wait_for_selector("#model[data-ready]")  # not wait_for_function: the page forbids eval
            page.set_input_files("#file", str(SAMPLE))
            page.wait_for_selector("#canvas[data-boxes]", timeout=30_000)
            drawn = int(page.get_attribute("#canvas", "data-boxes"))
            listed = page.locator("#detections tbody tr")
            rows = listed.count()
            first_row = [cell.strip() for cell in listed.nth(0).locator("td").all_inner_texts()]
            timing = page.inner_text("#timing")
            color = service.model_info()["colors"][int(expected[0][5])]  # the first box's class
            colored = palette_pixels(page, color)
            styled = page.evaluate("getComputedStyle(document.body).maxWidth")  # page.css applied
        finally:
            browser.close()
    assert drawn == rows == len(expected)
    *box, confidence, class_index = expected[0]  # highest confidence first, as the table lists them
    assert first_row[1].startswith(detector.names[int(class_index)])
    assert abs(float(first_row[2]) - confidence) < 5.1e-4  # shown with 3 decimals
    assert all(abs(float(shown) - value) < 0.051 for shown, value in zip(first_row[3:], box))  # 1 decimal
    assert "inference" in timing and "ms" in timing
    assert colored > 100, "the first box's class color is not on the canvas"
    assert styled == "1200px", "the stylesheet was not applied (blocked by the page's policy?)"
    assert not problems, problems  # a Content-Security-Policy violation is a console error
