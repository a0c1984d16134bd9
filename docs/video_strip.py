"""Draw docs/video_strip.png: one clip of `data synth --video`, its masks outlined, as a strip.

    python docs/video_strip.py [--frames 12] [--every 2] [--size 192] [--seed 10]

Writes one synthetic training clip (the command's defaults otherwise) to a temporary folder,
reads it back through the DAVIS-layout reader (``data.video.layout``) and draws every
``--every``-th frame with each annotated object's mask and its concept (``meta.json``), as
the README's video section shows it. The look-alike distractor is drawn but has no outline:
it is background in the masks.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam3_lora.data.video.layout import META_FILE, load_video_split
from sam3_lora.data.video.synth import synthesize_video
from sam3_lora.serve.overlay import draw_masks, prompt_color, write_png

ROOT = Path(__file__).resolve().parent.parent


def frame_panel(sequence, index: int, object_ids: list[int]) -> Image.Image:
    """Frame ``index`` with each object's mask tinted and outlined in its colour, and its number."""
    ids = sequence.mask(index)
    canvas = np.asarray(sequence.frame(index), dtype=np.float32).copy()
    for object_id in object_ids:
        draw_masks(canvas, (ids == object_id)[None], prompt_color(object_id - 1), 2)
    panel = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    ImageDraw.Draw(panel).text((4, panel.height - 14), f"frame {index}", fill=(255, 255, 255))
    return panel


def distinct_clip(folder: Path, frames: int, size: int, seed: int) -> int:
    """Write one 3-object clip into ``folder``, from ``seed`` on to the first seed whose three
    objects are three different concepts (a clearer picture); returns that seed."""
    for candidate in range(seed, seed + 100):
        clips = folder / f"seed{candidate}"
        synthesize_video(clips, sequences_per_split={"train": 1}, frames=frames, image_size=size,
                         objects_per_clip=(3, 3), seed=candidate)
        meta = json.loads((clips / "train" / META_FILE).read_text())
        (video,) = meta["videos"].values()
        if len({entry["category"] for entry in video["objects"].values()}) == 3:
            return candidate
    raise SystemExit(f"no clip with three concepts among seeds {seed}..{seed + 99}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "video_strip.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        seed = distinct_clip(Path(folder), args.frames, args.size, args.seed)
        train = Path(folder) / f"seed{seed}" / "train"
        sequence = load_video_split(train).sequences[0]
        video = json.loads((train / META_FILE).read_text())["videos"][sequence.name]
        object_ids = sorted(int(object_id) for object_id in video["objects"])
        panels = [frame_panel(sequence, index, object_ids) for index in range(0, args.frames, args.every)]
    width, height = panels[0].size
    strip = Image.new("RGB", (len(panels) * (width + 4) - 4, height + 18), (255, 255, 255))
    for column, panel in enumerate(panels):
        strip.paste(panel, (column * (width + 4), 0))
    draw = ImageDraw.Draw(strip)
    x = 4
    for object_id in object_ids:   # the caption in each object's colour
        text = f"{object_id}: {video['objects'][str(object_id)]['category']}   "
        draw.text((x, height + 3), text, fill=prompt_color(object_id - 1))
        x += int(draw.textlength(text)) + 6
    draw.text((x, height + 3), f"(seed {seed}; the look-alike of 1 is not annotated: no outline)", fill=(60, 60, 60))
    print(f"wrote {write_png(strip, args.out)}")


if __name__ == "__main__":
    main()
