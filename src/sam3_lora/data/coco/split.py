"""Reading a Roboflow-style COCO split folder into a ``CocoSplit``, listing what is wrong.

A split folder holds its images and ``_annotations.coco.json`` (``file_name``s are relative
to the folder; subfolders are fine). ``load_coco_split`` never raises on bad content: every
problem becomes a ``Problem`` with a stable code. It raises ``DataError`` only when the
annotation file itself is unusable: missing, not UTF-8 JSON, truncated, or without the
top-level ``images`` and ``categories`` lists (``annotations`` may be absent: no objects).
``check_split`` is what training calls: it refuses a split with errors unless
``data.skip_invalid`` is set, in which case it logs every item it skips.

What is read, beyond plain COCO:

- ``segmentation``: polygons (one or several parts per object), RLE with compressed
  (``counts`` string) or uncompressed (``counts`` list) counts, or nothing (absent, null,
  ``[]``, ``[[]]``, ``{}``): a box-only object, ``segmentation=None``, trained without mask loss.
- An object with a mask but no ``bbox`` gets the mask's extent as its box. ``area`` is kept
  when given and sane, else computed (mask pixels, polygon area, or box area).
- ``iscrowd`` objects are kept, with ``iscrowd=True``. As in COCO, the dataset does not use
  them as targets (a crowd region is neither an instance to find nor background).
- Roboflow adds a category with id 0 that is the ``supercategory`` of the real ones and has
  no annotation (e.g. ``cracks`` above ``crack``). It is dropped from ``categories`` without
  a problem, so it is never prompted as an absent concept. Only then: an id-0 category with
  annotations, or that no category names as its supercategory, is an ordinary category.
- LVIS-style per-image ``neg_category_ids`` (verified absent) and
  ``not_exhaustive_category_ids`` (not all instances labelled).

Problems. An error means the item is unusable and is left out of ``images`` (an image is
left out with its annotations) or of its image's ``objects``; a warning means the item is
kept, repaired or with the bad field ignored, as the message says.

=======================  =======  ========================================================
code                     level    when
=======================  =======  ========================================================
missing_key              error    a required key is absent (ids, ``file_name``, category
                                  ``name``; an object with neither ``bbox`` nor mask)
                         warning  image ``width``/``height`` absent (the file's size is used)
wrong_type               error    a value of the wrong JSON type (id not an integer, name
                                  not a string, bbox not 4 numbers, entry not an object)
                         warning  an optional field (image size, LVIS lists), or a flat
                                  polygon list (read as one polygon)
bad_number               error    NaN, infinity, an id beyond 64 bits, a coordinate beyond
                                  1e6 px (``coco_fields.MAX_COORDINATE``)
                         warning  image size or ``area`` not a sane number (the file's size
                                  or the computed area is used)
bad_value                error    right type, impossible value (empty name, ``iscrowd`` 2)
duplicate_image_id       error    several images share an id: all of them are left out
duplicate_annotation_id  error    an annotation id seen before: the later one is left out
duplicate_category_id    error    several categories share an id: all are left out
duplicate_category_name  warning  two categories share a name up to case and spaces (so the
                                  same prompt: the text encoder lower-cases)
duplicate_file_name      warning  one file listed by several image entries
unsafe_path              error    ``file_name`` absolute or with ``..``: refused, never
                                  opened nor tested for existence
missing_image            error    no file at ``file_name``
unreadable_image         error    PIL cannot read the file (``Problem.file`` is the image)
image_too_large          error    over ``data.images.MAX_PIXELS`` (25 MP, the app's limit),
                                  read from the header: never decoded
image_size_mismatch      warning  JSON width/height differ from the file's (after EXIF)
unknown_image            error    an annotation's ``image_id`` is not in ``images``
unknown_category         error    an annotation's ``category_id`` is not in ``categories``
                         warning  an LVIS list names unknown categories (those ids ignored)
polygon_too_short        error    a polygon part has under 3 points and no part is usable
                         warning  the same, but other parts are usable: the part is dropped
bad_polygon              error    a polygon part has an odd count of numbers and no part is
                                  usable (warning, part dropped, when others are)
bad_rle                  error    RLE ``size`` not [h, w], or ``counts`` not decoding to h*w
rle_size_mismatch        error    RLE ``size`` differs from the image's [height, width]
zero_area_box            error    box width or height <= 0
box_outside_image        error    box entirely outside the image
                         warning  box more than 1 px outside: clipped (up to 1 px it is
                                  exporters' rounding, clipped without a problem)
empty_mask               error    mask with no pixel and no box
                         warning  mask with no pixel but a box: kept as a box-only object
mask_outside_image       error    a polygon wholly outside the image (its mask would be
                                  empty, whatever its box says)
box_mask_mismatch        error    a given box and the mask's extent (both clipped to the
                                  image) overlap by IoU < 0.5: they outline different
                                  things (e.g. a polygon at 1e6 px with a small box, or
                                  normalised 0..1 polygon coordinates)
bad_area                 warning  ``area`` 0, or more than the image's pixels: recomputed
negative_has_objects     warning  a ``neg_category_ids`` category has objects on the image
empty_split              error    no usable image is left in the file
=======================  =======  ========================================================

Images without objects are not problems: they are background images (validation lists them).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sam3_lora.data.coco.fields import Findings, Invalid, describe, get_id, get_text
from sam3_lora.data.coco.images import parse_images
from sam3_lora.data.coco.objects import Catalog, parse_object
from sam3_lora.data.records import CocoSplit, ImageRecord
from sam3_lora.errors import DataError
from sam3_lora.values import is_int

DEFAULT_ANNOTATION_FILE = "_annotations.coco.json"

logger = logging.getLogger(__name__)


def load_coco_split(split_dir: str | Path, annotation_file: str = DEFAULT_ANNOTATION_FILE,
                    name: str | None = None, *, full_decode: bool = True) -> CocoSplit:
    """Read ``split_dir/annotation_file`` and check it against the images beside it.

    ``name`` defaults to the folder's name. ``full_decode`` decodes every image completely,
    so that a file cut off after a valid header is an ``unreadable_image`` here, where
    ``data.skip_invalid`` can leave it out, and not an error at the first batch holding it.
    It costs one extra decode of the split (at 1008 px, ~9 ms of CPU a PNG, ~3 ms a JPEG:
    BENCHMARKS.md, "Data loading"); ``full_decode=False`` reads headers only.
    Raises ``DataError`` only for an unusable annotation file (see the module docstring).
    """
    root = Path(split_dir)
    annotation_path = root / annotation_file
    data = read_annotation_file(annotation_path)
    findings = Findings(str(annotation_path))
    annotations = data.get("annotations") or []  # absent or null: no objects
    categories, category_ids_in_file = parse_categories(data["categories"], findings)
    categories = drop_roboflow_supercategory(categories, data["categories"], annotations)
    _warn_duplicate_names(categories, findings)
    images, image_ids_in_file = parse_images(data["images"], root, set(categories), findings,
                                             full_decode)
    catalog = Catalog(images, image_ids_in_file, set(categories), category_ids_in_file)
    attach_objects(annotations, catalog, findings)
    for image in images.values():
        _drop_contradicted_negatives(image, findings)
    if not images:
        findings.about("split").error("empty_split", "no usable image is left; add images or "
                                      "fix the errors above")
    return CocoSplit(name=name or root.resolve().name, root=root, annotation_path=annotation_path,
                     categories=categories, images=list(images.values()),
                     problems=findings.problems)


def check_split(split: CocoSplit, skip_invalid: bool) -> CocoSplit:
    """The gate training passes: the split if usable, else a one-line ``DataError``.

    With errors and ``skip_invalid`` False, raises naming the count and the first one. With
    ``skip_invalid`` True, returns the split, whose bad items ``load_coco_split`` already
    left out; each skipped item is one of ``split.errors`` and is logged as a warning.
    A split with no usable image raises either way.
    """
    errors = split.errors
    if not split.images:   # skipping cannot help: nothing would be left
        raise DataError(f"no usable image in {split.annotation_path}; run `sam3-lora data "
                        f"validate {split.root}` to see why")
    if errors and not skip_invalid:
        plural = "s" if len(errors) > 1 else ""
        raise DataError(
            f"{len(errors)} error{plural} in {split.annotation_path} (first: "
            f"{errors[0].message}); run `sam3-lora data validate {split.root}` for the list, "
            "or set data.skip_invalid=true to skip them"
        )
    for problem in errors:
        logger.warning("skipped (data.skip_invalid=true): %s", problem)
    return split


def read_annotation_file(path: Path) -> dict[str, Any]:
    """The parsed JSON of a COCO annotation file, checked at the top level only."""
    if not os.path.isfile(path):
        raise DataError(f"annotation file not found: {path}; put the split's COCO export "
                        "there, or set data.annotation_file to your file's name")
    data = read_json(path, "the annotations")
    check_top_level(data, str(path))
    return data


def read_json(path: Path, what: str, empty: Any = ...) -> Any:
    """The parsed JSON of the file at ``path``: UTF-8 (a BOM ignored), complete, parseable.
    ``what`` (e.g. "the annotations") is what messages ask to re-export. A blank file gives
    ``empty`` when one is given, else is an error. Every failure is one ``DataError`` line."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}; check its permissions") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {error.start}); "
                        f"re-export {what} as JSON") from None
    if empty is not ... and not text.strip():
        return empty
    return _parse_json(text, path, what)


