"""The evaluation report: figures are real, small PNGs; report.md has its tables and links."""

import json
import re

import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from sam3_lora.evaluation import report
from sam3_lora.evaluation.report import (
    EXAMPLE_ROW_BYTES,
    MAX_PNG_BYTES,
    MIN_OUTLINE,
    MIN_PANEL,
    plot_examples,
    plot_loss_curves,
    plot_per_category_ap,
    plot_pr_curves,
    select_examples,
    write_report,
)

CATEGORIES = ["red circle", "blue star", "green square", "yellow triangle"]


def assert_png(path, min_side=100, max_side=4000, budget=MAX_PNG_BYTES):
    """A readable PNG, of a plausible size in pixels, under the byte budget."""
    assert path.is_file()
    assert path.stat().st_size <= budget
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert min_side <= min(image.size) and max(image.size) <= max_side
        return image.size


def write_metrics_jsonl(path, steps=200, torn=True):
    """A run's metrics.jsonl: a training record every 10 steps, an evaluation every 250."""
    rng = np.random.default_rng(0)
    with open(path, "w") as file:
        for step in range(10, steps * 10 + 1, 10):
            file.write(json.dumps({"step": step, "loss": float(np.exp(-step / 500) + rng.random()),
                                   "lr": 1e-4, "loss_class": 0.1}) + "\n")
            if step % 250 == 0:
                file.write(json.dumps({"step": step, "val_loss": 1 / step, "best": True}) + "\n")
        if torn:   # a killed run leaves half a line
            file.write('{"step": 99999, "lo')
    return path


def fake_precision(num_categories=4, empty=(2,)):
    """COCOeval eval["precision"]: (T=10, R=101, K, A=4, M=3), -1 for categories without GT."""
    recall = np.linspace(0, 1, 101)
    precision = np.empty((10, 101, num_categories, 4, 3))
    for t in range(10):
        for k in range(num_categories):
            precision[t, :, k] = np.clip((0.95 - 0.05 * t - 0.1 * k) * (1 - recall ** 3),
                                         0, 1)[:, None, None]
    precision[:, 90:] = -1   # recall never reached
    precision[:, :, list(empty)] = -1
    return precision


