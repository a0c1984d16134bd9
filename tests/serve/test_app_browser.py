"""The app end to end: a real page on localhost, driven by headless Chromium (Playwright).

It runs where Debian's chromium (at CHROMIUM) and the ``playwright`` package are present;
elsewhere it is skipped, saying so, unless ``SAM3_LORA_BROWSER_TESTS=1`` lets it install them
(``apt-get install chromium`` as root, ``pip install playwright``; ``.ci/run`` opts in): a plain
``pytest`` never installs system packages. Playwright's own browser download is never used.
When an install fails the module is skipped, with the reason. Chromium reaches nothing but
the app. ``SAM3_LORA_SCREENSHOT=1`` writes the page, mid-use, to ``docs/app.png``.
"""

import importlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock
from PIL import Image

from tests.serve.test_app import make_run

CHROMIUM = "/usr/bin/chromium"
INSTALL_OPT_IN = "SAM3_LORA_BROWSER_TESTS"   # =1: the test may install chromium and playwright
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # Names resolve to nothing, so no request can leave the machine.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
SCREENSHOT = Path(__file__).parents[2] / "docs" / "app.png"
# How long the page may take to show an answer. The first click encodes the picture with the
# tracker on the CPU: alone it answers in seconds, but with the whole suite on 2 cores one took
# more than 30 s (2026-12-08).
TIMEOUT_MS = 90_000

# gradio's queue calls pandas in ways pandas 3 deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.*")


