"""Take docs/app.png: the web app on the demo's adapter, in headless Chromium.

    sam3-lora demo                      # first: the bundled base and a trained demo adapter
    python docs/screenshot.py [runs/demo]
    python docs/screenshot.py --clicks CONFIG IMAGE X,Y[,LABEL]...   # the click page: docs/app-clicks.png

With ``--clicks``, serves the click page for CONFIG (``model.task: interactive``), uploads
IMAGE, clicks each X,Y (pixels of IMAGE; LABEL 0 a negative click) with the run's ``best``
adapter beside the base model when there is one, and saves the page.

Serves ``sam3-lora app`` for the demo's run on a free localhost port, uploads a target-domain
test image, prompts it with its concepts, runs the adapter side by side with the base model,
and saves the page. Uses the browser set-up of the end-to-end tests (tests/test_app_browser.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "serve")]   # test_app_browser imports tests.serve

from sam3_lora.serve.app import AdapterApp
from sam3_lora.serve.app_ui import launch
from sam3_lora.config import load_config
from sam3_lora.data.coco.split import load_coco_split
from test_app_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    browser_tools,
    choose,
    free_port,
    set_threshold,
)
from test_app_clicks_browser import click_at


def main(demo: Path) -> None:
    from PIL import Image

    config = load_config(demo / "run" / "config.yaml")
    split = load_coco_split(demo / "data" / "target" / "test", config.data.annotation_file, name="test")
    # Of the images with two or more concepts, the one whose shapes overlap least: it shows
    # what each model finds, not how a tiny model copes with occlusion.
    record = min((r for r in split.images if len({o.category_id for o in r.objects}) >= 2),
                 key=lambda r: sum(_overlap(a.bbox, b.bbox) for i, a in enumerate(r.objects) for b in r.objects[i + 1:]))
    picture = Image.open(record.path).convert("RGB")
    enlarged = demo / "app-example.png"   # 112 px is too small to see: show it at 336 px
    picture.resize((picture.width * 3, picture.height * 3), Image.NEAREST).save(enlarged)
    prompts = ", ".join(sorted({split.categories[o.category_id] for o in record.objects}))

    port = free_port()
    server = launch(AdapterApp(config), "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    api = browser_tools()
    with api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#run").wait_for()
        page.locator("#upload input[type=file]").set_input_files(enlarged)
        page.get_by_text("ready").first.wait_for()
        page.locator("#prompts textarea").fill(prompts)
        set_threshold(page, "0.5")   # cgF1's threshold
        choose(page, "adapter", "best")
        page.locator("#side-by-side input").check()
        page.locator("#run").click()
        page.locator("#base-overlay img").wait_for()
        page.wait_for_function("!document.querySelector('.pending, .generating')")
        page.wait_for_timeout(800)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=ROOT / "docs" / "app.png")
        browser.close()
    server.close()
    print(f"wrote {ROOT / 'docs' / 'app.png'} ({record.file_name}: {prompts})")


def _overlap(a: list[float], b: list[float]) -> float:
    """The area shared by two COCO boxes (x, y, w, h)."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


def clicks(config_path: Path, image: Path, points: list[str]) -> None:
    """The click page (``model.task: interactive``) after ``points`` on ``image``."""
    from sam3_lora.serve.prompts import parse_points

    config = load_config(config_path)
    xy, labels = parse_points(points, option="points")
    port = free_port()
    app = AdapterApp(config)
    server = launch(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    api = browser_tools()
    with api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#undo").wait_for()
        page.locator("#upload input[type=file]").set_input_files(image)
        page.get_by_text("ready").first.wait_for()
        if "best" in app.choices:
            choose(page, "adapter", "best")
            page.get_by_text("no clicks").first.wait_for()   # the adapter's answer
            page.locator("#side-by-side input").check()
        for count, ((x, y), label) in enumerate(zip(xy, labels, strict=True), start=1):
            page.get_by_label("positive: the object" if label else "negative: not it").check()
            before = page.locator("#downloads a").first.get_attribute("href") if count > 1 else None
            click_at(page, float(x), float(y))
            # Each answer is new files: wait for the new download link.
            page.wait_for_function("(old) => { const a = document.querySelector('#downloads a'); "
                                   "return a && a.getAttribute('href') !== old; }", arg=before)
        page.wait_for_timeout(800)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=ROOT / "docs" / "app-clicks.png")
        browser.close()
    server.close()
    print(f"wrote {ROOT / 'docs' / 'app-clicks.png'} ({image.name}: {' '.join(points)})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--clicks"]:
        clicks(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
