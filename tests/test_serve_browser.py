"""The editor page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Playwright must never download a browser of its own here (`playwright install` is not run): it
launches the system's Chromium. Without that browser the test fails, saying what to install.
"""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_serve import model, server  # noqa: F401  (fixtures: the editor on a free port)

CHROMIUM_FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]

# The face's pixels, read back through a canvas (the image is same-origin, so readable).
READ_FACE = """() => {
  const img = document.getElementById("face");
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  return {width: canvas.width, pixels: Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)};
}"""
RAW_VALUES = "() => Array.from(document.querySelectorAll('#raw input'), (slider) => +slider.value)"
# A new face is in place and no request is pending.
SETTLED = """(previous) => {
  const img = document.getElementById("face");
  return img.src.startsWith("blob:") && img.src !== previous && img.complete && img.naturalWidth > 0
      && document.getElementById("frame").dataset.state === "idle";
}"""


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found on PATH: install Debian's browser with `apt-get install -y chromium` "
                    "(the editor's page test needs a real browser)")
    return path


@pytest.fixture
def page(server):  # noqa: F811
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python package playwright is missing: pip install -e '.[dev]' (never `playwright install`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        yield page
        browser.close()


def face(page, previous_src):
    """Wait for a new face, then return (its src, a hash of its pixels)."""
    page.wait_for_function(SETTLED, arg=previous_src, timeout=15_000)
    data = page.evaluate(READ_FACE)
    pixels = np.array(data["pixels"], dtype=np.uint8).reshape(data["width"], data["width"], 4)
    assert data["width"] == 32
    assert pixels[..., :3].std() > 1, "the face is blank (uniform pixels)"
    return page.eval_on_selector("#face", "img => img.src"), hashlib.sha256(pixels.tobytes()).hexdigest()


def drag(page, selector, to_fraction):
    """Drag a range input's thumb from its middle to a fraction of its width, like a person."""
    box = page.locator(selector).bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * to_fraction, y, steps=15)
    page.mouse.up()


def test_page_redraws_the_face_for_sliders_and_random(page, server, tmp_path):  # noqa: F811
    in_flight, most_in_flight = [0], [0]

    def started(request):
        if "/generate?" in request.url:
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])

    def ended(request):
        if "/generate?" in request.url:
            in_flight[0] -= 1

    page.on("request", started)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)

    page.goto(server.url)
    src, first = face(page, "")
    labels = page.locator("#directions label").all_inner_texts()
    assert len(labels) == 10 and labels[0].startswith("direction 1 — ") and labels[0].endswith("% of variance")

    page.click("#raw-section summary")  # the raw latents are collapsed at first
    drag(page, "#z-0", 0.9)
    assert float(page.input_value("#z-0")) > 2
    src, after_raw = face(page, src)
    assert after_raw != first

    raw_before = page.evaluate(RAW_VALUES)
    drag(page, "#dir-0", 0.95)
    assert float(page.input_value("#dir-0")) > 4
    src, after_direction = face(page, src)
    assert after_direction != after_raw
    # The raw sliders show the latent itself, so they follow the direction.
    assert np.abs(np.subtract(page.evaluate(RAW_VALUES), raw_before)).max() > 0.1

    page.click("#random")
    src, after_random = face(page, src)
    assert after_random not in (first, after_raw, after_direction)
    assert float(page.input_value("#dir-0")) == 0  # a new face starts with every slider at zero

    drag(page, "#interp", 0.9)
    src, interpolated = face(page, src)
    assert interpolated != after_random

    assert page.get_attribute("#download", "href") == src  # the download is the face shown
    assert most_in_flight[0] == 1, "the page sent overlapping requests instead of coalescing them"
    assert page.errors == []
    page.screenshot(path=tmp_path / "serve_page.png")
    assert Path(tmp_path / "serve_page.png").stat().st_size > 10_000