def install(what: str, command: list[str]) -> str | None:
    """Run an install command quietly; None on success, else the reason to skip."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                              timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot install {what}: {error}"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return f"cannot install {what}: {lines[-1] if lines else f'exit status {done.returncode}'}"


def may_install() -> bool:
    return os.environ.get(INSTALL_OPT_IN) == "1"


def browser_tools():
    """Playwright's sync API with Debian's chromium at CHROMIUM, installing either if missing
    and INSTALL_OPT_IN allows it; otherwise the test is skipped, saying how to run it. One
    process at a time (the suite's xdist workers): apt-get and pip must not run twice at once."""
    with FileLock(Path(tempfile.gettempdir()) / "sam3-lora-browser-install.lock"):
        return _browser_tools()


def _browser_tools():
    if not Path(CHROMIUM).exists():
        if not may_install():
            pytest.skip(f"no browser: {CHROMIUM} is missing; install chromium, or set {INSTALL_OPT_IN}=1 "
                        f"to let the test install it (apt-get, as root)")
        if shutil.which("apt-get") is None:
            pytest.skip(f"{CHROMIUM} is missing and apt-get is not available to install chromium")
        problem = install("chromium", ["apt-get", "install", "-y", "-q", "chromium"])
        if problem:   # the package lists may be missing or stale: refresh once, then retry
            install("apt lists", ["apt-get", "update", "-q"])
            problem = install("chromium", ["apt-get", "install", "-y", "-q", "chromium"])
        if problem or not Path(CHROMIUM).exists():
            pytest.skip(problem or f"chromium installed, but not at {CHROMIUM}")
    try:
        return importlib.import_module("playwright.sync_api")
    except ImportError:
        if not may_install():
            pytest.skip(f"playwright is not installed (pip install -e '.[test]'), or set {INSTALL_OPT_IN}=1")
        pip = [sys.executable, "-m", "pip", "install", "-q", "playwright"]
        problem = install("playwright", pip)
        if problem:
            pytest.skip(problem)
        importlib.invalidate_caches()
        return importlib.import_module("playwright.sync_api")


def test_without_a_browser_nothing_is_installed_unless_opted_in(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv(INSTALL_OPT_IN, raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a[0]} without the opt-in"))
    with pytest.raises(pytest.skip.Exception, match=f"no browser: .*no-chromium is missing.*{INSTALL_OPT_IN}=1"):
        browser_tools()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """The app on a free localhost port (upload limit 1 MB), served from a thread."""
    pytest.importorskip("gradio")
    from sam3_lora.serve.app import AdapterApp
    from sam3_lora.serve.app_ui import launch

    root = tmp_path_factory.mktemp("app")
    config, _ = make_run(root)
    with pytest.MonkeyPatch.context() as patch:   # --weights other, as typed in the run's folder
        patch.chdir(root)
        app = AdapterApp(config, ["other"], max_upload_mb=1)
    port = free_port()
    page = launch(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def browser():
    api = browser_tools()   # before the app starts: no browser, no app to wait for
    with api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # Besides the resolver rules: any request not to the app is aborted.
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                  else route.abort())
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.goto(url)
    tab.locator("#run").wait_for()
    yield tab
    context.close()


SHOWS = "([id, text]) => document.getElementById(id)?.textContent.includes(text)"


def shows(page, element: str, text: str) -> None:
    """Wait until the component ``#element`` shows ``text`` (gradio renders asynchronously)."""
    page.wait_for_function(SHOWS, arg=[element, text])


def status_contains(page, text: str) -> None:
    shows(page, "status", text)


def set_threshold(page, value: str) -> None:
    number = page.locator("#threshold input[type=number]")
    number.fill(value)
    number.press("Enter")


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=option).click()


def test_upload_prompt_and_run_show_overlay_table_and_downloads(page, tmp_path):
    Image.new("RGB", (160, 120), (40, 80, 220)).save(tmp_path / "blue.png")
    page.locator("#upload input[type=file]").set_input_files(tmp_path / "blue.png")
    status_contains(page, "uploaded image: 160x120 px, ready")
    page.locator("#prompts textarea").fill("blue square")
    set_threshold(page, "0")
    page.locator("#run").click()
    status_contains(page, "best: 20 detections in")
    page.locator("#overlay img").wait_for()
    assert not page.locator("#base-overlay").is_visible()
    shows(page, "detections", "blue square")
    page.locator("#downloads a[download='best-overlay.png']").wait_for()
    link = page.locator("#downloads a[download='best-detections.json']").get_attribute("href")
    coco = page.request.get(link)   # the JSON, downloaded as the browser would
    assert len(coco.json()) == 20 and coco.json()[0]["prompt"] == "blue square"


def test_example_switch_adapter_and_side_by_side(page, tmp_path):
    choose(page, "example", "example 2")
    status_contains(page, "ready")
    assert page.locator("#prompts textarea").input_value()   # filled from the example's concepts
    set_threshold(page, "0.3")
    choose(page, "adapter", "last")
    page.locator("#side-by-side input").check()
    page.locator("#run").click()
    status_contains(page, " · base model: 0 detections in ")   # the adapter changed the answer
    status_contains(page, "last: 80 detections in ")
    page.locator("#overlay img").wait_for()
    page.locator("#base-overlay img").wait_for()
    shows(page, "detections", "last")
    page.locator("#downloads a[download='base-model-overlay.png']").wait_for()
    # Outputs fade in once a request ends: wait for the page to settle, for a crisp screenshot.
    page.wait_for_function("!document.querySelector('.pending, .generating')")
    page.wait_for_timeout(600)
    page.evaluate("window.scrollTo(0, 0)")
    shot = SCREENSHOT if os.environ.get("SAM3_LORA_SCREENSHOT") == "1" else tmp_path / "app.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=shot)


def test_bad_uploads_show_a_friendly_message(page, tmp_path):
    (tmp_path / "huge.png").write_bytes(b"\x89PNG" + bytes(1_500_000))
    (tmp_path / "table.png").write_text("name,score\nred circle,0.9\n")
    (tmp_path / "notes.txt").write_text("not an image")
    upload = page.locator("#upload input[type=file]")
    upload.set_input_files(tmp_path / "huge.png")
    status_contains(page, "upload is 1.5 MB, over this app's 1 MB limit")
    upload.set_input_files(tmp_path / "table.png")
    status_contains(page, "upload is not an image this app reads")
    upload.set_input_files(tmp_path / "notes.txt")   # refused by the page itself, by its type
    page.get_by_text("Invalid file type: notes.txt").wait_for()
    page.locator("#run").click()
    status_contains(page, "no image: upload one or pick an example")
    (tmp_path / "giant.png").write_bytes(b"\x89PNG" + bytes(2_500_000))
    upload.set_input_files(tmp_path / "giant.png")   # over gradio's own cap: never uploaded
    page.get_by_text("exceed the maximum allowed size").wait_for()
    assert "Traceback" not in page.content()