def _parse_json(text: str, path: Path, what: str) -> Any:
    if not text.strip():
        raise DataError(f"{path} is empty; re-export or re-download {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        # A cut-off download fails at the very end, or inside a string never closed.
        truncated = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated")
        raise DataError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno}){'; it looks truncated' if truncated else ''}; re-export or "
            f"re-download {what}") from None
    except (ValueError, RecursionError) as error:  # e.g. a 5000-digit number, deep nesting
        raise DataError(f"{path} cannot be read as JSON ({str(error)[:80]}); re-export "
                        f"{what}") from None


def check_top_level(data: Any, name: str) -> None:
    """``DataError`` unless ``data`` is a COCO ground-truth object: top-level ``images`` and
    ``categories`` lists, ``annotations`` a list or absent (no objects). ``name`` (the file)
    starts the message. What training reads and what ``evaluate`` scores against."""
    if isinstance(data, list):
        raise DataError(f"{name}: is a JSON list (COCO results?), not a COCO ground-truth file: "
                        "not a COCO object with 'images', 'annotations' and 'categories' lists; "
                        "give the dataset's annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{name}: holds a JSON {type(data).__name__}, not a COCO ground-truth "
                        "file with 'images', 'annotations' and 'categories'; is it the right "
                        "file?")
    for key in ("images", "categories", "annotations"):
        value = data.get(key)
        if key == "annotations" and value is None:
            continue
        if not isinstance(value, list):
            state = "is missing" if value is None else f"is {describe(value)}, not a list"
            raise DataError(f"{name}: not a COCO ground-truth file (needs top-level 'images' "
                            f"and 'categories' lists, 'annotations' a list or absent; '{key}' "
                            f"{state}); is it the right file?")


