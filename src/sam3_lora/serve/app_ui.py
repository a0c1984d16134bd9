"""The page of ``sam3-lora app``: a gradio Blocks over ``app.AdapterApp``.

Left, the inputs: an upload (read as bytes: no path from the browser is ever opened), an
example picker, the prompts, optional box prompts, the threshold, the adapter and the
side-by-side switch. Right, the answer: a status line (time taken, or what went wrong), the
overlay (and the base model's beside it), the detections table and the downloads (overlay
PNG and COCO-results JSON per model, as ``sam3-lora predict`` writes them).

With ``model.task: interactive`` (SAM3's tracker) the page is the click page instead: the
image itself is clicked (``Image.select`` gives the click in pixels of the file shown, which is
the image at full size), a radio chooses whether a click marks the object or not it, "undo
last click" and "clear clicks" edit the clicks, an optional box goes with them (Enter, or
"segment again", applies it), and each click, or another adapter, answers at once: the mask
with the clicks drawn on it (green +, red -), the predicted IoU, object score and mask area,
and the same downloads. The clicks live in the browser tab's state.

Every handler catches our errors and shows their one-line message in the status line; an
unexpected error is logged on the server and shown as one generic line, never as a trace.

Every image the page shows (the preview, the overlays) is handed to gradio as a file we wrote
into a fresh per-request folder, never as a PIL image. Gradio copies a file it is given into
its cache by temporary name and rename, and never rewrites a cached copy; a PIL image, it
encodes into ``<cache>/<hash of the bytes>/image.<format>`` in place, every time
(``processing_utils.save_pil_to_cache``, gradio 6.31). Two sessions showing the same picture
(the same example, or the same answer) then rewrite the very file the other is being served,
and the response is cut short: h11's "Too little data for declared Content-Length", 11 of
229 file responses with 20 parallel sessions before this was changed.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from sam3_lora.config import DEFAULT_SCORE_THRESHOLD
from sam3_lora.errors import Sam3LoraError
from sam3_lora.serve.app import (
    BASE,
    CLICK_HEADERS,
    TABLE_HEADERS,
    AdapterApp,
    synthetic_examples,
)
from sam3_lora.serve.limits import UPLOAD_SUFFIXES
from sam3_lora.serve.overlay import write_png

log = logging.getLogger(__name__)

DOWNLOADS_MAX_AGE_S = 3600   # request folders older than this are removed at the next request
PREVIEW_SIDE = 1024   # the input preview is shown 150 px high: a larger copy is only slower
STATE_SESSIONS = 64   # tabs whose image is kept (up to 75 MB each at 25 MP); the oldest go first
INTRO = """\
# SAM3 LoRA adapters
Upload an image (or pick an example), type what to find, and run. **Model** {source} ({size} px)
· **adapters** {adapters} · requests run one at a time.
"""
CLICK_INTRO = """\
# SAM3 LoRA adapters: clicks
Upload an image (or pick an example) and click on an object: each click refines its mask.
**Model** {source}'s tracker ({size} px) · **adapters** {adapters} · requests run one at a time.
"""
POSITIVE, NEGATIVE = "positive: the object", "negative: not it"


def _markdown_text(text: str) -> str:
    """``text`` shown literally in Markdown (paths and names hold ``_``, ``*``, ``<``...)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>])", r"\\\1", text)


def _problem(message: str) -> str:
    return f"⚠️ {_markdown_text(message)}"


