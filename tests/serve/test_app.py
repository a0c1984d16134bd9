"""The app's logic without a browser: one base model, adapters by name, safe uploads."""

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam3_lora.lora.weights
import sam3_lora.model.loading
import sam3_lora.serve.app
from sam3_lora.cli import main
from sam3_lora.config import load_config
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.serve.app import (
    BASE,
    AdapterApp,
    AppError,
    AppResult,
    ModelAnswer,
    adapter_folders,
    bind_warning,
    parse_boxes,
    parse_prompts,
    read_image,
    synthetic_examples,
)
from sam3_lora.serve.inference import PromptError, SAM3LoRAInference

LORA = ["lora.rank=4", "lora.target_modules=[all]", "lora.apply_to_detr_decoder=true",
        "lora.apply_to_mask_decoder=true"]
PROMPTS = "red circle, blue square"
BASE_LOADS = []   # load_sam3 calls made while the app started


def make_run(root: Path):
    """A tiny-SAM3 config whose run folder has ``best/`` and ``last/`` adapters, plus a third
    adapter outside it (for ``--weights``); LoRA B matrices are random, so each adapter
    answers differently from the base and from the others. Returns (config, third folder)."""
    config = load_config(None, ["model.source=sam3-tiny", f"output.dir={root / 'run'}", *LORA])
    folders = [root / "run" / "best", root / "run" / "last", root / "other"]
    for seed, folder in zip((3, 2, 0), folders, strict=True):   # seeds whose scores differ most
        base = sam3_lora.model.loading.load_sam3("sam3-tiny", seed=config.training.seed).model
        # PEFT draws A at random: fixing the seed gives the same adapters (and scores) every run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapted = apply_lora_to_model(base, config.lora, verbose=False)
            with torch.no_grad():
                for name, parameter in adapted.named_parameters():
                    if "lora_B" in name:
                        parameter.copy_(torch.randn(parameter.shape) * 0.5)
        save_adapter(adapted.eval(), folder, base_source="sam3-tiny")
    return config, folders[2]


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def loads():
    """Every call of ``load_sam3`` from here on, counted."""
    calls, real = [], sam3_lora.lora.weights.load_sam3

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sam3_lora.lora.weights, "load_sam3", counted)
        yield calls


@pytest.fixture(scope="module")
def app(run, loads):
    config, other = run
    before = len(loads)
    app = AdapterApp(config, [other], max_upload_mb=1)
    BASE_LOADS.append(len(loads) - before)
    return app


@pytest.fixture(scope="module")
def example():
    return read_image(next(iter(synthetic_examples(count=1).values())))


def scores(result, index=0) -> np.ndarray:
    return np.concatenate([p["scores"] for p in result.answers[index].predictions])


def test_adapters_switch_by_name_on_one_base_model(app, run, loads, example):
    other, before = str(run[1]), len(loads)
    assert app.choices == ["best", "last", other, BASE]
    answers = {name: scores(app.predict(example, PROMPTS, "", 0.0, name)) for name in app.choices}
    assert answers["best"].shape == answers[BASE].shape == (40,)   # 2 prompts x 20 queries
    for first in app.choices:
        for second in app.choices:
            if first < second:
                assert np.abs(answers[first] - answers[second]).max() > 1e-3, (first, second)
    # Back and forth: the same adapter answers the same, whatever ran in between.
    again = scores(app.predict(example, PROMPTS, "", 0.0, "best"))
    np.testing.assert_array_equal(again, answers["best"])
    assert BASE_LOADS == [1] and len(loads) == before   # the base loaded once, for all four choices
    # "base model" (adapters switched off) answers as a bare base model does.
    bare = SAM3LoRAInference(config=run[0], no_lora=True, detection_threshold=0.0)
    found = bare.predict(example, parse_prompts(PROMPTS))
    np.testing.assert_allclose(np.concatenate([p["scores"] for p in found]), answers[BASE],
                               atol=1e-6)


def test_concurrent_requests_get_the_answers_of_sequential_ones(app, example):
    requests = [("best", False), (BASE, False), ("last", True), ("best", True)]
    def ask(request):
        return scores(app.predict(example, PROMPTS, "", 0.0, *request))

    expected = [ask(request) for request in requests]
    with ThreadPoolExecutor(4) as pool:   # the lock serialises them; each keeps its adapter
        answers = list(pool.map(ask, requests * 2))
    for got, want in zip(answers, expected * 2, strict=True):
        np.testing.assert_array_equal(got, want)


