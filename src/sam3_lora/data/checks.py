"""``sam3-lora data validate DIR``: check a dataset folder and print what is wrong in it.

DIR holds the splits ``train/`` (required), ``valid/`` and ``test/`` (optional), each with
its images and annotation file; DIR may also be one split folder itself (it holds the
annotation file). Every split is read with ``load_coco_split`` and every image decoded in
full, so the report lists everything training would trip on. Besides the per-split problem
codes (see ``data.coco.split``), the dataset level adds:

===========================  =======  ===================================================
code                         level    when
===========================  =======  ===================================================
missing_split                error    no ``train/`` folder (nor an annotation file in DIR)
missing_annotation_file      error    a split folder without its annotation file
unreadable_annotation_file   error    the annotation file is not COCO JSON (the reason
                                      ``load_coco_split`` gives)
ignored_folder               warning  a folder with an annotation file that is not
                                      train/valid/test (e.g. ``val/``): it is not read
category_mismatch            warning  a valid/test split has categories train does not
category_id_mismatch         error    a valid/test category whose id names another
                                      category in train, or whose name has another id
                                      there (one line per such category)
no_masks                     warning  objects, but not one mask in any split: training
                                      learns boxes only (no mask loss) and ``validate``
                                      scores boxes (bbox mAP), not masks
yolo_layout                  error    DIR holds YOLO labels and no COCO file: it must be
                                      converted first (``sam3-lora data convert yolo``)
===========================  =======  ===================================================

The exit code is 0 when there are no errors (warnings allowed), 1 otherwise.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from sam3_lora.data.coco.split import DEFAULT_ANNOTATION_FILE, load_coco_split
from sam3_lora.data.convert.yolo import NAME_FILES as YOLO_NAME_FILES
from sam3_lora.data.records import CocoSplit, HasProblems, Problem
from sam3_lora.data.scaffold import missing_train_fix
from sam3_lora.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")
UNSKIPPABLE = frozenset({"missing_split", "missing_annotation_file", "unreadable_annotation_file",
                         "yolo_layout", "empty_split", "category_id_mismatch"})
"""Error codes about a whole file or split: ``data.skip_invalid`` leaves out bad items, so
it cannot get training past these."""
_LISTED_BACKGROUND_IMAGES = 10
"""Background images are normal, so only this many of their names are printed."""


@dataclass
class SplitReport(HasProblems):
    """What one split holds, and what is wrong with it."""

    name: str
    annotation_path: Path
    num_images: int = 0
    num_objects: int = 0
    num_masks: int = 0
    """Objects with a mask (polygon or RLE); the others are box-only."""
    objects_per_category: dict[str, int] = field(default_factory=dict)
    """Category name -> objects (crowd regions included), every category listed, in file
    order; categories with no object show 0."""
    images_without_objects: list[str] = field(default_factory=list)
    """File names of usable images with no object (background images; not a problem)."""
    categories: dict[int, str] = field(default_factory=dict)
    """Category id -> name, the usable categories in file order."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def num_categories(self) -> int:
        return len(self.objects_per_category)



SplitT = TypeVar("SplitT", bound=HasProblems)


@dataclass
class DatasetReport(HasProblems, Generic[SplitT]):
    """Every split's report, plus problems of the dataset as a whole (COCO splits'
    ``SplitReport``, or video splits' ``video.checks.VideoSplitReport``)."""

    root: Path
    splits: list[SplitT] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def all_problems(self) -> list[Problem]:
        return self.problems + [p for split in self.splits for p in split.problems]

    @property
    def exit_code(self) -> int:
        """0: no errors (warnings allowed); 1: at least one error."""
        return 1 if self.errors else 0


