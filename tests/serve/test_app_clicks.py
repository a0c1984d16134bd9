"""The app for ``model.task: interactive``: clicks on one object, without a browser."""

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import sam3_lora.serve.app
from sam3_lora.config import load_config
from sam3_lora.lora.adapter import save_adapter
from sam3_lora.lora.apply import apply_lora_to_model
from sam3_lora.model.tracker import load_tracker
from sam3_lora.serve.app import (
    BASE,
    CACHED_ENCODINGS,
    CLICK_HEADERS,
    AdapterApp,
    AppError,
    read_image,
    synthetic_examples,
)
from sam3_lora.serve.limits import MAX_CLICKS

SOURCE = "sam3-tiny-shapes"   # the bundled base: its tracker heads are random, which is fine here
LORA = ["lora.rank=4", "lora.target_modules=[all]", "lora.apply_to_mask_decoder=true"]
# Clicks on the synthetic example (320 x 240), away from the diagonal so x and y cannot swap unseen.
CLICKS = [[200, 40], [60, 180], [250, 200], [30, 30]]
LABELS = [1, 0, 1, 0]


def make_tracker_app(root: Path, **limits) -> AdapterApp:
    """The tracker app with one adapter (``best``, under ``root``) whose LoRA B matrices are
    random, so it answers differently from the base."""
    config = load_config(None, [f"model.source={SOURCE}", "model.task=interactive",
                                f"output.dir={root / 'run'}", *LORA])
    tracker = load_tracker(SOURCE, seed=config.training.seed).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapted = apply_lora_to_model(tracker, config.lora, verbose=False)
        with torch.no_grad():
            for name, parameter in adapted.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape) * 0.5)
    save_adapter(adapted.eval(), root / "run" / "best", base_source=SOURCE)
    return AdapterApp(config, **limits)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_tracker_app(tmp_path_factory.mktemp("clicks"), max_upload_mb=1)


@pytest.fixture(scope="module")
def example():
    return read_image(next(iter(synthetic_examples(count=1).values())))


@pytest.fixture
def calls(monkeypatch):
    """The tracker's runs from here on: "encode" (pixels in) or "decode" (stored features in)."""
    seen, real = [], sam3_lora.serve.app._Recorded.__call__

    def counted(self, **inputs):
        seen.append("encode" if "pixel_values" in inputs else "decode")
        return real(self, **inputs)

    monkeypatch.setattr(sam3_lora.serve.app._Recorded, "__call__", counted)
    return seen


def mask(result, index=0) -> np.ndarray:
    return result.answers[index].predictions[0]["masks"][0]


def test_a_click_in_pixels_gives_what_segment_gives(app, example):
    """One click: the app's answer is ``SAM3LoRAInference.segment``'s, at the image's size."""
    for point in CLICKS[:2]:
        result = app.segment(example, [point], [1])
        with app.engine.base_model():
            direct = app.engine.segment(example, points=[point], labels=[1])
        assert mask(result).shape == (240, 320)
        np.testing.assert_array_equal(mask(result), direct["mask"])
        [[model, iou, object_score, area, clicks]] = result.rows()
        assert (model, clicks) == (BASE, 1)
        assert iou == round(direct["score"], 3) and object_score == round(direct["object_score"], 3)
        assert area == int(direct["mask"].sum())
    assert not np.array_equal(mask(app.segment(example, [CLICKS[0]], [1])),
                              mask(app.segment(example, [CLICKS[0][::-1]], [1])))
    assert result.summary().startswith(f"base model: mask of {area:,} px (predicted IoU ")


