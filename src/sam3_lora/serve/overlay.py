"""Draw SAM3 predictions over an image: mask fills and outlines, boxes, labels and a legend.

Pure PIL + numpy. ``results`` holds one dict per prompt, as post-processing produces them:
``{"prompt": str, "scores": (n,), "boxes": (n, 4) xyxy pixels, "masks": (n, H, W) bool | None}``.
Every prompt gets one colour (so instances of one concept read as one class), and masks are
blended with numpy per prompt, so hundreds of detections cost a few array operations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sam3_lora.files import replacing_file

# Tableau-10: well separated hues, readable under both white and black text.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
MASK_ALPHA = 0.45


def prompt_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of the ``index``-th prompt; the palette cycles past 10 prompts."""
    return PALETTE[index % len(PALETTE)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable default font of ``size`` px, or the fixed bitmap one without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (Rec. 601 luma)."""
    luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def _outline(masks: np.ndarray, width: int) -> np.ndarray:
    """(n, H, W) bool -> (H, W) bool: pixels of any mask within ``width`` px of its border.

    Outlines are per instance (not of the union) so touching objects stay separable.
    """
    inner = masks.copy()
    for _ in range(width):  # erode by one pixel with a 4-neighbourhood, ``width`` times
        shrunk = inner.copy()
        shrunk[:, 1:, :] &= inner[:, :-1, :]
        shrunk[:, :-1, :] &= inner[:, 1:, :]
        shrunk[:, :, 1:] &= inner[:, :, :-1]
        shrunk[:, :, :-1] &= inner[:, :, 1:]
        inner = shrunk
    return (masks & ~inner).any(axis=0)


def draw_masks(canvas: np.ndarray, masks: np.ndarray, color: tuple, line: int) -> None:
    """Tint ``canvas`` (H, W, 3) float in place where any of ``masks`` (n, H, W) is set."""
    masks = np.asarray(masks, dtype=bool)
    if masks.size == 0:
        return
    rgb = np.asarray(color, dtype=np.float32)
    union = masks.any(axis=0)
    canvas[union] = (1 - MASK_ALPHA) * canvas[union] + MASK_ALPHA * rgb
    canvas[_outline(masks, line)] = rgb


def _box_list(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """``result``'s boxes as (n, 4) float and scores as (n,) float, empty arrays allowed."""
    boxes = np.asarray(result.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(result.get("scores", np.zeros(len(boxes))), dtype=np.float64).reshape(-1)
    return boxes, scores


def _label(draw: ImageDraw.ImageDraw, box: np.ndarray, text: str, color: tuple, font,
           size: tuple[int, int]) -> None:
    """A filled tag with ``text`` at the box's top-left, always fully inside the image."""
    width, height = size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, box[0]), max(0, width - tag_w))
    # Above the box when there is room, otherwise just inside its top edge.
    y = box[1] - tag_h if box[1] - tag_h >= 0 else box[1]
    y = min(max(0.0, y), max(0, height - tag_h))
    draw.rectangle([x, y, x + tag_w - 1, y + tag_h - 1], fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def _legend_corner(boxes: list[np.ndarray], panel: tuple[int, int], size: tuple[int, int],
                   margin: int) -> tuple[int, int]:
    """Top-left of the corner (TR, TL, BR, BL order) whose panel covers the least box area."""
    (pw, ph), (width, height) = panel, size
    corners = [(width - pw - margin, margin), (margin, margin),
               (width - pw - margin, height - ph - margin), (margin, height - ph - margin)]
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))

    def covered(corner: tuple[int, int]) -> float:
        x0, y0 = corner
        ix = np.clip(np.minimum(all_boxes[:, 2], x0 + pw) - np.maximum(all_boxes[:, 0], x0), 0, None)
        iy = np.clip(np.minimum(all_boxes[:, 3], y0 + ph) - np.maximum(all_boxes[:, 1], y0), 0, None)
        return float((ix * iy).sum())

    x, y = min(corners, key=covered)  # min keeps the first on ties: top-right by default
    return max(0, x), max(0, y)