def validate_dataset(root: str | Path, annotation_file: str = DEFAULT_ANNOTATION_FILE, *,
                     full_decode: bool = True) -> DatasetReport:
    """Check every split under ``root`` (see the module docstring).

    ``full_decode`` decodes every image completely (catches truncated files); turn it off
    for a quick pass that reads image headers only.
    """
    root = Path(root)
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "not found"
        raise DataError(f"dataset folder {state}: {root}; pass the folder holding train/ "
                        "(and optionally valid/, test/), or one split folder")
    report = DatasetReport(root)
    if _is_yolo_folder(root, annotation_file):
        target = root.parent / f"{root.name}-coco"
        report.problems.append(_dataset_problem(
            "error", "yolo_layout", str(root),
            f"{root} holds YOLO labels, not COCO files; convert it first: `sam3-lora data "
            f"convert yolo {root} {target}`, then validate {target}"))
        return report
    if os.path.isfile(root / annotation_file):
        report.splits.append(_split_report(root, root.name, annotation_file, full_decode))
        return report
    for name in SPLIT_NAMES:
        split_dir = root / name
        if split_dir.is_dir():
            report.splits.append(_split_report(split_dir, name, annotation_file, full_decode))
        elif name == "train":
            report.problems.append(_dataset_problem(
                "error", "missing_split", str(root / "train"),
                f"no train/ folder in {root}; {missing_train_fix(root, annotation_file)}"))
    report.problems.extend(_ignored_folders(root, annotation_file))
    report.problems.extend(_category_mismatches(report))
    report.problems.extend(_category_id_mismatches(report))
    report.problems.extend(_box_only(report))
    return report


def _is_yolo_folder(root: Path, annotation_file: str) -> bool:
    """No COCO file where one is looked for, but YOLO's: a class file (data.yaml,
    classes.txt...) or a ``labels/`` folder of .txt files, at the top or in a split folder."""
    if any(os.path.isfile(folder / annotation_file)
           for folder in (root, *(root / name for name in SPLIT_NAMES))):
        return False
    if any(os.path.isfile(root / name) for name in YOLO_NAME_FILES):
        return True
    label_folders = [root / "labels", *(child / "labels" for child in root.iterdir()
                                        if child.is_dir())]
    return any(folder.is_dir() and next(folder.rglob("*.txt"), None) is not None
               for folder in label_folders)


def _split_report(split_dir: Path, name: str, annotation_file: str,
                  full_decode: bool) -> SplitReport:
    annotation_path = split_dir / annotation_file
    report = SplitReport(name, annotation_path)
    if not os.path.isfile(annotation_path):
        report.problems.append(_dataset_problem(
            "error", "missing_annotation_file", str(annotation_path),
            f"{name}/ has no {annotation_file}; add the split's COCO file, delete the folder, "
            "or give its file name (annotation_file) if it is called otherwise"))
        return report
    try:
        split = load_coco_split(split_dir, annotation_file, name, full_decode=full_decode)
    except DataError as error:
        report.problems.append(_dataset_problem(
            "error", "unreadable_annotation_file", str(annotation_path), str(error)))
        return report
    _fill_counts(report, split)
    report.problems.extend(split.problems)
    return report


def _fill_counts(report: SplitReport, split: CocoSplit) -> None:
    per_category = Counter(o.category_id for image in split.images for o in image.objects)
    report.num_images = len(split.images)
    report.num_objects = sum(per_category.values())
    report.num_masks = sum(1 for image in split.images for o in image.objects
                           if o.segmentation is not None)
    report.objects_per_category = {name: per_category.get(category_id, 0)
                                   for category_id, name in split.categories.items()}
    report.images_without_objects = [image.file_name for image in split.images
                                     if not image.objects]
    report.categories = dict(split.categories)


def _ignored_folders(root: Path, annotation_file: str) -> list[Problem]:
    """Folders that look like splits but are not read (a ``val/`` instead of ``valid/``)."""
    problems = []
    for child in sorted(root.iterdir()):
        if child.name in SPLIT_NAMES or not os.path.isfile(child / annotation_file):
            continue
        problems.append(_dataset_problem(
            "warning", "ignored_folder", str(child),
            f"{child.name}/ holds {annotation_file} but only train/, valid/ and test/ are "
            "read; rename it if it is one of them"))
    return problems


def _dataset_problem(severity: str, code: str, file: str, message: str) -> Problem:
    return Problem(severity=severity, code=code, file=file, message=message)  # type: ignore[arg-type]


def _category_mismatches(report: DatasetReport) -> list[Problem]:
    """valid/test categories that train lacks: the model is never taught them."""
    by_name = {split.name: split for split in report.splits}
    train = by_name.get("train")
    if train is None or not train.objects_per_category:
        return []
    problems = []
    for split in report.splits:
        extra = [name for name in split.objects_per_category
                 if name not in train.objects_per_category]
        if split is not train and extra:
            problems.append(_dataset_problem(
                "warning", "category_mismatch", str(split.annotation_path),
                f"{split.name} has categories {extra} that train lacks; they are never "
                "trained, so their scores measure the base model only"))
    return problems


