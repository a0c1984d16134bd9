"""YOLO (Ultralytics / Roboflow) detection and segmentation labels -> COCO layout.

Accepted folder layouts (``SRC`` is the folder given):

- Ultralytics: ``SRC/images/<split>/`` and ``SRC/labels/<split>/``
- Roboflow export: ``SRC/<split>/images/`` and ``SRC/<split>/labels/``
- one set: ``SRC/images/`` and ``SRC/labels/``, or images and ``.txt`` files side by side
  in ``SRC`` (goes to ``train``, or is split by ratios)

Split folders are named ``train*``, ``val*`` (-> ``valid``) or ``test*`` (``val2017`` too). The label of
``images/<split>/a/b.jpg`` is ``labels/<split>/a/b.txt``; an image without a label file is
a negative (no objects). One object per line, values separated by spaces:

- ``class cx cy w h``: a box, centre and size normalised by the image width/height (0..1);
  it becomes a box-only object (``segmentation`` []).
- ``class x1 y1 x2 y2 x3 y3 ...``: a polygon (at least 3 points) normalised the same way.

``class`` is a 0-based index into the class names, read from ``data.yaml`` (``names`` as a
list, or a dict index -> name) or from a class-list file with one name per line
(``classes.txt``, ``obj.names``); category id = class index + 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from sam3_lora.data.convert.common import (
    PendingImage,
    box_annotation,
    list_images,
    polygon_annotation,
    read_image_size,
    read_text,
    split_by_ratios,
    write_layout,
)
from sam3_lora.data.images import IMAGE_SUFFIXES
from sam3_lora.data.scaffold import LayoutSummary, category_list, check_output_dir
from sam3_lora.errors import DataError

_SPLIT_PREFIXES = (("train", "train"), ("val", "valid"), ("test", "test"))
NAME_FILES = ("data.yaml", "data.yml", "dataset.yaml", "classes.txt", "obj.names")
_CLASS_LIST = "classes.txt"  # LabelImg writes it among the labels; it is not a label file
_OUT_OF_RANGE_SLACK = 0.01  # tolerated overshoot of normalised coordinates, then clipped


def convert_yolo(source: str | Path, out_dir: str | Path, *, names: str | Path | None = None,
                 split_ratios: tuple[float, float, float] | None = None, seed: int = 0,
                 link: bool = True) -> LayoutSummary:
    """Convert a YOLO dataset at ``source`` into the COCO layout at ``out_dir``.

    ``names`` is the data.yaml or class-list file; by default the first of
    ``data.yaml``, ``data.yml``, ``dataset.yaml``, ``classes.txt``, ``obj.names`` in
    ``source`` (or in its ``labels/`` folder). With ``split_ratios`` every image is pooled
    and re-split by ratios with ``seed``.
    """
    check_output_dir(out_dir)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the YOLO dataset folder")
    names_file = Path(names) if names is not None else _find_names_file(root)
    class_names = read_class_names(names_file)
    splits: dict[str, list[PendingImage]] = {}
    for split, (images_dir, labels_dir) in find_yolo_splits(root).items():
        splits[split] = _read_split(images_dir, labels_dir, class_names, names_file)
    if split_ratios is not None:
        pooled = [image for images in splits.values() for image in images]
        splits = split_by_ratios(pooled, split_ratios, seed)
    info = {"description": f"converted by sam3-lora from YOLO labels in {root}"}
    return write_layout(out_dir, splits, category_list(class_names), link=link, info=info)


def _find_names_file(root: Path) -> Path:
    for folder in (root, root / "labels"):
        for name in NAME_FILES:
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"{root}: no class names found (data.yaml, classes.txt, obj.names); give the file listing them",
        option="names",
    )


def read_class_names(path: Path) -> list[str]:
    """Class names by index from a data.yaml (``names`` list or dict) or a one-per-line file."""
    if not path.is_file():
        raise DataError(f"{path}: class names file not found; check its path", option="names")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _names_from_yaml(path)
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{number}: empty class name; write one name per line")
    if not lines:
        raise DataError(f"{path}: no class names; write one name per line")
    return [line.strip() for line in lines]


def _names_from_yaml(path: Path) -> list[str]:
    try:
        document = yaml.safe_load(read_text(path))
    except yaml.YAMLError:
        raise DataError(f"{path}: not valid YAML; fix the syntax") from None
    names = document.get("names") if isinstance(document, dict) else None
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    if isinstance(names, dict) and names:
        try:
            by_index = {int(index): str(name) for index, name in names.items()}
        except (TypeError, ValueError):
            by_index = {}
        if sorted(by_index) == list(range(len(by_index))):
            return [by_index[i] for i in range(len(by_index))]
    raise DataError(
        f"{path}: field 'names' must list the class names, e.g. names: [cat, dog] or "
        "names: {0: cat, 1: dog} with indices 0..N-1"
    )


def find_yolo_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """Output split name -> (images folder, labels folder), for the layouts in the docstring."""
    found: dict[str, tuple[Path, Path]] = {}
    candidates = []
    if (root / "images").is_dir() and not _has_images(root / "images"):
        candidates += [(d.name, d, root / "labels" / d.name)
                       for d in sorted((root / "images").iterdir()) if d.is_dir()]
    candidates += [(d.name, d / "images", d / "labels") for d in sorted(root.iterdir())
                   if (d / "images").is_dir()]
    for name, images_dir, labels_dir in candidates:
        split = next((s for p, s in _SPLIT_PREFIXES if name.lower().startswith(p)), None)
        if split is None:
            raise DataError(
                f"{images_dir}: unknown split folder {name!r}; rename it to train, val or test"
            )
        if split in found:
            raise DataError(f"{images_dir}: a second '{split}' split; keep only one of them")
        found[split] = (images_dir, labels_dir)
    if found:
        return found
    if (root / "images").is_dir():
        return {"train": (root / "images", root / "labels")}
    if _has_images(root):
        return {"train": (root, root)}
    raise DataError(
        f"{root}: no YOLO images found; expected images/train + labels/train (Ultralytics), "
        "train/images + train/labels (Roboflow), or images/ + labels/"
    )


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def _read_split(images_dir: Path, labels_dir: Path, class_names: list[str],
                names_file: Path) -> list[PendingImage]:
    images = []
    label_files = set()
    for path in list_images(images_dir):
        relative = path.relative_to(images_dir)
        label = (labels_dir / relative).with_suffix(".txt")
        width, height = read_image_size(path)
        annotations = []
        if label.is_file():
            label_files.add(label)
            annotations = parse_label_file(label, width, height, class_names, names_file)
        images.append(PendingImage(path, relative.as_posix(), width, height, annotations))
    _check_orphan_labels(labels_dir, label_files, images_dir)
    return images


def _check_orphan_labels(labels_dir: Path, used: set[Path], images_dir: Path) -> None:
    """A label file with no image means a missing or misnamed image: refuse to drop it."""
    if not labels_dir.is_dir():
        return
    for label in sorted(labels_dir.rglob("*.txt")):
        if label not in used and label.name != _CLASS_LIST:
            stem = label.relative_to(labels_dir).with_suffix("")
            raise DataError(
                f"{label}: no image {stem}.* in {images_dir}; add the image or delete the label"
            )


def parse_label_file(path: Path, width: int, height: int, class_names: list[str],
                     names_file: Path) -> list[dict]:
    """COCO annotations (pixels) from one YOLO label file; errors name ``path:line``."""
    annotations = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{number}"
        values = [_number(token, where) for token in tokens]
        category_id = _class_index(values[0], where, class_names, names_file) + 1
        coords = values[1:]
        _check_normalised(coords, where)
        coords = [min(max(v, 0.0), 1.0) for v in coords]
        if len(coords) == 4:
            cx, cy, w, h = coords
            box = ((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height)
            annotations.append(box_annotation(*box, category_id, width, height))
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            pixels = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
            annotations.append(polygon_annotation([pixels], category_id, width, height))
        else:
            raise DataError(
                f"{where}: {len(coords)} coordinates after the class; write 4 (box: cx cy w h)"
                " or an even number >= 6 (polygon: x1 y1 x2 y2 x3 y3 ...)"
            )
    return annotations


def _number(token: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(
            f"{where}: value {token!r} is not a number; each line is 'class cx cy w h' or "
            "'class x1 y1 x2 y2 ...' with numbers only"
        )
    return value


def _class_index(value: float, where: str, class_names: list[str], names_file: Path) -> int:
    count = len(class_names)
    if not value.is_integer() or not 0 <= value < count:
        raise DataError(
            f"{where}: class index {value:g} out of range: {names_file} names {count} classes "
            f"(0..{count - 1}); fix the index or the class names file"
        )
    return int(value)


def _check_normalised(coords: list[float], where: str) -> None:
    for value in coords:
        if not -_OUT_OF_RANGE_SLACK <= value <= 1 + _OUT_OF_RANGE_SLACK:
            raise DataError(
                f"{where}: coordinate {value:g} is outside 0..1; YOLO values are normalised, "
                "divide x and widths by the image width and y and heights by its height"
            )