def test_threshold_keeps_only_detections_at_or_above_it(app, example):
    every = scores(app.predict(example, PROMPTS, "", 0.0, "best"))
    cut = float(np.median(every))
    result = app.predict(example, PROMPTS, "", cut, "best")
    assert len(result.rows()) == (every >= cut).sum() < len(every)
    assert all(row[2] >= round(cut, 3) for row in result.rows())
    assert app.predict(example, PROMPTS, "", 1.0, "best").rows() == []


def test_side_by_side_answers_with_the_adapter_and_the_base(app, example, tmp_path):
    result = app.predict(example, PROMPTS, "", 0.0, "last", side_by_side=True)
    assert [a.model for a in result.answers] == ["last", BASE]
    alone = app.predict(example, PROMPTS, "", 0.0, BASE)
    np.testing.assert_array_equal(scores(result, 1), scores(alone))
    assert {row[0] for row in result.rows()} == {"last", BASE}
    assert all(a.overlay.size == example.size for a in result.answers)
    assert "last: 40 detections in" in result.summary()
    assert "base model: 40 detections in" in result.summary()
    assert sorted(p.name for p in result.save(tmp_path)) == [
        "base-model-detections.json", "base-model-overlay.png",
        "last-detections.json", "last-overlay.png"]
    with pytest.raises(AppError, match="choose an adapter"):
        app.predict(example, PROMPTS, "", 0.5, BASE, side_by_side=True)


def test_table_rows_hold_prompt_score_box_and_area(app, example):
    result = app.predict(example, "red circle", "", 0.0, "best")
    found = result.answers[0].predictions[0]
    model, prompt, score, box, area = result.rows()[0]
    best = int(np.argmax(found["scores"]))
    assert (model, prompt, score) == ("best", "red circle", round(float(found["scores"][best]), 3))
    assert box == ", ".join(f"{v:.1f}" for v in found["boxes"][best])
    assert area == int(found["masks"][best].sum())


def test_json_is_what_predict_writes(app, run, example, tmp_path, capsys):
    config, _ = run
    config.save(tmp_path / "config.yaml")
    example.save(tmp_path / "shapes.png")
    assert main(["predict", "--config", str(tmp_path / "config.yaml"),
                 "--image", str(tmp_path / "shapes.png"), "--prompt", "red circle", "blue square",
                 "--threshold", "0.3", "--output", str(tmp_path / "out.png")]) == 0
    written = json.loads((tmp_path / "out.json").read_text())
    result = app.predict(example, PROMPTS, "", 0.3, "best")
    assert written and result.answers[0].coco() == written
    [_, saved] = result.save(tmp_path / "downloads")
    assert json.loads(saved.read_text()) == written


def test_box_prompts_run_alone_and_with_text(app, example):
    result = app.predict(example, "", "10,10,120,90\n[30 40 200 150]", 0.0, "best")
    assert [p["prompt"] for p in result.answers[0].predictions] == ["boxes"]
    result = app.predict(example, "red circle", "10,10,120,90", 0.0, "best")
    assert [p["prompt"] for p in result.answers[0].predictions] == ["red circle"]


