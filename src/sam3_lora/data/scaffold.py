"""The dataset layout every command reads, and the small writers that produce it.

Layout (Roboflow's)::

    DIR/
      train/  image files + _annotations.coco.json
      valid/  image files + _annotations.coco.json   (optional)
      test/   image files + _annotations.coco.json   (optional)

``create_layout`` writes an empty, valid skeleton with a README; the converters and the
synthetic generator share ``prepare_output_dir``, ``write_annotation_file`` and
``LayoutSummary`` so that every writer refuses the same folders and reports the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3_lora.errors import DataError
from sam3_lora.files import write_file

SPLITS = ("train", "valid", "test")
ANNOTATION_FILE = "_annotations.coco.json"


def check_output_dir(path: str | Path) -> Path:
    """Refuse a file or a non-empty folder as output; call it before reading any input.

    Writers never merge into existing data: a half-overwritten dataset is worse than an error.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file, not a folder; choose an empty or new output folder")
    if out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty; choose an empty or new output folder")
    return out


def prepare_output_dir(path: str | Path) -> Path:
    """``check_output_dir``, then create the folder (and its parents) if missing."""
    out = check_output_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_annotation_file(
    path: str | Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    info: dict[str, Any] | None = None,
) -> None:
    """Write one COCO file. Key order and formatting are fixed so equal data gives equal bytes."""
    document = {
        "info": info or {"description": "written by sam3-lora"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    write_file(path, json.dumps(document, separators=(",", ":")) + "\n")


def missing_train_fix(root: Path, annotation_file: str = ANNOTATION_FILE) -> str:
    """How to fix a dataset folder ``root`` without ``train/``: put the split there, or cut
    one COCO folder into train/valid/test (named when ``root`` holds exactly one)."""
    folders = sorted(child for child in Path(root).iterdir()
                     if (child / annotation_file).is_file()) if Path(root).is_dir() else []
    source = str(folders[0]) if len(folders) == 1 else "ONE_COCO_FOLDER"
    return (f"put the training split there (images + {annotation_file}), or cut one COCO "
            f"folder into train/valid/test: `sam3-lora data convert split {source} {root}-split`")


def category_list(names: list[str]) -> list[dict[str, Any]]:
    """COCO categories for ``names`` with ids 1..N in the given order."""
    return [{"id": i, "name": name, "supercategory": "none"} for i, name in enumerate(names, 1)]


@dataclass
class LayoutSummary:
    """What a writer produced: per-split image and object counts, plus notes for the user."""

    out_dir: Path
    num_categories: int
    images: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Things skipped on purpose (e.g. unlabelled images), one short phrase each."""

    def add_split(self, split: str, num_images: int, num_objects: int) -> None:
        self.images[split] = num_images
        self.objects[split] = num_objects

    def __str__(self) -> str:
        parts = [f"{s} {self.images[s]} images/{self.objects[s]} objects" for s in self.images]
        line = f"wrote {self.out_dir}: {', '.join(parts) or 'no splits'}"
        line += f"; {self.num_categories} categories"
        if self.notes:
            line += f" ({'; '.join(self.notes)})"
        return line


def create_layout(path: str | Path) -> LayoutSummary:
    """Write empty ``train/``, ``valid/``, ``test/`` (each with an empty COCO file) and a README.

    Refuses a non-empty folder or a file (``DataError``).
    """
    out = prepare_output_dir(path)
    summary = LayoutSummary(out, num_categories=0)
    for split in SPLITS:
        (out / split).mkdir()
        info = {"description": f"{split} split; add images here and list them below"}
        write_annotation_file(out / split / ANNOTATION_FILE, [], [], [], info)
        summary.add_split(split, 0, 0)
    write_file(out / "README.md", README.format(dir=out))
    return summary


README = """\
# Dataset for sam3-lora

```
{dir}/
  train/   your training images + _annotations.coco.json   (required)
  valid/   images + _annotations.coco.json used to pick the best adapter (optional)
  test/    images + _annotations.coco.json for the final score (optional)
```

Each `_annotations.coco.json` is a COCO file naming the images of its own folder:

```json
{{
  "images": [{{"id": 1, "file_name": "img001.jpg", "width": 640, "height": 480}}],
  "annotations": [{{
    "id": 1, "image_id": 1, "category_id": 1,
    "bbox": [10, 20, 100, 50],
    "area": 4100,
    "segmentation": [[10, 20, 110, 20, 110, 70, 10, 70]],
    "iscrowd": 0
  }}],
  "categories": [{{"id": 1, "name": "crack", "supercategory": "none"}}]
}}
```

- `images`: `id` (unique integer), `file_name` (path relative to the split folder),
  `width` and `height` in pixels.
- `annotations`: one per object. `bbox` is `[x, y, width, height]` in pixels from the
  top-left corner; `segmentation` is a list of polygons (`[x1, y1, x2, y2, ...]` in pixels)
  or an RLE dict (`{{"counts": ..., "size": [height, width]}}`); leave it `[]` for a box-only
  object (no mask loss for it). `area` is the mask area in pixels; `iscrowd` is 0 or 1.
- `categories`: ids from 1. The category `name` is the text prompt (change prompts in the
  config's `data.prompts` without renaming categories).
- An image with no annotations is a negative example: every category is absent from it.

Next steps, once the images and their annotations are in (until then `validate` reports
each split as empty):

```
sam3-lora data validate {dir}
sam3-lora train --config demo data.root={dir}
```

Already have labels in another format? Convert them into a new folder instead:

```
sam3-lora data convert yolo SRC OUT           # Ultralytics / Roboflow YOLO (boxes or polygons)
sam3-lora data convert labelme SRC OUT        # one LabelMe JSON beside each image
sam3-lora data convert coco ANN.json IMAGES OUT --split-ratios 0.8 0.1 0.1
```
"""