class Handlers:
    """What the page's events call; each returns the new values of its outputs, and turns
    every failure into a line for the status Markdown."""

    def __init__(self, app: AdapterApp, examples: dict[str, bytes]):
        self.app, self.examples = app, examples
        # Downloads are written here; gradio serves a file only once a handler returns it.
        self.downloads = Path(tempfile.mkdtemp(prefix="sam3-lora-app-"))
        atexit.register(shutil.rmtree, self.downloads, ignore_errors=True)

    def _guard(self, work, failed):
        """``work()``, or ``failed(line)`` with the error's one-line message."""
        try:
            return work()
        except Sam3LoraError as error:
            return failed(_problem(str(error)))
        except Exception:   # a bug must not reach the page as a trace
            log.exception("sam3-lora app: request failed")
            return failed(_problem("the request failed on the server; the details are in the "
                                   "server's log"))

    def _loaded(self, data: bytes, what: str, side: int | None = PREVIEW_SIDE):
        """(the image, its preview's path, the status line) of uploaded or example bytes; the
        preview at most ``side`` px wide and high (None: the image's own size)."""
        image = self.app.read_image(data)
        preview = image.copy()
        if side:
            preview.thumbnail((side, side))
        path = write_png(preview, self._request_folder() / "input.png")
        return image, str(path), f"{_markdown_text(what)}: {image.width}x{image.height} px, ready"

    def upload(self, data: bytes | None):
        """An uploaded file -> (image state, preview, status, upload); a refused file is
        removed from the upload box, which is then ready for the next one."""
        import gradio as gr

        if data is None:
            return None, None, "", None

        def work():
            return *self._loaded(data, "uploaded image"), gr.update()

        return self._guard(work, lambda line: (None, None, line, None))

    def example(self, name: str | None, prompts: str):
        """A picked example -> (image state, preview, prompts, status); empty prompts are
        filled with the concepts the example shows."""
        if name not in self.examples:
            return None, None, prompts, ""

        def work():
            image, preview, status = self._loaded(self.examples[name], name.split(":")[0])
            return image, preview, prompts or name.split(": ", 1)[1], status

        return self._guard(work, lambda line: (None, None, prompts, line))

    def run(self, image, prompts: str, boxes: str, threshold: float, adapter: str,
            side_by_side: bool):
        """The request -> (overlay, base overlay, table, status, downloads)."""
        import gradio as gr
        import pandas as pd

        def work():
            result = self.app.predict(image, prompts, boxes, threshold, adapter, side_by_side)
            files = [str(p) for p in result.save(self._request_folder())]
            # The overlays shown are the PNG files offered for download (see the docstring).
            chosen, *base = [f for f in files if f.endswith(".png")]
            name = result.answers[0].model
            label = BASE if name == BASE else f"adapter: {name}"
            return (gr.update(value=chosen, label=label),
                    gr.update(value=base[0] if base else None, visible=bool(base)),
                    pd.DataFrame(result.rows(), columns=TABLE_HEADERS),
                    f"{_markdown_text(result.summary())} (threshold {threshold:.2f})",
                    files)

        return self._guard(work, lambda line: (None, gr.update(value=None), None, line, None))

    # ---- the click page (model.task: interactive) ---------------------------------------

    def click_upload(self, data: bytes | None):
        """An uploaded file -> (image state, clicks, shown image, base image, table, status,
        downloads, upload): the image shown at full size, to be clicked, with no clicks yet."""
        import gradio as gr

        if data is None:
            return None, [], None, gr.update(value=None, visible=False), None, "", None, None

        def work():
            image, shown, status = self._loaded(data, "uploaded image", side=None)
            return (image, [], gr.update(value=shown, label="Click on the object"),
                    gr.update(value=None, visible=False), None, status, None, gr.update())

        return self._guard(work, lambda line: (None, [], None, gr.update(value=None, visible=False),
                                               None, line, None, None))

    def click_example(self, name: str | None):
        """A picked example -> (image state, clicks, shown image, base image, table, status,
        downloads), as ``click_upload``."""
        import gradio as gr

        if name not in self.examples:
            return None, [], None, gr.update(value=None, visible=False), None, "", None

        def work():
            image, shown, status = self._loaded(self.examples[name], name.split(":")[0], side=None)
            return (image, [], gr.update(value=shown, label="Click on the object"),
                    gr.update(value=None, visible=False), None, status, None)

        return self._guard(work, lambda line: (None, [], None, gr.update(value=None, visible=False),
                                               None, line, None))

    def add_click(self, image, clicks: list, kind: str, box: str, adapter: str, side_by_side: bool,
                  evt=None):
        """A click on the shown image (``evt.index``: x, y in its pixels, which are the image's)
        -> (clicks, shown image, base image, table, status, downloads); a refused click is not
        kept."""
        if evt is None or evt.index is None:   # a click beside the picture, in its frame
            return self._kept(clicks, "click on the picture itself")
        x, y = (float(v) for v in evt.index)
        return self._clicked(image, [*clicks, [x, y, 0 if kind == NEGATIVE else 1]], clicks, box,
                             adapter, side_by_side)

    def undo_click(self, image, clicks: list, box: str, adapter: str, side_by_side: bool):
        """The clicks without the last one, and the mask they give."""
        return self._clicked(image, clicks[:-1], clicks, box, adapter, side_by_side)

    def clear_clicks(self, image, box: str, adapter: str, side_by_side: bool):
        """No clicks: the box's mask if there is a box, else the image as it is."""
        return self._clicked(image, [], [], box, adapter, side_by_side)

    def segment(self, image, clicks: list, box: str, adapter: str, side_by_side: bool):
        """The clicks and the box again (after the box, the adapter or side by side changed)."""
        return self._clicked(image, clicks, clicks, box, adapter, side_by_side)

    def _kept(self, clicks: list, line: str):
        """Outputs that leave the page as it is, but for the status ``line``."""
        import gradio as gr

        return clicks, gr.update(), gr.update(), gr.update(), _problem(line), gr.update()

    def _clicked(self, image, clicks: list, before: list, box: str, adapter: str, side_by_side: bool):
        """The answer to ``clicks`` and ``box`` -> (clicks, shown image, base image, table,
        status, downloads); on an error, ``before`` stays the clicks and the page as it was."""
        import gradio as gr
        import pandas as pd

        def work():
            if not clicks and not (box or "").strip():   # nothing to segment: show the image
                if image is None:
                    raise Sam3LoraError("no image: upload one or pick an example")
                shown = write_png(image, self._request_folder() / "input.png")
                return ([], gr.update(value=str(shown), label="Click on the object"),
                        gr.update(value=None, visible=False), None, "no clicks: click on the object",
                        None)
            points = [click[:2] for click in clicks] or None
            labels = [click[2] for click in clicks] or None
            result = self.app.segment(image, points, labels, box, adapter, side_by_side)
            files = [str(p) for p in result.save(self._request_folder())]
            chosen, *base = [f for f in files if f.endswith(".png")]   # see the module docstring
            name = result.answers[0].model
            label = BASE if name == BASE else f"adapter: {name}"
            return (clicks, gr.update(value=chosen, label=f"{label} (click to add a point)"),
                    gr.update(value=base[0] if base else None, visible=bool(base)),
                    pd.DataFrame(result.rows(), columns=CLICK_HEADERS),
                    _markdown_text(result.summary()), files)

        return self._guard(work, lambda line: (before, gr.update(), gr.update(), gr.update(), line,
                                               gr.update()))

    def _request_folder(self) -> Path:
        """A fresh folder for one request's downloads; old ones are removed on the way."""
        for old in self.downloads.iterdir():
            if time.time() - old.stat().st_mtime > DOWNLOADS_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.downloads))