def test_each_click_runs_the_decoder_once_on_an_image_encoded_once(app, example, calls):
    app._encoded.clear()
    shown = []
    for count in range(1, len(CLICKS) + 1):
        shown.append(mask(app.segment(example, CLICKS[:count], LABELS[:count])))
    assert calls == ["encode"] + ["decode"] * (len(CLICKS) - 1)
    calls.clear()
    undone = app.segment(example, CLICKS[:2], LABELS[:2])   # undo twice
    assert calls == ["decode"]
    np.testing.assert_array_equal(mask(undone), shown[1])
    # The answers are those of every click replayed from the first, on a fresh encoding.
    for count in (len(CLICKS), 2):
        app._encoded.clear()
        calls.clear()
        np.testing.assert_array_equal(mask(app.segment(example, CLICKS[:count], LABELS[:count])),
                                      shown[count - 1])
        assert calls == ["encode"] + ["decode"] * (count - 1)
    # A changed earlier click (or box) replays from there.
    calls.clear()
    app.segment(example, [CLICKS[0], [61, 180]], LABELS[:2])
    assert calls == ["decode"]
    app.segment(example, [CLICKS[0], [61, 180]], LABELS[:2], "10,10,300,220")
    assert calls == ["decode"] * 3


def test_a_replay_cut_short_by_an_error_is_resumed_from_what_it_finished(app, example, monkeypatch):
    app._encoded.clear()
    clean = mask(app.segment(example, CLICKS, LABELS))
    app._encoded.clear()
    app.segment(example, CLICKS[:1], LABELS[:1])
    real, runs = sam3_lora.serve.app._Recorded.__call__, []

    def failing(self, **inputs):   # the second new click fails (e.g. out of memory)
        runs.append(1)
        if len(runs) == 2:
            raise RuntimeError("out of memory")
        return real(self, **inputs)

    monkeypatch.setattr(sam3_lora.serve.app._Recorded, "__call__", failing)
    with pytest.raises(RuntimeError):
        app.segment(example, CLICKS, LABELS)
    np.testing.assert_array_equal(mask(app.segment(example, CLICKS, LABELS)), clean)


def test_encodings_are_kept_per_image_and_model_up_to_the_cap(app, example, calls):
    app._encoded.clear()
    others = [Image.new("RGB", (320, 240), color) for color in ("red", "green", "blue", "white")]
    for picture in [example, *others]:
        app.segment(picture, CLICKS[:1], [1])
    assert calls == ["encode"] * 5 and len(app._encoded) == CACHED_ENCODINGS
    calls.clear()
    app.segment(others[-1], CLICKS[:1], [1], adapter="best")   # another model: its own encoding
    app.segment(example, CLICKS[:1], [1])   # the oldest was dropped
    assert calls == ["encode", "encode"]


def test_side_by_side_answers_with_the_adapter_and_the_base(app, example, tmp_path):
    result = app.segment(example, CLICKS[:3], LABELS[:3], "", "best", side_by_side=True)
    alone = app.segment(example, CLICKS[:3], LABELS[:3], "", BASE)
    adapter = app.segment(example, CLICKS[:3], LABELS[:3], "", "best")
    assert [a.model for a in result.answers] == ["best", BASE]
    np.testing.assert_array_equal(mask(result, 1), mask(alone))
    np.testing.assert_array_equal(mask(result, 0), mask(adapter))
    assert not np.array_equal(mask(adapter), mask(alone))   # the adapter is switched off for the base
    assert [row[0] for row in result.rows()] == ["best", BASE]
    assert sorted(p.name for p in result.save(tmp_path)) == [
        "base-model-detections.json", "base-model-overlay.png", "best-detections.json", "best-overlay.png"]
    with pytest.raises(AppError, match="choose an adapter"):
        app.segment(example, CLICKS[:1], [1], "", BASE, side_by_side=True)


def test_a_box_alone_or_with_clicks(app, example):
    box = app.segment(example, None, None, "40,20,300,200")
    assert box.rows()[0][-1] == 0 and mask(box).shape == (240, 320)
    both = app.segment(example, CLICKS[:1], [1], "[40 20 300 200]")
    assert not np.array_equal(mask(both), mask(box))


def test_the_overlay_shows_the_mask_and_each_click_in_its_colour(app, example):
    result = app.segment(example, [[100, 60], [220, 180]], [1, 0])
    overlay = np.asarray(result.answers[0].overlay)
    assert overlay.shape == (240, 320, 3)
    assert tuple(overlay[60, 100]) == sam3_lora.serve.overlay.POSITIVE_COLOR   # the + at the click
    assert tuple(overlay[180, 220]) == sam3_lora.serve.overlay.NEGATIVE_COLOR  # the - at the click
    assert tuple(overlay[60 - 5, 100]) == sam3_lora.serve.overlay.POSITIVE_COLOR   # + has an upright
    assert tuple(overlay[180 - 5, 220]) != sam3_lora.serve.overlay.NEGATIVE_COLOR  # - has none