def _category_id_mismatches(report: DatasetReport) -> list[Problem]:
    """valid/test categories whose id means another category in train, or whose name has
    another id there: per-category scores and the ids predictions carry would compare
    different things. One problem per such category."""
    train = next((split for split in report.splits if split.name == "train"), None)
    if train is None:
        return []
    train_ids = {name: category_id for category_id, name in train.categories.items()}
    problems = []
    for split in report.splits:
        if split is train:
            continue
        for category_id, name in split.categories.items():
            clashes = []
            if category_id in train.categories and train.categories[category_id] != name:
                clashes.append(f"id {category_id} is {train.categories[category_id]!r}")
            if train_ids.get(name, category_id) != category_id:
                clashes.append(f"{name!r} is id {train_ids[name]}")
            if clashes:
                problems.append(_dataset_problem(
                    "error", "category_id_mismatch", str(split.annotation_path),
                    f"{split.name} category id {category_id} is {name!r}, but in train "
                    f"{' and '.join(clashes)}; give each category the same id and name in "
                    "every split"))
    return problems


def _box_only(report: DatasetReport) -> list[Problem]:
    """A dataset with objects but no mask at all: worth knowing before training on it."""
    if sum(s.num_masks for s in report.splits) or not sum(s.num_objects for s in report.splits):
        return []
    return [_dataset_problem(
        "warning", "no_masks", str(report.root),
        "no object has a mask (polygon or RLE), only boxes: training learns boxes without "
        "mask loss, so predicted masks stay untrained, and `sam3-lora validate` scores boxes "
        "(bbox mAP); add masks to train them")]


def format_report(report: DatasetReport) -> str:
    """The report as plain text: per split counts, then errors, then warnings."""
    lines = [f"Dataset {report.root}"]
    for problem in report.problems:
        lines.append(f"  {_problem_line(problem, report.root)}")
    for split in report.splits:
        lines.extend(_split_lines(split, report.root))
    lines.append(_summary_line(report))
    return "\n".join(lines)


def _split_lines(split: SplitReport, root: Path) -> list[str]:
    background = split.images_without_objects
    lines = ["", f"{split.name}: {_relative(split.annotation_path, root)}",
             f"  images: {split.num_images} ({len(background)} without objects)",
             f"  objects: {split.num_objects} in {split.num_categories} categories, "
             + f"{split.num_masks} with a mask"]
    lines += [f"    {name}: {count}" for name, count in split.objects_per_category.items()]
    if background:
        shown = ", ".join(background[:_LISTED_BACKGROUND_IMAGES])
        more = len(background) - _LISTED_BACKGROUND_IMAGES
        lines.append(f"  images without objects: {shown}" + (f" ... and {more} more"
                                                             if more > 0 else ""))
    for title, problems in (("errors", split.errors), ("warnings", split.warnings)):
        if problems:
            lines.append(f"  {title} ({len(problems)}):")
            lines += [f"    {_problem_line(problem, root)}" for problem in problems]
    return lines


def _problem_line(problem: Problem, root: Path) -> str:
    """One line: severity, code, the message (which names the id), and the file."""
    return (f"{problem.severity} {problem.code}: {problem.message}  "
            f"(in {_relative(problem.file, root)})")


def _relative(path: str | Path, root: Path) -> str:
    """``path`` relative to the dataset root when inside it (shorter lines), else as is."""
    try:
        relative = Path(path).relative_to(root)
    except ValueError:
        return str(path)
    return str(path) if relative == Path(".") else str(relative)


def _summary_line(report: DatasetReport) -> str:
    errors, warnings = len(report.errors), len(report.warnings)
    if errors and all(p.code in UNSKIPPABLE for p in report.errors):
        return (f"\nFAILED: {errors} error(s), {warnings} warning(s). Fix the errors (skipping "
                "invalid items cannot help: they concern whole files or splits).")
    if errors:
        return (f"\nFAILED: {errors} error(s), {warnings} warning(s). Fix the errors, or set "
                "data.skip_invalid=true to train without the items they name.")
    if warnings:
        return f"\nOK with {warnings} warning(s): training will use the data as described."
    return "\nOK: no problems found."
