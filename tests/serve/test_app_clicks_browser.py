"""The click page end to end: a real page on localhost, clicked in headless Chromium.

Runs where tests/serve/test_app_browser.py runs (Debian's chromium and playwright), and is
skipped elsewhere the same way.
"""

import io

import numpy as np
import pytest
from PIL import Image

from tests.serve.test_app_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    browser_tools,
    free_port,
    shows,
    status_contains,
)
from tests.serve.test_app_clicks import make_tracker_app

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.*")

# Where on the image element (client pixels) gradio's own select handler maps natural pixel
# (x, y): the image is scaled down to fit (never up) and centred in its element.
CLIENT_POINT = """([x, y]) => {
    const img = document.querySelector('#overlay img');
    const rect = img.getBoundingClientRect();
    const scale = Math.min(rect.width / img.naturalWidth, rect.height / img.naturalHeight, 1);
    const left = (rect.width - img.naturalWidth * scale) / 2, top = (rect.height - img.naturalHeight * scale) / 2;
    return [rect.left + left + (x + 0.5) * scale, rect.top + top + (y + 0.5) * scale];
}"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    pytest.importorskip("gradio")
    from sam3_lora.serve.app_ui import launch

    api = browser_tools()
    app = make_tracker_app(tmp_path_factory.mktemp("clicks-page"), max_upload_mb=1)
    port = free_port()
    server = launch(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    with api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                      else route.abort())
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.new_page()
        tab.goto(url)
        tab.locator("#undo").wait_for()
        yield tab
        chromium.close()
    server.close()


def click_at(page, x: int, y: int) -> None:
    """Click natural pixel (x, y) of the picture shown in #overlay, once it has loaded."""
    page.wait_for_function("() => { const img = document.querySelector('#overlay img'); "
                           "return img && img.complete && img.naturalWidth > 0; }")
    page.mouse.click(*page.evaluate(CLIENT_POINT, [x, y]))


NEW_LINK = """(old) => {
    const link = document.querySelector("#downloads a[download='best-overlay.png']");
    return link && link.getAttribute('href') !== old;
}"""


def overlay_download(page, previous: str | None = None) -> tuple[np.ndarray, str]:
    """The overlay PNG offered for download once its link is not ``previous`` (each answer is
    a new file), as pixels, and its link."""
    page.wait_for_function(NEW_LINK, arg=previous)
    link = page.locator("#downloads a[download='best-overlay.png']").get_attribute("href")
    return np.asarray(Image.open(io.BytesIO(page.request.get(link).body())).convert("RGB")), link


def test_clicks_on_the_picture_become_points_at_its_pixels(page, tmp_path):
    from sam3_lora.serve.overlay import NEGATIVE_COLOR, POSITIVE_COLOR

    Image.new("RGB", (320, 240), (40, 80, 220)).save(tmp_path / "blue.png")
    page.locator("#upload input[type=file]").set_input_files(tmp_path / "blue.png")
    status_contains(page, "uploaded image: 320x240 px, ready")
    page.locator("#adapter input").click()
    page.get_by_role("option", name="best").click()
    status_contains(page, "no clicks: click on the object")   # the new adapter answered
    page.wait_for_function("() => !document.querySelector('.pending, .generating')")
    click_at(page, 200, 40)
    status_contains(page, "best: mask of ")
    shows(page, "detections", "predicted IoU")
    overlay, link = overlay_download(page)
    assert tuple(overlay[40, 200]) == POSITIVE_COLOR   # drawn where it was clicked
    page.get_by_label("negative: not it").check()
    click_at(page, 60, 180)
    overlay, link = overlay_download(page, link)
    assert tuple(overlay[40, 200]) == POSITIVE_COLOR and tuple(overlay[180, 60]) == NEGATIVE_COLOR
    page.locator("#undo").click()
    overlay, link = overlay_download(page, link)
    assert tuple(overlay[40, 200]) == POSITIVE_COLOR and tuple(overlay[180, 60]) != NEGATIVE_COLOR
    page.locator("#clear").click()
    status_contains(page, "no clicks: click on the object")
    assert "Traceback" not in page.content()