@pytest.mark.parametrize("points, labels, box, message", [
    ([[320, 10]], [1], "", r"points: every point must lie inside the 320x240 image"),
    ([[10, -1]], [1], "", r"points: every point must lie inside"),
    ([[10, 10]] * (MAX_CLICKS + 1), [1] * (MAX_CLICKS + 1), "",
     rf"clicks: {MAX_CLICKS + 1} on one object, at most {MAX_CLICKS}; undo some"),
    ([[10, 10]], [2], "", r"labels: give one label per point \(1\), each 1 \(object\) or 0"),
    ([[10, 10]], [1], "1,2,3", r"box prompts, line 1: '1,2,3' is not x1,y1,x2,y2"),
    ([[10, 10]], [1], "1,2,30,40\n5,5,50,50", r"box prompts: 2 boxes given; the tracker takes one box"),
    ([[10, 10]], [1], "1,2,400,40", r"box prompts: box \[1, 2, 400, 40\] is outside the 320x240 image"),
    (None, None, "  ", r"no prompt: click on the object, or give a box x1,y1,x2,y2"),
])
def test_bad_clicks_and_boxes_are_refused_in_one_line_before_the_model_runs(app, example, monkeypatch,
                                                                            points, labels, box, message):
    monkeypatch.setattr(AdapterApp, "_replay", lambda *args: pytest.fail("the model ran"))
    with pytest.raises(sam3_lora.errors.Sam3LoraError, match=message) as error:
        app.segment(example, points, labels, box)
    assert "\n" not in str(error.value)


def test_the_tasks_do_not_mix(app, example):
    with pytest.raises(AppError, match="this app serves SAM3's tracker .* click on the object"):
        app.predict(example, "red circle")
    concept = SimpleNamespace(task="concept")   # a concept app, as far as segment looks
    with pytest.raises(AppError, match="clicks need SAM3's tracker: .*model.task is interactive"):
        AdapterApp.segment(concept, example, CLICKS[:1], [1])
    with pytest.raises(AppError, match="adapter 'nope' is not loaded; choose one of: best, base model"):
        app.segment(example, CLICKS[:1], [1], "", "nope")
    with pytest.raises(AppError, match="no image"):
        app.segment(None, CLICKS[:1], [1])


# ---- the page ---------------------------------------------------------------------------------


def click(x, y):
    return SimpleNamespace(index=[x, y])   # what gradio's SelectData holds for an image


@pytest.fixture
def handlers(app, example):
    pytest.importorskip("gradio")
    from sam3_lora.serve.app_ui import Handlers

    buffer = io.BytesIO()
    example.save(buffer, format="PNG")
    return Handlers(app, {"example 1: shapes": buffer.getvalue()})


def test_clicks_add_undo_and_clear_on_the_page(handlers, app, example):
    from sam3_lora.serve.app_ui import NEGATIVE, POSITIVE

    image, clicks, shown, _, _, status, _ = handlers.click_example("example 1: shapes")
    # The picture shown to be clicked is the image at its own size: gradio's x, y are its pixels.
    assert clicks == [] and Image.open(shown["value"]).size == image.size and "ready" in status
    settings = ("", "best", True)
    clicks, *_ = handlers.add_click(image, clicks, POSITIVE, *settings, click(*CLICKS[0]))
    clicks, shown, base, table, status, files = handlers.add_click(image, clicks, NEGATIVE, *settings,
                                                                   click(*CLICKS[1]))
    assert clicks == [[*map(float, CLICKS[0]), 1], [*map(float, CLICKS[1]), 0]]
    assert list(table.columns) == CLICK_HEADERS and list(table["clicks"]) == [2, 2]
    assert status.startswith("best: mask of ")
    expected = app.segment(image, CLICKS[:2], [1, 0], *settings)
    assert list(table["mask area (px)"]) == [row[3] for row in expected.rows()]
    # Downloads, and the pictures shown, are files of one fresh folder inside the app's.
    folder = Path(files[0]).parent
    assert folder.parent == handlers.downloads and all(Path(f).parent == folder for f in files)
    assert {shown["value"], base["value"]} <= set(files) and base["visible"] is True
    clicks, *_, table, status, files = handlers.undo_click(image, clicks, *settings)
    assert clicks == [[*map(float, CLICKS[0]), 1]] and list(table["clicks"]) == [1, 1]
    assert Path(files[0]).parent != folder
    clicks, shown, base, table, status, files = handlers.clear_clicks(image, *settings)
    assert (clicks, table, files, base["visible"]) == ([], None, None, False)
    assert Image.open(shown["value"]).size == image.size and status == "no clicks: click on the object"
    # With a box, clearing the clicks leaves the box's mask.
    *_, table, _, _ = handlers.clear_clicks(image, "40,20,300,200", "best", False)
    assert list(table["clicks"]) == [0]