def parse_categories(entries: list, findings: Findings) -> tuple[dict[int, str], set[int]]:
    """``categories`` entries -> (usable id -> name in file order, every id the file lists)."""
    parsed: list[tuple[int, str | None]] = []
    for index, entry in enumerate(entries):
        say = findings.about(f"categories[{index}]")
        if not isinstance(entry, dict):
            say.error("wrong_type", f"is {describe(entry)}, not an object; remove it")
            continue
        category_id = get_id(entry, "id")
        if isinstance(category_id, Invalid):
            say.invalid(category_id, "give every category a unique integer id")
            continue
        name = get_text(entry, "name")
        if isinstance(name, Invalid):
            findings.about(f"category id {category_id}").invalid(
                name, "left out with its annotations; name the category (the name is its "
                "text prompt)")
        parsed.append((category_id, name if isinstance(name, str) else None))
    ids_in_file = {category_id for category_id, _ in parsed}
    return _unique_categories(parsed, findings), ids_in_file


def _unique_categories(parsed: list[tuple[int, str | None]], findings: Findings
                       ) -> dict[int, str]:
    """Leave out categories whose id repeats (which one an annotation means is unknown)."""
    counts: dict[int, int] = {}
    for category_id, _ in parsed:
        counts[category_id] = counts.get(category_id, 0) + 1
    categories: dict[int, str] = {}
    for category_id, name in parsed:
        if counts[category_id] > 1:
            continue
        if name is not None:
            categories[category_id] = name
    for category_id in sorted(i for i, count in counts.items() if count > 1):
        findings.about(f"category id {category_id}").error(
            "duplicate_category_id", f"{counts[category_id]} categories share this id; all are "
            "left out with their annotations; give each category its own id")
    return categories


