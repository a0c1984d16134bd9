"""Tests for the prediction overlay: tinting, boxes, labels, legend, speed and input modes."""

import time

import numpy as np
import pytest
from PIL import Image

from sam3_lora.serve.overlay import draw_overlay, prompt_color, save_overlay

W, H = 320, 240


def grey(mode="RGB", size=(W, H)):
    """A uniform mid-grey image, so any drawn pixel stands out."""
    return Image.new("RGB", size, (128, 128, 128)).convert(mode)


def result(prompt, boxes, with_masks=True, size=(W, H)):
    """A result dict whose masks fill its (integer) boxes exactly."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    masks = np.zeros((len(boxes), size[1], size[0]), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int)):
        m[y0:y1, x0:x1] = True
    return {"prompt": prompt, "scores": np.linspace(0.9, 0.5, len(boxes)), "boxes": boxes,
            "masks": masks if with_masks else None}


def px(image, x, y):
    return np.asarray(image)[y, x].astype(int)


def test_size_mode_and_input_untouched():
    image = grey()
    before = np.asarray(image).copy()
    out = draw_overlay(image, [result("crack", [[100, 100, 200, 200]])])
    assert out.size == image.size and out.mode == "RGB" and out is not image
    np.testing.assert_array_equal(np.asarray(image), before)


def test_mask_tinted_towards_prompt_colour_and_outside_unchanged():
    out = draw_overlay(grey(), [result("crack", [[100, 100, 200, 200]])], show_boxes=False)
    inside, color = px(out, 150, 150), np.array(prompt_color(0))
    grey_px = np.array([128, 128, 128])
    assert np.abs(inside - color).sum() < np.abs(grey_px - color).sum()  # moved towards it
    np.testing.assert_allclose(inside, 0.55 * grey_px + 0.45 * color, atol=1)  # alpha 0.45
    # Far from the mask, its label (above the box) and the legend (a corner): untouched.
    np.testing.assert_array_equal(px(out, 150, 230), grey_px)
    np.testing.assert_array_equal(px(out, 250, 150), grey_px)


def test_boxes_drawn_in_colour_and_absent_without_show_boxes():
    res = [result("crack", [[100, 100, 200, 200]], with_masks=False)]
    with_boxes = draw_overlay(grey(), res)
    np.testing.assert_array_equal(px(with_boxes, 150, 200), prompt_color(0))  # bottom edge
    np.testing.assert_array_equal(px(with_boxes, 200, 150), prompt_color(0))  # right edge
    without = draw_overlay(grey(), res, show_boxes=False)
    np.testing.assert_array_equal(px(without, 150, 200), [128, 128, 128])


def test_masks_none_with_show_masks_draws_boxes_only():
    out = draw_overlay(grey(), [result("crack", [[100, 100, 200, 200]], with_masks=False)])
    np.testing.assert_array_equal(px(out, 150, 150), [128, 128, 128])


def test_two_prompts_get_different_colours():
    res = [result("crack", [[20, 60, 100, 140]]), result("dent", [[200, 60, 280, 140]])]
    out = draw_overlay(grey(), res, show_masks=False)
    assert prompt_color(0) != prompt_color(1)
    np.testing.assert_array_equal(px(out, 60, 140), prompt_color(0))
    np.testing.assert_array_equal(px(out, 240, 140), prompt_color(1))


def test_legend_lists_zero_detection_prompts_in_their_colour():
    res = [result("crack", [[100, 100, 200, 200]]), result("rust", [])]
    out = np.asarray(draw_overlay(grey(), res)).reshape(-1, 3)
    colours = {tuple(c) for c in out}
    assert prompt_color(1) in colours  # only the legend swatch can carry "rust"'s colour
    only_first = {tuple(c) for c in np.asarray(draw_overlay(grey(), res[:1])).reshape(-1, 3)}
    assert prompt_color(1) not in only_first


def test_legend_draws_dark_panel_even_with_zero_detections():
    out = draw_overlay(grey(), [result("crack", []), result("rust", [])])
    dark = (np.asarray(out).max(axis=2) < 60).sum()
    assert dark > 200  # the legend panel, somewhere in a corner


def test_no_results_returns_plain_copy():
    image = grey()
    np.testing.assert_array_equal(np.asarray(draw_overlay(image, [])), np.asarray(image))


def test_labels_stay_inside_image_at_borders():
    # Boxes touching every border must not raise and must keep labels on-canvas.
    res = [result("edge", [[0, 0, 30, 30], [290, 210, 320, 240], [0, 210, 30, 240]])]
    out = draw_overlay(grey(), res)
    assert out.size == (W, H)


def test_hundreds_of_detections_are_fast():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [600, 440], size=(300, 2))
    wh = rng.uniform(5, 80, size=(300, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [640, 480])], axis=1)
    size = (640, 480)
    res = [result(f"p{i}", boxes[i::3], size=size) for i in range(3)]
    image = grey(size=size)
    start = time.process_time()   # CPU time: another job on the machine must not fail this
    out = draw_overlay(image, res)
    assert time.process_time() - start < 1.0
    assert out.size == size


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_rgba_and_grayscale_inputs(mode):
    out = draw_overlay(grey(mode), [result("crack", [[100, 100, 200, 200]])])
    assert out.mode == "RGB" and out.size == (W, H)


def test_save_overlay_writes_png_and_refuses_source(tmp_path):
    source = tmp_path / "in.png"
    grey().save(source)
    out = save_overlay(grey(), [result("crack", [[10, 10, 50, 50]])], tmp_path / "o" / "x.png",
                       source=source)
    assert out.exists() and Image.open(out).format == "PNG"
    with pytest.raises(ValueError, match="source"):
        save_overlay(grey(), [], tmp_path / "." / "in.png", source=source)
    assert Image.open(source).size == (W, H)


def test_save_overlay_replaces_a_symlink_at_its_path(tmp_path):
    """A link planted at the output path is replaced by the PNG; its target is untouched."""
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    (tmp_path / "x.png").symlink_to(target)
    out = save_overlay(grey(), [result("crack", [[10, 10, 50, 50]])], tmp_path / "x.png")
    assert not out.is_symlink() and Image.open(out).format == "PNG"
    assert target.read_text() == "keep me"


def test_clicks_drawn_in_their_colours_over_the_tinted_mask():
    from sam3_lora.serve.overlay import NEGATIVE_COLOR, POSITIVE_COLOR, draw_clicks

    image = Image.new("RGB", (320, 240), (128, 128, 128))
    mask = np.zeros((240, 320), dtype=bool)
    mask[20:100, 160:300] = True
    out = np.asarray(draw_clicks(image.copy(), [[60, 180], [200, 60]], [0, 1], mask=mask)).astype(int)
    assert (np.asarray(image) == 128).all()   # the copy was drawn on
    assert tuple(out[180, 60]) == NEGATIVE_COLOR and tuple(out[60, 200]) == POSITIVE_COLOR
    # A positive click's mark has its upright arm, a negative one's only the bar.
    assert tuple(out[60 - 5, 200]) == POSITIVE_COLOR and tuple(out[180 - 5, 60]) == (128, 128, 128)
    assert tuple(out[30, 290]) != (128, 128, 128) and tuple(out[200, 290]) == (128, 128, 128)   # the mask