def build_app(app: AdapterApp, examples: dict[str, bytes] | None = None):
    """The page (a ``gr.Blocks``) for ``app``: the click page for ``model.task: interactive``,
    else the concept page; ``examples`` default to synthetic shapes."""
    import gradio as gr

    handlers = Handlers(app, synthetic_examples() if examples is None else examples)
    adapters = [c for c in app.choices if c != BASE]
    offered = _markdown_text(", ".join(adapters)) if adapters else "none (base model only)"
    intro = CLICK_INTRO if app.task == "interactive" else INTRO
    intro = intro.format(source=_markdown_text(app.config.model.source), adapters=offered,
                         size=app.engine.processor.image_size)
    # delete_cache: gradio's copies of uploads and downloads go after an hour.
    with gr.Blocks(title="sam3-lora app", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as page:
        gr.Markdown(intro, elem_id="intro")
        # The decoded image, per browser tab; dropped after an hour so tabs left open cost nothing.
        image = gr.State(None, time_to_live=3600)
        if app.task == "interactive":
            _click_page(gr, app, handlers, image, adapters)
        else:
            _concept_page(gr, app, handlers, image, adapters)
    return page


def _upload_box(gr, app: AdapterApp):
    return gr.File(label=f"Image: PNG, JPEG, WebP, BMP or TIFF, up to {app.max_upload_mb:g} MB",
                   file_types=UPLOAD_SUFFIXES, type="binary", height=150, elem_id="upload")


def _downloads(gr):
    return gr.File(label="Downloads: overlay PNG and COCO-results JSON (as sam3-lora predict "
                         "writes)", file_count="multiple", interactive=False, height=110,
                   elem_id="downloads")


def _concept_page(gr, app: AdapterApp, handlers: Handlers, image, adapters: list[str]) -> None:
    """Text and box prompts for the detector (``model.task: concept``)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            upload = _upload_box(gr, app)
            example = gr.Dropdown(list(handlers.examples), value=None, label="…or an example",
                                  elem_id="example")
            preview = gr.Image(label="Input", type="pil", interactive=False, height=150,
                               elem_id="preview")
            with gr.Row():
                prompts = gr.Textbox(label="Prompts", lines=2, max_length=2000,
                                     placeholder="red circle, blue square (comma or newline "
                                                 "between)", elem_id="prompts")
                boxes = gr.Textbox(label="Box prompts (optional)", lines=2, max_length=2000,
                                   placeholder="x1,y1,x2,y2 in pixels, one box per line",
                                   elem_id="boxes")
            with gr.Row():
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_SCORE_THRESHOLD, step=0.01,
                                      label="Score threshold", elem_id="threshold")
                adapter = gr.Dropdown(app.choices, value=app.choices[0], label="Adapter",
                                      elem_id="adapter")
            side_by_side = gr.Checkbox(label="Side by side with the base model",
                                       interactive=bool(adapters), elem_id="side-by-side")
            run = gr.Button("Run", variant="primary", elem_id="run")
        with gr.Column(scale=3, min_width=420):
            status = gr.Markdown("Upload an image or pick an example, then run.",
                                 elem_id="status")
            with gr.Row():
                overlay = gr.Image(label="Result", type="pil", format="png", interactive=False,
                                   height=330, elem_id="overlay")
                base_overlay = gr.Image(label=BASE, type="pil", format="png", interactive=False,
                                        height=330, visible=False, elem_id="base-overlay")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Detections", interactive=False,
                                 wrap=True, max_height=260, elem_id="detections")
            downloads = _downloads(gr)
    upload.upload(handlers.upload, upload, [image, preview, status, upload])
    upload.clear(lambda: (None, None, ""), None, [image, preview, status])
    example.input(handlers.example, [example, prompts], [image, preview, prompts, status])
    run.click(handlers.run, [image, prompts, boxes, threshold, adapter, side_by_side],
              [overlay, base_overlay, table, status, downloads], concurrency_limit=1,
              concurrency_id="model")


def _click_page(gr, app: AdapterApp, handlers: Handlers, image, adapters: list[str]) -> None:
    """Clicks (and a box) on one object for the tracker (``model.task: interactive``)."""
    clicks = gr.State([], time_to_live=3600)   # [[x, y, 1 object / 0 not it], ...] in order
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            upload = _upload_box(gr, app)
            example = gr.Dropdown(list(handlers.examples), value=None, label="…or an example",
                                  elem_id="example")
            kind = gr.Radio([POSITIVE, NEGATIVE], value=POSITIVE, label="A click marks",
                            elem_id="click-kind")
            with gr.Row():
                undo = gr.Button("Undo last click", elem_id="undo")
                clear = gr.Button("Clear clicks", elem_id="clear")
            box = gr.Textbox(label="Box around the object (optional)", max_length=2000,
                             placeholder="x1,y1,x2,y2 in pixels", elem_id="boxes")
            adapter = gr.Dropdown(app.choices, value=app.choices[0], label="Adapter",
                                  elem_id="adapter")
            side_by_side = gr.Checkbox(label="Side by side with the base model",
                                       interactive=bool(adapters), elem_id="side-by-side")
            run = gr.Button("Segment again", elem_id="run")
        with gr.Column(scale=3, min_width=420):
            status = gr.Markdown("Upload an image or pick an example, then click on an object.",
                                 elem_id="status")
            with gr.Row():
                # type="filepath": the page is handed files only (see the module docstring).
                overlay = gr.Image(label="Click on the object", type="filepath", format="png",
                                   interactive=False, height=420, elem_id="overlay")
                base_overlay = gr.Image(label=BASE, type="filepath", format="png",
                                        interactive=False, height=420, visible=False,
                                        elem_id="base-overlay")
            table = gr.Dataframe(headers=CLICK_HEADERS, label="Object", interactive=False,
                                 wrap=True, max_height=160, elem_id="detections")
            downloads = _downloads(gr)

    def add_click(image, clicks, kind, box, adapter, side_by_side, evt):
        return handlers.add_click(image, clicks, kind, box, adapter, side_by_side, evt)

    # gradio hands the click's position to the parameter annotated with its SelectData.
    add_click.__annotations__ = {"evt": gr.SelectData}
    answer = [clicks, overlay, base_overlay, table, status, downloads]
    model = {"concurrency_limit": 1, "concurrency_id": "model"}
    upload.upload(handlers.click_upload, upload,
                  [image, clicks, overlay, base_overlay, table, status, downloads, upload])
    upload.clear(lambda: (None, [], None, gr.update(value=None, visible=False), None, "", None), None,
                 [image, clicks, overlay, base_overlay, table, status, downloads])
    example.input(handlers.click_example, example,
                  [image, clicks, overlay, base_overlay, table, status, downloads])
    settings = [box, adapter, side_by_side]
    for shown in (overlay, base_overlay):   # a click on either picture adds a point
        shown.select(add_click, [image, clicks, kind, *settings], answer, **model)
    undo.click(handlers.undo_click, [image, clicks, *settings], answer, **model)
    clear.click(handlers.clear_clicks, [image, *settings], answer, **model)
    run.click(handlers.segment, [image, clicks, *settings], answer, **model)
    # Another model, or the base beside it, answers the same clicks at once.
    for setting in (adapter, side_by_side):
        setting.input(handlers.segment, [image, clicks, *settings], answer, **model)
    box.submit(handlers.segment, [image, clicks, *settings], answer, **model)


def launch(app: AdapterApp, host: str = "127.0.0.1", port: int = 7860, *,
           examples: dict[str, bytes] | None = None, prevent_thread_lock: bool = False,
           quiet: bool = False):
    """Serve the page for ``app`` on ``host``:``port``; returns the running ``gr.Blocks``
    (with ``prevent_thread_lock``, else it blocks until Ctrl-C).

    Binds to this machine only by default, and warns on any other address. Gradio itself
    refuses uploads over twice our limit (with its own message in the page) before they are
    written to disk; our check answers those in between.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # no calls home from gradio
    import gradio as gr

    page = build_app(app, examples)
    page.queue(default_concurrency_limit=1, max_size=64)
    # System fonts: the default theme may fetch web fonts, which an offline machine cannot.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    # show_error=False: only our one-line messages reach the page; allowed_paths stays empty.
    page.launch(server_name=host, server_port=port, show_error=False, ssr_mode=False, quiet=quiet,
                theme=theme, max_file_size=int(2 * app.max_upload_mb * 2**20),
                state_session_capacity=STATE_SESSIONS, prevent_thread_lock=prevent_thread_lock)
    return page