def _warn_duplicate_names(categories: dict[int, str], findings: Findings) -> None:
    """Categories whose names are one prompt: the text encoder lower-cases and collapses
    spaces, so "Crack" and "crack " are the same text to the model."""
    ids_by_prompt: dict[str, list[int]] = {}
    for category_id, name in categories.items():
        ids_by_prompt.setdefault(" ".join(name.lower().split()), []).append(category_id)
    for ids in ids_by_prompt.values():
        if len(ids) < 2:
            continue
        names = [categories[i] for i in ids]
        if len(set(names)) == 1:
            where, same = f"category {names[0]!r}", "share this name"
        else:
            where, same = f"categories {describe(names)}", "differ only in case or spaces"
        findings.about(where).warning(
            "duplicate_category_name", f"ids {ids[:10]} {same}, so they get the same prompt "
            "and contradict each other on images holding both; merge them or rename one")


def drop_roboflow_supercategory(categories: dict[int, str], entries: list,
                                annotations: list) -> dict[int, str]:
    """``categories`` without Roboflow's id-0 parent category, when it is one (see docstring)."""
    if 0 not in categories:
        return categories
    has_annotations = any(isinstance(a, dict) and is_int(a.get("category_id"))
                          and a["category_id"] == 0 for a in annotations)
    is_parent = any(isinstance(entry, dict) and entry.get("id") != 0
                    and entry.get("supercategory") == categories[0] for entry in entries)
    if has_annotations or not is_parent:
        return categories
    return {category_id: name for category_id, name in categories.items() if category_id != 0}


def attach_objects(annotations: list, catalog: Catalog, findings: Findings) -> None:
    """Parse every annotation onto its image's ``objects``, in file order."""
    seen_ids: set[int] = set()
    for index, entry in enumerate(annotations):
        raw_id = entry.get("id") if isinstance(entry, dict) else None
        if is_int(raw_id) and raw_id in seen_ids:
            findings.about(f"annotation id {raw_id}", annotation_id=raw_id).error(
                "duplicate_annotation_id", f"annotations[{index}] reuses this id; left out "
                "(the first one is kept); give each annotation its own id")
            continue
        if is_int(raw_id):
            seen_ids.add(raw_id)
        parsed = parse_object(entry, index, catalog, findings)
        if parsed is not None:
            image_id, record = parsed
            catalog.images[image_id].objects.append(record)


def _drop_contradicted_negatives(image: ImageRecord, findings: Findings) -> None:
    """A category listed as verified absent but annotated on the image is not a negative."""
    present = {record.category_id for record in image.objects}
    contradicted = sorted(present.intersection(image.neg_category_ids))
    if contradicted:
        findings.about(f"image id {image.id} ({image.file_name})", image_id=image.id).warning(
            "negative_has_objects", f"neg_category_ids {contradicted} have objects on this "
            "image; they are not used as negatives here")
        image.neg_category_ids = [i for i in image.neg_category_ids if i not in present]