def test_prompts_and_boxes_are_parsed_or_refused_with_the_line():
    assert parse_prompts(" red circle,blue square\n\nred circle, ") == ["red circle", "blue square"]
    assert parse_prompts("") == []
    with pytest.raises(AppError, match="at most 16"):
        parse_prompts(",".join(f"p{i}" for i in range(17)))
    np.testing.assert_array_equal(parse_boxes("1,2,3,4\n (5, 6, 7, 8) \n", (10, 10)),
                                  [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert parse_boxes("  \n", (10, 10)) is None
    with pytest.raises(AppError, match=r"box prompts, line 2: '1,2,3' is not x1,y1,x2,y2"):
        parse_boxes("1,2,3,4\n1,2,3", (10, 10))
    with pytest.raises(AppError, match="at most 32"):
        parse_boxes("1,2,3,4\n" * 33, (10, 10))
    with pytest.raises(PromptError, match="outside the 10x10 image"):
        parse_boxes("1,2,30,4", (10, 10))


@pytest.mark.parametrize("make, message", [
    (lambda: b"\x89PNG" + bytes(1_100_000), "upload is 1.1 MB, over this app's 1 MB limit"),
    (lambda: b"name,score\nred circle,0.9\n", "not an image this app reads"),
    (lambda: png_bytes(Image.new("RGB", (8, 8)), format="GIF"), "not an image this app reads"),
    (lambda: png_bytes(Image.new("1", (6000, 5000))),   # 30 MP in a few kB: a decompression bomb
     "6000x5000 pixels (30 MP), over this app's 25 MP limit"),
    (lambda: png_bytes(Image.new("RGB", (64, 64), "red"))[:60], "could not be decoded as PNG"),
])
def test_bad_uploads_are_refused_with_one_line(app, make, message):
    data = make()
    with pytest.raises(AppError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        app.predict(data, PROMPTS)
    assert "\n" not in str(error.value)


def test_good_uploads_decode_to_rgb(app):
    rgba = Image.new("RGBA", (30, 20), (10, 200, 30, 0))
    for data in (png_bytes(rgba), png_bytes(rgba.convert("RGB"), format="JPEG"),
                 png_bytes(rgba, format="WEBP"), png_bytes(rgba.convert("RGB"), format="BMP"),
                 png_bytes(rgba, format="TIFF")):
        image = app.read_image(data)
        assert (image.mode, image.size) == ("RGB", (30, 20))


def test_page_handlers_turn_every_failure_into_a_status_line(app, monkeypatch):
    pytest.importorskip("gradio")
    from sam3_lora.serve.app_ui import Handlers

    red = png_bytes(Image.new("RGB", (40, 30), "red"))
    handlers = Handlers(app, {"example 1: red circle": red})
    image, preview, status, upload = handlers.upload(b"not an image")
    assert (image, preview, upload) == (None, None, None)   # the refused file leaves the box
    assert status.startswith("⚠️ upload is not an image")
    image, _, prompts, status = handlers.example("example 1: red circle", "")
    assert image.size == (40, 30) and prompts == "red circle" and "ready" in status
    assert handlers.example("example 1: red circle", "my prompt")[2] == "my prompt"
    *_, status, files = handlers.run(None, PROMPTS, "", 0.5, "best", False)
    assert status == "⚠️ no image: upload one or pick an example" and files is None
    *_, status, files = handlers.run(image, PROMPTS, "", 0.0, "best", True)
    assert status.startswith("best: 40 detections in") and len(files) == 4
    monkeypatch.setattr(app, "predict", lambda *args: 1 / 0)
    *_, status, _ = handlers.run(image, PROMPTS, "", 0.5, "best", False)
    assert status.startswith("⚠️ the request failed on the server") and "ZeroDivision" not in status


def test_adapter_folders_offer_the_run_then_weights_once(run, tmp_path):
    config, other = run
    run_dir = Path(config.output.dir)
    assert adapter_folders(config, [run_dir / "best", other]) == {
        "best": run_dir / "best", "last": run_dir / "last", str(other): other}
    assert adapter_folders(load_config(None, [f"output.dir={tmp_path}"])) == {}


def test_unknown_adapter_is_refused(app, example):
    with pytest.raises(AppError, match="adapter 'nope' is not loaded; choose one of: best, last"):
        app.predict(example, PROMPTS, "", 0.5, "nope")


def test_bind_address_warning(app, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import sam3_lora.serve.app_ui

    assert bind_warning("127.0.0.1") is None and bind_warning("localhost") is None
    assert "anyone who can reach this machine" in bind_warning("0.0.0.0")

    class Page:   # stands in for the gradio page: nothing is bound in this test
        def queue(self, **kwargs):
            pass

        def launch(self, **kwargs):
            self.kwargs = kwargs

    page = Page()
    monkeypatch.setattr(sam3_lora.serve.app_ui, "build_app", lambda *args: page)
    sam3_lora.serve.app_ui.launch(app, "0.0.0.0", 7860)
    assert page.kwargs["max_file_size"] == 2 * 2**20 and page.kwargs["show_error"] is False
    sam3_lora.serve.app_ui.launch(app)
    assert page.kwargs["server_name"] == "127.0.0.1"
    # The command line prints the warning, before serving.
    monkeypatch.setattr(sam3_lora.serve.app, "AdapterApp", lambda *args, **kwargs: app)
    capsys.readouterr()
    assert main(["app", "model.source=sam3-tiny", "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err
    assert main(["app", "model.source=sam3-tiny"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_without_gradio_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "gradio" else real(name, *args))
    assert main(["app", "--config", "minimal", "model.source=sam3-tiny"]) == 2
    assert capsys.readouterr().err.strip() == (
        'error: the app needs gradio, which is not installed: pip install "sam3-lora[app]"')


def test_cli_starts_the_app_with_its_options(run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import sam3_lora.serve.app_ui

    config, other = run
    config.save(tmp_path / "config.yaml")
    started = []
    monkeypatch.setattr(sam3_lora.serve.app_ui, "launch", lambda *args: started.append(args))
    assert main(["app", "--config", str(tmp_path / "config.yaml"), "--weights", str(other),
                 "--port", "7999", "--max-upload-mb", "2"]) == 0
    [(app, host, port)] = started
    assert (app.choices, host, port, app.max_upload_mb) == (
        ["best", "last", str(other), BASE], "127.0.0.1", 7999, 2.0)
    assert capsys.readouterr().out == f"adapters: best, last, {other}, base model\n"


# ---- bounded work per request ---------------------------------------------------------------


@pytest.fixture
def no_model_run(app, monkeypatch):
    """The model must not run: the refusals below come first."""
    monkeypatch.setattr(app.engine, "predict", lambda *args, **kwargs: pytest.fail("the model ran"))


def test_huge_prompt_texts_are_refused_before_parsing(app, example, no_model_run):
    """The page's 2,000-character limit was the browser's only: a script sent 300,000."""
    with pytest.raises(AppError, match=r"^prompts: 300,000 characters, over this app's 2,000; "):
        app.predict(example, "crack " * 50_000)
    with pytest.raises(AppError, match=r"^box prompts: 2,001 characters"):
        app.predict(example, "red circle", "1" * 2001)
    assert parse_prompts("a, " * 600) == ["a"]   # 1,800 characters: fine


def test_prompts_times_pixels_is_bounded(app, no_model_run):
    big = Image.new("RGB", (4000, 2500))   # 10 MP: 10 prompts fit the 100 M budget
    with pytest.raises(AppError, match=r"11 prompts on a 4000x2500 image exceed this app's budget of "
                                       r"100 megapixels x prompts; use at most 10 prompts on this image"):
        app.predict(big, ", ".join(f"p{i}" for i in range(11)), "", 0.5, "best")
    with pytest.raises(AppError, match=r"6 prompts on a 4000x2500 image side by side exceed .*at most 5 "):
        app.predict(big, ", ".join(f"p{i}" for i in range(6)), "", 0.5, "best", side_by_side=True)
    with pytest.raises(AppError, match="1 prompt on a 12000x9000 image exceed.*; downscale the image"):
        app.predict(Image.new("1", (12000, 9000)), "", "1,1,5,5", 0.5, "best")   # boxes alone: one prompt


def test_detections_per_prompt_are_capped_whatever_the_threshold(app, example, monkeypatch):
    monkeypatch.setattr(sam3_lora.serve.app, "MAX_DETECTIONS", 3)
    result = app.predict(example, PROMPTS, "", 0.0, "best")   # threshold 0: all 20 would be kept
    assert [p["num_detections"] for p in result.answers[0].predictions] == [3, 3]


# ---- files the page serves -------------------------------------------------------------------
# 7 of 180 responses were cut short under 20 parallel sessions (h11: "Too little data for
# declared Content-Length"). The cause was gradio's: it writes a PIL image it is handed into
# <cache>/<hash of the bytes>/image.<format> in place, every time, so two sessions showing
# the same picture rewrite the file the other is being served. Our files, it copies by
# temporary name and rename and never rewrites. So the page hands gradio files only, each
# written once into a folder of its own.


def file_outputs(*values) -> list[str]:
    """Every value (or gr.update value) among a handler's outputs that is shown as an image."""
    return [v["value"] if isinstance(v, dict) else v for v in values]


def test_every_picture_is_handed_to_gradio_as_a_file_written_once(app, example):
    pytest.importorskip("gradio")
    from sam3_lora.serve.app_ui import Handlers

    handlers = Handlers(app, {"example 1: red circle": png_bytes(example)})
    first = handlers.example("example 1: red circle", "")
    second = handlers.example("example 1: red circle", "")
    assert all(isinstance(p, str) and Path(p).is_file() for p in (first[1], second[1]))
    assert first[1] != second[1]   # the same picture, a new file
    runs = [handlers.run(first[0], PROMPTS, "", 0.3, "best", True) for _ in range(2)]
    pictures = [file_outputs(*run[:2]) for run in runs]
    for (overlay, base_overlay), run in zip(pictures, runs, strict=True):
        assert overlay.endswith("best-overlay.png") and base_overlay.endswith("base-model-overlay.png")
        assert {overlay, base_overlay} <= set(run[4])   # the overlays shown are the downloads
    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns, Path(p).read_bytes()) for p in runs[0][4]}
    assert set(before).isdisjoint(runs[1][4])   # a second identical request writes new files
    handlers.run(first[0], PROMPTS, "", 0.3, "best", True)
    assert before == {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns, Path(p).read_bytes()) for p in before}


@pytest.mark.filterwarnings("ignore::Warning:gradio.*")   # gradio's pandas calls, not ours
def test_parallel_sessions_get_every_file_whole(app):
    """20 sessions, as browsers: pick the same example, run, fetch every file the page shows.
    Before the fix, each such run cut 1-11 responses short (of about 240)."""
    pytest.importorskip("gradio")
    import socket

    import httpx

    from sam3_lora.serve import app_ui

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    examples = synthetic_examples(count=1)
    page = app_ui.launch(app, "127.0.0.1", port, examples=examples, prevent_thread_lock=True, quiet=True)
    names = [d.get("api_name") for d in page.config["dependencies"]]
    problems, served = [], []

    def fetch_files(value, http):
        if isinstance(value, dict):
            if "/file=" in str(value.get("url")):
                with http.stream("GET", value["url"]) as response:
                    body = b"".join(response.iter_bytes())
                served.append(value["url"])
                if len(body) != int(response.headers["content-length"]):
                    problems.append(value["url"])
            for item in value.values():
                fetch_files(item, http)
        elif isinstance(value, list):
            for item in value:
                fetch_files(item, http)

    def event(http, session, name, data):
        index = names.index(name)
        http.post("gradio_api/queue/join", json={
            "data": data, "fn_index": index, "session_hash": session, "event_data": None,
            "trigger_id": page.config["dependencies"][index]["targets"][0][0]}).raise_for_status()
        with http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    assert message["success"], message
                    return message["output"]
        raise AssertionError("no answer")

    def session(number):
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}/", timeout=120) as http:
                for turn in range(3):
                    name = f"s{number}t{turn}"
                    fetch_files(event(http, name, "example", [next(iter(examples)), ""]), http)
                    fetch_files(event(http, name, "run", [None, PROMPTS, "", 0.3, BASE, False]), http)
        except httpx.HTTPError as error:   # a cut-short body raises here
            problems.append(repr(error))

    try:
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(session, range(20)))
    finally:
        page.close()
    assert problems == [] and len(served) == 20 * 3 * 4   # preview; overlay, PNG, JSON


def test_saved_files_replace_symlinks_at_their_names(tmp_path):
    """Links planted at the download names are replaced by the files, their targets untouched."""
    found = {"prompt": "red circle", "scores": np.array([0.9]), "boxes": np.array([[1.0, 2.0, 5.0, 6.0]]),
             "masks": np.ones((1, 8, 8), bool)}
    result = AppResult([ModelAnswer("best", Image.new("RGB", (8, 8)), [found], 0.1)])
    target = tmp_path / "target"
    target.write_text("keep me")
    for name in ("best-overlay.png", "best-detections.json"):
        (tmp_path / name).symlink_to(target)
    png, saved = result.save(tmp_path)
    assert target.read_text() == "keep me"
    assert not png.is_symlink() and Image.open(png).format == "PNG"
    assert not saved.is_symlink() and json.loads(saved.read_text())[0]["prompt"] == "red circle"
