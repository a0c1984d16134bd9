"""Loose COCO into the layout: ``convert_coco`` (one COCO file plus its image folder, as one
split or split by ratios) and ``split_coco`` (one split folder into train/valid/test)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from sam3_lora.data.convert.common import (
    PendingImage,
    read_image_size,
    read_json,
    split_by_ratios,
    write_layout,
)
from sam3_lora.data.scaffold import ANNOTATION_FILE, SPLITS, LayoutSummary, check_output_dir
from sam3_lora.errors import DataError


def convert_coco(annotation_file: str | Path, images_dir: str | Path, out_dir: str | Path, *,
                 split_ratios: tuple[float, float, float] | None = None, seed: int = 0,
                 split: str = "train", link: bool = True) -> LayoutSummary:
    """Place a loose COCO file and its images into the layout.

    Without ``split_ratios`` everything goes to ``split``; with them, images are shuffled with
    ``seed`` and cut into train/valid/test. Image and annotation ids, extra fields and
    ``info`` are kept. Each image is found at ``images_dir/file_name``, else by its base name
    in ``images_dir``. Category ids: an unused id 0 (Roboflow's dataset-name supercategory) is
    dropped; if id 0 is used, all ids shift by 1 so they start at 1.
    """
    check_output_dir(out_dir)
    if split_ratios is None and split not in SPLITS:
        raise DataError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    categories, ordered, info = _read_coco(Path(annotation_file), Path(images_dir))
    splits = {split: ordered} if split_ratios is None else split_by_ratios(
        ordered, split_ratios, seed)
    return write_layout(out_dir, splits, categories, link=link, info=info)


def split_coco(source: str | Path, out_dir: str | Path, *,
               ratios: tuple[float, float, float] | None = None, seed: int = 0,
               annotation_file: str = ANNOTATION_FILE, link: bool = True,
               keep_test: bool = False) -> LayoutSummary:
    """Split one COCO set into train/valid/test by ``ratios`` with ``seed`` (deterministic).

    ``source`` is a split folder holding ``annotation_file`` and its images, or a COCO file
    whose images sit in its own folder. Ids are kept. ``keep_test`` keeps the ``test/``
    beside that folder as it is (a test set must not change between runs): ``source`` is
    cut into train/valid only. ``ratios`` default to 0.8 0.1 0.1, or 0.9 0.1 0 with
    ``keep_test`` (whose test ratio must be 0).
    """
    ann_path = _split_annotation_file(Path(source), annotation_file)
    if ratios is None:
        ratios = (0.9, 0.1, 0.0) if keep_test else (0.8, 0.1, 0.1)
    test_ann = ann_path.parent.parent / "test" / annotation_file
    if keep_test and ratios[2] != 0:
        raise DataError(f"keep_test keeps test/ as it is, so the test ratio must be 0, e.g. "
                        f"{ratios[0]:g} {ratios[1] + ratios[2]:g} 0", option="split_ratios")
    if keep_test and not test_ann.is_file():
        raise DataError(f"no test/ beside {ann_path.parent} to keep ({test_ann} not found); "
                        "leave keep_test out to cut a test split from the source")
    check_output_dir(out_dir)
    categories, ordered, info = _read_coco(ann_path, ann_path.parent)
    splits = split_by_ratios(ordered, ratios, seed)
    if keep_test:
        test_categories, splits["test"], _ = _read_coco(test_ann, test_ann.parent)
        if test_categories != categories:
            raise DataError(f"{test_ann}: its categories differ from {ann_path}'s; give both "
                            "splits the same categories (ids and names) to keep test/")
    return write_layout(out_dir, splits, categories, link=link, info=info)


def _split_annotation_file(path: Path, annotation_file: str) -> Path:
    """The COCO file of a split folder, or ``path`` itself when it is the file."""
    ann_path = path if path.is_file() else path / annotation_file
    if not ann_path.is_file():
        raise DataError(
            f"{path}: no {annotation_file} here; give one split folder (e.g. {path}/train) "
            "or the annotation file itself"
        )
    return ann_path


def _read_coco(ann_path: Path, root: Path) -> tuple[list[dict], list[PendingImage], dict | None]:
    """(categories, images in id order with their annotations, ``info``) of one COCO file
    whose images are in ``root``."""
    document = read_json(ann_path)
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DataError(f"{ann_path}: no 'images' list; is this a COCO annotation file?")
    categories, shift = _coco_categories(document, ann_path)
    images = _coco_images(document["images"], ann_path, root)
    _attach_coco_annotations(document.get("annotations", []), images, shift, ann_path)
    return categories, [images[key] for key in sorted(images)], document.get("info")


def _coco_categories(document: dict, ann_path: Path) -> tuple[list[dict], int]:
    categories = [dict(c) for c in document.get("categories", []) if isinstance(c, dict)]
    used = {a.get("category_id") for a in document.get("annotations", []) if isinstance(a, dict)}
    if any(c.get("id") == 0 for c in categories):
        if 0 not in used:
            return [c for c in categories if c.get("id") != 0], 0
        for category in categories:
            category["id"] += 1
        return categories, 1
    return categories, 0


def _coco_images(entries: list, ann_path: Path, root: Path) -> dict[int, PendingImage]:
    images: dict[int, PendingImage] = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DataError(f"{ann_path}: images[{position}] needs 'id' and 'file_name'; add them")
        if entry["id"] in images:
            raise DataError(f"{ann_path}: image id {entry['id']} appears twice; make ids unique")
        source, name = _find_coco_image(str(entry["file_name"]), root, ann_path)
        if entry.get("width") and entry.get("height"):
            width, height = int(entry["width"]), int(entry["height"])
        else:
            width, height = read_image_size(source)
        extra = {k: v for k, v in entry.items() if k not in ("id", "file_name", "width", "height")}
        images[entry["id"]] = PendingImage(source, name, width, height, [], entry["id"], extra)
    return images


def _find_coco_image(file_name: str, root: Path, ann_path: Path) -> tuple[Path, str]:
    """The image file and its output name: the given relative path when it stays inside the
    split folder, else the base name (absolute paths, '..' parts, backslashes from Windows)."""
    relative = PurePosixPath(file_name.replace("\\", "/"))
    inside = not relative.is_absolute() and ".." not in relative.parts
    if inside and (root / relative).is_file():
        return root / relative, str(relative)
    if (root / relative.name).is_file():
        return root / relative.name, relative.name
    raise DataError(
        f"{ann_path}: image {file_name!r} not found in {root}; pass the folder holding the "
        "images, or fix file_name"
    )


def _attach_coco_annotations(entries: list, images: dict[int, PendingImage], shift: int,
                             ann_path: Path) -> None:
    for position, entry in enumerate(entries):
        image = images.get(entry.get("image_id")) if isinstance(entry, dict) else None
        if image is None:
            raise DataError(
                f"{ann_path}: annotations[{position}] refers to image_id "
                f"{entry.get('image_id') if isinstance(entry, dict) else None!r}, which is not in"
                " 'images'; fix the id or delete the annotation"
            )
        annotation = dict(entry)
        if shift and isinstance(annotation.get("category_id"), int):
            annotation["category_id"] += shift
        image.annotations.append(annotation)