def _draw_legend(image: Image.Image, entries: list[tuple[str, tuple]], boxes: list[np.ndarray],
                 font, font_size: int) -> Image.Image:
    """Composite a semi-opaque dark panel listing ``entries`` (text, colour) in a free corner."""
    measure = ImageDraw.Draw(image)
    pad, swatch = font_size // 2, font_size
    line_h = font_size + pad // 2
    text_w = max(measure.textbbox((0, 0), t, font=font)[2] for t, _ in entries)
    panel = (2 * pad + swatch + pad + text_w, 2 * pad + line_h * len(entries) - pad // 2)
    x0, y0 = _legend_corner(boxes, panel, image.size, margin=pad)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle([x0, y0, x0 + panel[0], y0 + panel[1]], fill=(20, 20, 20, 190))
    for i, (text, color) in enumerate(entries):
        y = y0 + pad + i * line_h
        draw.rectangle([x0 + pad, y, x0 + pad + swatch - 1, y + swatch - 1], fill=(*color, 255))
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y + (swatch - (bottom - top)) // 2 - top  # centre the glyphs on the swatch
        draw.text((x0 + 2 * pad + swatch, ty), text, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def draw_overlay(image: Image.Image, results: list[dict], show_boxes: bool = True,
                 show_masks: bool = True) -> Image.Image:
    """A new RGB copy of ``image`` (W x H) with ``results`` drawn on it; the input is untouched.

    ``results``: one dict per prompt with "prompt" (str), "scores" (n,), "boxes" (n, 4) xyxy
    in pixels of ``image`` and "masks" (n, H, W) bool or None (then only boxes can be drawn).
    """
    rgb = image.convert("RGB")  # always a copy, also for RGB input
    width, height = rgb.size
    short = min(width, height)
    font_size = max(12, short // 40)
    font = _font(font_size)
    line = max(1, short // 300)  # box and outline width grows with resolution

    colors = [prompt_color(i) for i in range(len(results))]
    if show_masks:
        canvas = np.asarray(rgb, dtype=np.float32).copy()
        for result, color in zip(results, colors):
            if result.get("masks") is not None:
                draw_masks(canvas, result["masks"], color, line)
        rgb = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))

    parsed = [_box_list(r) for r in results]
    draw = ImageDraw.Draw(rgb)
    if show_boxes:
        for (boxes, _), color in zip(parsed, colors):
            for box in boxes:
                draw.rectangle(box.tolist(), outline=color, width=line + 1)
    # Labels after all boxes so no box line crosses a tag, and lowest score first so that
    # in crowded images the most confident detections' tags end up on top.
    tags = [(score, box, f"{r['prompt']} {score:.2f}", color)
            for r, (boxes, scores), color in zip(results, parsed, colors)
            for box, score in zip(boxes, scores)]
    for _, box, text, color in sorted(tags, key=lambda tag: tag[0]):
        _label(draw, box, text, color, font, (width, height))

    if not results:
        return rgb
    entries = [(f"{r['prompt']} ({len(b)})", c) for r, (b, _), c in zip(results, parsed, colors)]
    return _draw_legend(rgb, entries, [b for b, _ in parsed], font, font_size)


POSITIVE_COLOR, NEGATIVE_COLOR = (0, 200, 0), (230, 0, 0)   # clicks on the object / not on it


def draw_clicks(image: Image.Image, points, labels, box=None, mask: np.ndarray | None = None,
                color: tuple[int, int, int] = PALETTE[0]) -> Image.Image:
    """``image`` (RGB, drawn on in place, and returned) with one object's prompt where given:
    ``mask`` (H, W) bool tinted in ``color`` (for images that have no overlay yet), each click
    (``points`` (K, 2) x, y in pixels, ``labels`` (K,) 1 / 0) a green + for the object or a
    red - for not it, ``box`` (x1, y1, x2, y2) a white frame; outlined so they read on any
    colour, sized to the image."""
    if mask is not None:
        canvas = np.asarray(image, dtype=np.float32).copy()
        draw_masks(canvas, np.asarray(mask, dtype=bool)[None], color, max(1, min(image.size) // 300))
        image.paste(Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8)))
    draw = ImageDraw.Draw(image)
    arm = max(4, min(image.size) // 40)   # half a mark's width, in pixels
    line = max(2, arm // 3)
    if box is not None:
        draw.rectangle([float(v) for v in box], outline=(0, 0, 0), width=line + 2)
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=line)
    points = [] if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
    for (x, y), label in zip(points, [] if labels is None else labels, strict=True):
        strokes = [(x - arm, y, x + arm, y)] + ([(x, y - arm, x, y + arm)] if label else [])
        for stroke in strokes:
            draw.line(stroke, fill=(255, 255, 255), width=line + 2)
        for stroke in strokes:
            draw.line(stroke, fill=POSITIVE_COLOR if label else NEGATIVE_COLOR, width=line)
    return image


def save_overlay(image: Image.Image, results: list[dict], path: str | Path,
                 source: str | Path | None = None, **kwargs) -> Path:
    """Write ``draw_overlay(image, results, **kwargs)`` to ``path`` as PNG and return the path.

    ``source`` is the path ``image`` was read from; writing over it is refused, so a typo in
    an output path cannot destroy the input picture.
    """
    path = Path(path)
    if source is not None and (
        path.resolve() == Path(source).resolve()
        or (path.exists() and Path(source).exists() and path.samefile(source))
    ):
        raise ValueError(f"refusing to write the overlay over its source image {source}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(draw_overlay(image, results, **kwargs), path)


def write_png(image: Image.Image, path: str | Path) -> Path:
    """Save ``image`` as PNG at ``path`` with ``files.replacing_file``: a symlink placed at
    ``path`` is replaced, never written through, and a crash leaves no half-written PNG."""
    with replacing_file(path) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)