def test_a_refused_click_keeps_the_clicks_and_the_page(handlers, example):
    from sam3_lora.serve.app_ui import POSITIVE

    kept = [[10.0, 10.0, 1]]
    clicks, shown, *_, status, files = handlers.add_click(example, kept, POSITIVE, "", BASE, False,
                                                          click(500, 10))
    assert clicks == kept and shown == {"__type__": "update"} and files == {"__type__": "update"}
    assert status.startswith("⚠️ points: every point must lie inside the 320x240 image")
    full = [[10.0, 10.0, 1]] * MAX_CLICKS
    clicks, *_, status, _ = handlers.add_click(example, full, POSITIVE, "", BASE, False, click(5, 5))
    assert clicks == full and "at most 64" in status
    clicks, *_, status, _ = handlers.add_click(example, kept, POSITIVE, "", BASE, False, SimpleNamespace(index=None))
    assert clicks == kept and "click on the picture itself" in status
    clicks, *_, status, _ = handlers.add_click(None, [], POSITIVE, "", BASE, False, click(5, 5))
    assert clicks == [] and status == "⚠️ no image: upload one or pick an example"


def dependencies(page) -> dict[str, list]:
    """Each event's handler name -> its (component elem_id, event) triggers."""
    ids = {block._id: getattr(block, "elem_id", None) for block in page.blocks.values()}
    return {d.get("api_name"): [(ids[target], event) for target, event in d["targets"]]
            for d in page.config["dependencies"]}


def test_the_page_is_picked_by_the_task(app):
    pytest.importorskip("gradio")
    from sam3_lora.serve.app_ui import build_app

    clicks = dependencies(build_app(app, {}))
    assert clicks["add_click"] == [("overlay", "select")] and clicks["add_click_1"] == [("base-overlay", "select")]
    assert clicks["undo_click"] == [("undo", "click")] and clicks["clear_clicks"] == [("clear", "click")]
    assert clicks["segment"] == [("run", "click")] and "run" not in clicks
    assert [clicks[f"segment_{n}"] for n in (1, 2, 3)] == [
        [("adapter", "input")], [("side-by-side", "input")], [("boxes", "submit")]]
    concept = SimpleNamespace(task="concept", choices=["best", BASE], max_upload_mb=1,
                              config=load_config(None, []), engine=SimpleNamespace(
                                  processor=SimpleNamespace(image_size=112)))
    detections = dependencies(build_app(concept, {}))
    assert detections["run"] == [("run", "click")]
    assert not {"add_click", "undo_click", "clear_clicks", "segment"} & set(detections)


def test_the_command_line_serves_clicks_for_a_tracker_config(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio")
    import sam3_lora.serve.app_ui
    from sam3_lora.cli import main

    started = []
    monkeypatch.setattr(sam3_lora.serve.app_ui, "launch", lambda *args: started.append(args))
    assert main(["app", f"model.source={SOURCE}", "model.task=interactive", f"output.dir={tmp_path}"]) == 0
    [(app, host, _)] = started
    assert (app.task, app.choices, host) == ("interactive", [BASE], "127.0.0.1")
    assert capsys.readouterr().out == "adapters: base model\n"