def shapes_image(rng, height, width):
    """(H, W, 3) uint8 gradient with up to three discs, and their (n, H, W) masks."""
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 200 // width, yy * 200 // height, np.full_like(xx, 120)], -1)
    masks = []
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height, height / 8
        masks.append((xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2)
    return image.astype(np.uint8), np.stack(masks)


def make_example(seed, height=300, width=400, tag="best", boxes=True):
    rng = np.random.default_rng(seed)
    image, gt = shapes_image(rng, height, width)
    pred = np.roll(gt, 5, axis=2)
    ys, xs = np.nonzero(pred[0])
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    return {"image": image if seed % 2 else Image.fromarray(image), "prompt": CATEGORIES[seed % 4],
            "tag": tag, "unit_score": float(rng.random()), "gt_masks": gt, "pred_masks": pred,
            "pred_scores": rng.uniform(0.3, 1, len(pred)),
            "pred_boxes": np.array([box] * len(pred), float) if boxes else None}


METRICS = {"mAP": 0.412, "mAP50": 0.71, "mAP75": 0.43, "cgF1": None, "cgF1_50": None,
           "cgF1_75": None, "pmF1": 0.62, "IL_MCC": None, "val_loss": 0.8,
           "per_category": {name: {"AP": 0.7 - 0.1 * i, "AP50": 0.9 - 0.1 * i, "AP75": 0.5,
                                   "cgF1": None} for i, name in enumerate(CATEGORIES)}}
BASE = {"mAP": 0.25, "mAP50": 0.5, "mAP75": 0.2, "cgF1": None, "pmF1": 0.4,
        "per_category": {name: {"AP": 0.3} for name in CATEGORIES}}
FORGETTING = {"matched_mask_iou": 0.87, "detection_change": -0.12, "presence_shift": 0.03,
              "retain_prompts": ["person", "dog"],
              "per_prompt": {"person": {"matched_mask_iou": 0.9}, "dog": {"matched_mask_iou": 0.8}}}


def full_report(tmp_path):
    return write_report(
        tmp_path / "report", metrics=METRICS, base_metrics=BASE,
        curves={"precision": fake_precision(), "recall_thresholds": np.linspace(0, 1, 101),
                "iou_thresholds": np.linspace(0.5, 0.95, 10)},
        category_names=CATEGORIES, run_metrics_jsonl=write_metrics_jsonl(tmp_path / "m.jsonl"),
        examples=[make_example(i, tag=t) for i, t in enumerate(["best", "worst", "random"])],
        forgetting=FORGETTING, title="Test report")


def row(text, name):
    """The cells of the Markdown table row that starts with ``name``."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


# ---- figures ---------------------------------------------------------------------------

def test_loss_curves(tmp_path):
    width, height = assert_png(plot_loss_curves(write_metrics_jsonl(tmp_path / "m.jsonl"),
                                                tmp_path / "loss.png"))
    assert width > height


def test_loss_curves_without_data_is_none(tmp_path):
    assert plot_loss_curves(tmp_path / "missing.jsonl", tmp_path / "a.png") is None
    (tmp_path / "blank.jsonl").write_text('\n{"step": 3, "lo\n{"step": 5, "epoch": 1}\n')
    assert plot_loss_curves(tmp_path / "blank.jsonl", tmp_path / "b.png") is None
    assert not list(tmp_path.glob("*.png"))


def test_loss_curves_validation_only_and_resumed_steps(tmp_path):
    lines = [{"step": s, "val_loss": 10 / s} for s in (100, 200, 300)]
    lines += [{"step": 200, "loss": 1.0, "lr": 1e-4}, {"step": 200, "loss": 0.9, "lr": 1e-4}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert_png(plot_loss_curves(tmp_path / "m.jsonl", tmp_path / "loss.png"))


def test_pr_curves_mask_missing_data(tmp_path):
    assert_png(plot_pr_curves(fake_precision(), np.linspace(0, 1, 101), CATEGORIES,
                              tmp_path / "pr.png"))
    # Many categories (no per-category legend), fewer names than categories, all -1 at once.
    assert_png(plot_pr_curves(fake_precision(25), np.linspace(0, 1, 101), CATEGORIES,
                              tmp_path / "many.png"))
    assert_png(plot_pr_curves(fake_precision(3, empty=(0, 1, 2)), np.linspace(0, 1, 101), [],
                              tmp_path / "empty.png"))


def test_per_category_ap(tmp_path):
    per_category = {**METRICS["per_category"], "unseen": {"AP": None}}
    _, alone = assert_png(plot_per_category_ap(per_category, tmp_path / "a.png"))
    _, paired = assert_png(plot_per_category_ap(per_category, tmp_path / "b.png",
                                                compare=BASE["per_category"]))
    assert paired > alone   # two bars per category need more room


def test_examples_grid(tmp_path):
    examples = [make_example(i, boxes=i % 3 > 0) for i in range(4)]
    examples[1]["pred_masks"] = np.zeros((0, 300, 400), bool)   # nothing found
    examples[1]["pred_scores"] = np.zeros(0)
    examples[1]["pred_boxes"] = np.zeros((0, 4))
    examples[2]["gt_masks"] = np.zeros((0, 300, 400), bool)      # a negative prompt
    examples[3]["prompt"] = "a very long prompt " * 10
    examples[3]["unit_score"] = None
    width, height = assert_png(plot_examples(examples, tmp_path / "ex.png", max_side=128))
    assert width <= 2 * MIN_PANEL + 40 and height > 4 * 128   # panels at least MIN_PANEL wide: titles fit


def test_examples_grid_of_photos_stays_under_budget(tmp_path):
    """Noise is the worst case for PNG: the figure is quantised/shrunk to fit the budget."""
    rng = np.random.default_rng(0)
    examples = [dict(make_example(i, 480, 640), image=rng.integers(0, 256, (480, 640, 3),
                                                                   dtype=np.uint8))
                for i in range(9)]
    assert_png(plot_examples(examples, tmp_path / "ex.png"), budget=9 * EXAMPLE_ROW_BYTES)


def textured_photo(seed, height=480, width=640):
    """(H, W, 3) uint8 like a photo: colour gradients under pixel noise (PNG compresses it badly)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    smooth = np.stack([xx * 180 // width + 40, yy * 160 // height + 50, (xx + yy) * 100 // (height + width) + 80], -1)
    return np.clip(smooth + rng.normal(0, 18, (height, width, 3)), 0, 255).astype(np.uint8)


def small_objects(seed, n, side=10, height=480, width=640):
    """(n, H, W) masks of ``side``-px squares spread over the image, and their xyxy boxes."""
    rng = np.random.default_rng(seed)
    corners = [(rng.integers(20, width - 40), rng.integers(20, height - 40)) for _ in range(n)]
    masks = np.zeros((n, height, width), bool)
    for mask, (x, y) in zip(masks, corners):
        mask[y:y + side, x:x + side] = True
    return masks, np.array([[x, y, x + side, y + side] for x, y in corners], float)


def drawn_figure(monkeypatch, examples, tmp_path):
    """The examples figure plot_examples draws, and the PNG it writes."""
    drawn = {}
    save = report._save

    def keep(fig, out_png, **kwargs):
        drawn["figure"] = fig
        return save(fig, out_png, **kwargs)

    monkeypatch.setattr(report, "_save", keep)
    return drawn["figure"] if plot_examples(examples, tmp_path / "ex.png") else None, tmp_path / "ex.png"


def ground_truth_panels(fig):
    return [ax for ax in fig.axes if ax.get_title().startswith("ground truth")]


def outlines_inside(ax) -> list[Rectangle]:
    """The rectangles drawn on ``ax`` that lie inside its view, at least MIN_OUTLINE px a side."""
    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
    return [r for r in ax.patches if isinstance(r, Rectangle) and min(r.get_width(), r.get_height()) >= MIN_OUTLINE
            and x0 <= r.get_x() and r.get_x() + r.get_width() <= x1
            and y0 <= r.get_y() and r.get_y() + r.get_height() <= y1]


def test_examples_show_every_small_object_of_real_size_photos(tmp_path, monkeypatch):
    """Nine 640x480 photos with 10 px objects: each panel is shown at a readable size (the
    PNG was shrunk to 216 px wide, where the objects vanished) and every object is outlined."""
    examples = []
    for seed in range(9):
        gt, boxes = small_objects(seed, n=4)
        examples.append({"image": textured_photo(seed), "prompt": "screw", "tag": "best", "unit_score": 0.5,
                         "gt_masks": gt, "pred_masks": gt[:1], "pred_scores": np.array([0.9]),
                         "pred_boxes": boxes[:1]})
    fig, png = drawn_figure(monkeypatch, examples, tmp_path)
    panels = ground_truth_panels(fig)
    assert [ax.get_title().split(" (")[0] for ax in panels] == ["ground truth: 4"] * 9   # maybe "(cropped)"
    assert all(len(outlines_inside(ax)) == 4 for ax in panels)
    panel_px = [ax.get_position().width * fig.get_figwidth() * report.DPI for ax in panels]
    assert min(panel_px) >= 300, panel_px
    width, _ = assert_png(png, budget=9 * EXAMPLE_ROW_BYTES, max_side=10_000)
    assert width == round(fig.get_figwidth() * report.DPI)   # written as drawn, not shrunk


def test_examples_draw_box_only_ground_truth_and_zoom_on_small_objects(tmp_path, monkeypatch):
    """Box-only data used to show "ground truth: 0" and no box; objects close together are
    shown enlarged."""
    _, boxes = small_objects(0, n=3)
    near = np.array([[300, 200, 306, 206], [320, 210, 326, 216]], float)   # two 6 px objects
    examples = [{"image": textured_photo(0), "prompt": "screw", "tag": "best", "unit_score": 0.5,
                 "gt_boxes": gt_boxes, "pred_masks": np.zeros((0, 480, 640), bool), "pred_scores": np.zeros(0),
                 "pred_boxes": np.zeros((0, 4))} for gt_boxes in (boxes, near)]
    fig, _ = drawn_figure(monkeypatch, examples, tmp_path)
    spread, close = ground_truth_panels(fig)
    assert spread.get_title().startswith("ground truth: 3") and len(outlines_inside(spread)) == 3
    assert close.get_title().startswith("ground truth: 2 (zoomed 4.0x)") and len(outlines_inside(close)) == 2
    assert min(r.get_width() for r in close.patches) >= 4 * 6 - 1   # 6 px, enlarged 4 times


def test_examples_titles_keep_the_whole_prompt(tmp_path, monkeypatch):
    prompt = "the small brass hinge on the left-hand cupboard door, partly hidden by the handle"
    example = dict(make_example(1, 120, 90), prompt=prompt)   # a narrow image: the title wraps
    fig, _ = drawn_figure(monkeypatch, [example], tmp_path)
    title = " ".join(" ".join(text.get_text() for text in fig.texts).split())
    assert f'"{prompt}"' in title


# ---- report.md ---------------------------------------------------------------------------

def test_report_sections_and_links(tmp_path):
    text = full_report(tmp_path).read_text()
    for heading in ("# Test report", "## Summary", "## Per category", "## Forgetting",
                    "## Training", "## Precision-recall", "## AP per category", "## Examples"):
        assert f"\n{heading}\n" in f"\n{text}"
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["ap_per_category.png", "examples.png", "loss.png", "pr_curves.png"]
    for link in links:   # relative, beside report.md
        assert_png(tmp_path / "report" / link)


def test_report_base_vs_finetuned(tmp_path):
    text = full_report(tmp_path).read_text()
    assert "| Metric | Base | Fine-tuned | Δ |" in text
    assert row(text, "mAP") == ["mAP", "0.250", "0.412", "+0.162"]
    assert row(text, "val_loss") == ["val_loss", "—", "0.800", "n/a"]   # not reported by base
    assert row(text, "red circle")[-2:] == ["0.300", "+0.400"]
    assert row(text, "green square")[-1] == "+0.200"
    # Per-category rows are sorted by AP, best first.
    order = [text.index(f"| {name} |") for name in CATEGORIES]
    assert order == sorted(order)


def test_report_none_is_na_with_footnote(tmp_path):
    text = full_report(tmp_path).read_text()
    assert row(text, "cgF1") == ["cgF1", "n/a[^na]", "n/a[^na]", "n/a"]
    assert row(text, "IL_MCC")[2] == "n/a[^na]"
    footnotes = [line for line in text.splitlines() if line.startswith("[^na]:")]
    assert len(footnotes) == 1 and "negative prompts" in footnotes[0]
    defined = dict(METRICS, cgF1=0.3, cgF1_50=0.4, cgF1_75=0.2, IL_MCC=0.5, per_category={})
    text = write_report(tmp_path / "defined", metrics=defined).read_text()
    assert "[^na]" not in text and row(text, "cgF1") == ["cgF1", "0.300"]


def test_each_na_cell_points_at_its_own_reason(tmp_path):
    """mAP_large n/a used to be footnoted with the cgF1 reason (negative prompts)."""
    metrics = dict(METRICS, cgF1=0.3, cgF1_50=0.4, cgF1_75=0.2, IL_MCC=0.5, mAP_large=None,
                   presence_AUC=None,
                   per_category={"red circle": {"AP": None, "cgF1": 0.2}})
    text = write_report(tmp_path, metrics=metrics, notes=["Box metrics: no masks."]).read_text()
    assert row(text, "mAP_large") == ["mAP_large", "n/a[^na-size]"]
    assert row(text, "presence_AUC") == ["presence_AUC", "n/a[^na-other]"]
    assert row(text, "red circle")[1] == "n/a[^na-ap]"
    notes = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("[^")}
    assert set(notes) == {"[^na-size]", "[^na-other]", "[^na-ap]"}   # none unused, cgF1's gone
    assert "no (non-crowd) object in that range" in notes["[^na-size]"]
    assert "96² = 9,216 px" in notes["[^na-size]"] and "negative" not in notes["[^na-size]"]
    assert text.index("Box metrics: no masks.") < text.index("| Metric |")


def test_report_forgetting_table(tmp_path):
    text = full_report(tmp_path).read_text()
    assert row(text, "matched_mask_iou") == ["matched_mask_iou", "0.870"]
    assert row(text, "detection_change") == ["detection_change", "-0.120"]
    assert row(text, "retain_prompts") == ["retain_prompts", "person, dog"]
    assert row(text, "dog") == ["dog", "0.800"]


def test_report_without_optional_pieces(tmp_path):
    path = write_report(tmp_path / "r", metrics={}, run_metrics_jsonl=tmp_path / "missing.jsonl",
                        curves={"precision": None}, examples=[], forgetting={})
    text = path.read_text()
    assert "## Summary" in text and row(text, "mAP") == ["mAP", "—"]
    assert "## Training" not in text and "![" not in text
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["report.md"]


def test_report_survives_a_broken_figure(tmp_path):
    with pytest.warns(UserWarning, match="Precision-recall"):
        path = write_report(tmp_path / "r", metrics=METRICS, curves={"precision": np.zeros(3)})
    text = path.read_text()
    assert "figure not drawn" in text and "## Per category" in text
    assert (tmp_path / "r" / "ap_per_category.png").is_file()


# ---- select_examples ---------------------------------------------------------------------

def units(n, seed=1):
    scores = np.random.default_rng(seed).permutation(n) / n
    return [{"id": i, "unit_score": float(s)} for i, s in enumerate(scores)]


def test_select_examples_tags_and_order():
    pool = units(30)
    picked = select_examples(pool, k=3, seed=0)
    assert [u["tag"] for u in picked] == ["best"] * 3 + ["worst"] * 3 + ["random"] * 3
    ranked = sorted(pool, key=lambda u: -u["unit_score"])
    assert [u["id"] for u in picked[:3]] == [u["id"] for u in ranked[:3]]
    assert [u["id"] for u in picked[3:6]] == [u["id"] for u in ranked[::-1][:3]]
    assert len({u["id"] for u in picked}) == 9
    assert "tag" not in pool[0]   # copies; the caller's units are left alone


def test_select_examples_is_deterministic():
    pool = units(50)
    ids = [[u["id"] for u in select_examples(pool, k=4, seed=s)] for s in (7, 7, 8)]
    assert ids[0] == ids[1]
    assert ids[0][:8] == ids[2][:8] and ids[0][8:] != ids[2][8:]   # only the random ones move


def test_select_examples_small_pools_and_missing_scores():
    assert select_examples([], k=3) == []
    few = select_examples(units(4), k=3)
    assert [u["tag"] for u in few] == ["best"] * 3 + ["worst"]
    mixed = [{"id": 0, "unit_score": None}, {"id": 1, "unit_score": float("nan")},
             {"id": 2, "unit_score": 0.5}]
    picked = select_examples(mixed, k=1)
    assert [(u["id"], u["tag"]) for u in picked[:1]] == [(2, "best")]
    assert [u["tag"] for u in picked[1:]] == ["random"] and picked[1]["id"] in (0, 1)
