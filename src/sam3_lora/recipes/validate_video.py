"""``validate`` for ``model.task: video``: the video tracker scored by DAVIS's semi-supervised protocol.

Every object of each sequence of the split (a DAVIS / YouTube-VOS folder, ``data.video.layout``)
is prompted with its ground-truth mask on the first frame it appears on and tracked forward to
the end of the sequence (``model.video.track_from_masks``; objects appearing on the same
frame share one session, as SAM 2's ``vos_inference`` prompts them; an object appearing later
gets its own, so no tracker sees a mask before its frame). Where objects overlap, each pixel
goes to the object of the highest logit (DAVIS scores index masks). Before its first frame an
object is predicted absent, as DAVIS's results have it, and those frames are scored against its
empty ground truth (1 when both are empty). The annotated frames are scored
(``evaluation.video``: J per frame the IoU, F the boundary F-measure), without the first and
the last (DAVIS's semi-supervised evaluation), at the frames' own resolution. metrics.json
holds::

    J&F, J, F                       the means over all objects (J&F = (J + F) / 2)
    J_recall, F_recall              fraction of frames scoring above 0.5, averaged
    J_decay, F_decay                mean of the first quarter of the frames minus the last's
    objects, sequences              how many were scored
    per_sequence, per_category      the same measures per sequence and per meta.json category
    per_object                      per "SEQUENCE_ID": the same, with its category
    base                            the same for the base model (``compare_base``, an adapter)
    split, weights

and report.md: the table (base beside fine-tuned) and J&F per sequence. A sequence with fewer
than three annotated frames has nothing left to score and is left out, counted in a warning.
The output folder is replaced whole (never mixed with an earlier run's results); one holding
anything but a validation's results is refused.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sam3_lora.config import Config
from sam3_lora.data.masks import masks_to_input
from sam3_lora.data.transforms import Geometry
from sam3_lora.data.video.layout import VideoSequence, read_meta
from sam3_lora.errors import DataError, Sam3LoraError, Sam3LoraWarning
from sam3_lora.evaluation.report import VIDEO_SUMMARY_KEYS, write_report
from sam3_lora.evaluation.video import (
    evaluate_sequence,
    exclusive_masks,
    summarize_by_group,
    video_metrics,
)
from sam3_lora.files import atomic_folder, write_file
from sam3_lora.lora.weights import adapter_disabled, has_adapter, load_finetuned
from sam3_lora.model.video import track_from_masks
from sam3_lora.serve.video import FrameFeed
from sam3_lora.training.tasks import read_clip_split

MIN_FRAMES = 3
"""Annotated frames a sequence needs: DAVIS leaves out the first and the last."""
RESULT_FILES = ("metrics.json", "report.md", "predictions.json", "base_predictions.json")
"""What ``validate`` writes (with its report's .png figures): an output folder holding only
these is an earlier validation's, which may be replaced."""

Tracker = Callable[[VideoSequence], np.ndarray]
"""sequence -> (O, T, H, W) bool: its objects' masks (ids ascending, ``sequence.objects``) on
every frame."""


def validate_video(config: Config, folder: Path, out_dir: Path, *, weights: str | Path | None = None,
                   num_samples: int | None = None, no_lora: bool = False, compare_base: bool = False,
                   task: str | None = None) -> dict:
    """Score the video tracker on the split in ``folder`` (its first ``num_samples``
    sequences), and the base model beside it with ``compare_base`` when an adapter is on;
    replaces ``out_dir`` with metrics.json and report.md and returns metrics.json's content
    plus "output"."""
    check_replaceable(out_dir)
    sequences = scored_sequences(folder, config.data.skip_invalid, num_samples)
    categories = read_meta(folder) or {}
    model, processor, chosen = load_finetuned(config, weights, no_lora, task=task)
    track = tracker(model, processor)
    metrics = score_sequences(sequences, track, categories)
    base = None
    if compare_base and has_adapter(model):
        with adapter_disabled(model):
            base = score_sequences(sequences, track, categories)
    summary = {**metrics, **({"base": base} if base else {}), "split": folder.name,
               "weights": str(chosen or "base model")}
    write_results(out_dir, summary, base)
    return {**summary, "output": str(out_dir)}


def scored_sequences(folder: Path, skip_invalid: bool, num_samples: int | None) -> list[VideoSequence]:
    """The first ``num_samples`` sequences of the split in ``folder`` with enough annotated
    frames to score (``MIN_FRAMES``; the others counted in a warning); the split read through
    training's gate (``read_clip_split``, ``data.skip_invalid``), so a split training refuses
    is refused here in one line."""
    sequences = read_clip_split(folder, folder.name, skip_invalid).sequences[:num_samples or None]
    kept = [s for s in sequences if len(s.annotated_frames) >= MIN_FRAMES]
    if not kept:
        raise DataError(f"{folder}: no sequence has {MIN_FRAMES} annotated frames or more; DAVIS's protocol "
                        f"scores the frames between the first and the last, so annotate longer sequences")
    if len(kept) < len(sequences):
        warnings.warn(Sam3LoraWarning(f"{folder}: {len(sequences) - len(kept)} of {len(sequences)} sequences have "
                                      f"fewer than {MIN_FRAMES} annotated frames and are not scored"), stacklevel=3)
    return kept


def score_sequences(sequences: list[VideoSequence], track: Tracker,
                    categories: dict[str, dict[int, str]]) -> dict:
    """DAVIS's measures of ``track`` on ``sequences``: overall, ``per_sequence``,
    ``per_category`` (``categories``: meta.json's, sequence -> object id -> category) and
    ``per_object``, with ``sequences`` and ``objects`` counted."""
    results = []   # (sequence, object id, category, ObjectScores)
    for sequence in tqdm(sequences, desc="validate", unit="sequence", leave=False):
        ids = list(sequence.objects)
        annotated = sequence.annotated_frames
        predicted = track(sequence)[:, annotated]
        scores = evaluate_sequence(sequence.name, ground_truth(sequence, ids), predicted)
        named = categories.get(sequence.name, {})
        results += [(sequence.name, object_id, named.get(object_id), s) for object_id, s in zip(ids, scores)]
    overall, per_category = summarize_by_group([(category, s) for _, _, category, s in results])
    _, per_sequence = summarize_by_group([(name, s) for name, _, _, s in results])
    per_object = {f"{name}_{object_id}": {**_without_count(video_metrics([s])), "category": category}
                  for name, object_id, category, s in results}
    return {**overall, "sequences": len(sequences), "per_sequence": per_sequence, "per_category": per_category,
            "per_object": per_object}


def _without_count(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "objects"}


def ground_truth(sequence: VideoSequence, ids: list[int]) -> np.ndarray:
    """(O, T', H, W) bool: the objects ``ids`` on the T' annotated frames (void pixels are
    no object's: DAVIS's semi-supervised evaluation ignores none)."""
    width, height = sequence.size
    masks = []
    for index in sequence.annotated_frames:
        frame_ids = sequence.mask(index)
        if frame_ids.shape != (height, width):
            raise DataError(f"{sequence.mask_paths[sequence.frame_names[index]]}: the mask is {frame_ids.shape[1]}x"
                            f"{frame_ids.shape[0]} but the sequence's frames are {width}x{height}; re-export the "
                            f"mask at the frame's size")
        masks.append(frame_ids[None] == np.array(ids)[:, None, None])
    return np.stack(masks, axis=1)


def tracker(model, processor) -> Tracker:
    """``Tracker`` of the video tracker ``model``: each object prompted with its mask on its
    first frame (objects sharing that frame in one session), tracked to the end, the sessions
    stepped together so that each frame's objects are made exclusive (``exclusive_masks``)."""
    def track(sequence: VideoSequence) -> np.ndarray:
        ids = list(sequence.objects)
        width, height = sequence.size
        frames = FrameFeed(_Frames(sequence), processor, next(model.parameters()).dtype)
        starts: dict[int, list[int]] = {}
        for object_id, seen in sequence.objects.items():
            starts.setdefault(seen[0], []).append(object_id)
        runs = {start: track_from_masks(model, frames, sequence.size, prompt_masks(sequence, start, members,
                                                                                   processor.image_size), start)
                for start, members in starts.items()}
        masks = np.zeros((len(ids), len(sequence.frame_paths), height, width), dtype=bool)
        for index in range(len(sequence.frame_paths)):
            logits = torch.full((len(ids), height, width), -torch.inf)   # absent before its first frame
            for start, run in runs.items():
                if start <= index:
                    _, run_ids, run_logits = next(run)
                    logits[[ids.index(i) for i in run_ids.tolist()]] = run_logits
            masks[:, index] = exclusive_masks(logits.numpy())
        return masks
    return track


def prompt_masks(sequence: VideoSequence, frame: int, ids: list[int], side: int) -> dict[int, torch.Tensor]:
    """{object id: (S, S) bool mask on the model's input} of the objects ``ids`` on ``frame``:
    resized as validation clips are in training (``data.masks.masks_to_input``, the whole
    frame onto the S x S input)."""
    width, height = sequence.size
    objects = torch.from_numpy(sequence.mask(frame)[None] == np.array(ids)[:, None, None])
    resized = masks_to_input(objects, Geometry((height, width), (side, side), side), side)
    return dict(zip(ids, resized, strict=True))


class _Frames:
    """A sequence as ``serve.video.FrameFeed`` reads a video: its length and its frames in order."""

    def __init__(self, sequence: VideoSequence):
        self.sequence, self.folder = sequence, sequence.frame_paths[0].parent

    def __len__(self) -> int:
        return len(self.sequence.frame_paths)

    def frames(self):
        return (self.sequence.frame(index) for index in range(len(self)))


def check_replaceable(out_dir: Path) -> None:
    """Refuse, before any work, an output folder that holds anything but an earlier
    validation's results (what would be lost in replacing it)."""
    if not out_dir.is_dir() or out_dir.is_symlink():   # a link is replaced, never written through
        return
    other = [entry.name for entry in out_dir.iterdir()
             if not entry.is_file() or entry.is_symlink() or (entry.name not in RESULT_FILES and entry.suffix != ".png")]
    if other:
        raise Sam3LoraError(f"{out_dir}: holds {other[0]!r}, which validate does not write, and the video "
                            f"validation replaces its output folder whole; choose an empty or new folder",
                            option="output")


def write_results(out_dir: Path, summary: dict, base: dict | None) -> None:
    """metrics.json and report.md, in a folder that replaces ``out_dir`` whole once written
    (``atomic_folder``: an earlier run's files never mix with these)."""
    by_sequence = {"fine-tuned": _jf(summary), "base": _jf(base)} if base else {summary["weights"]: _jf(summary)}
    with atomic_folder(out_dir) as staging:
        write_file(staging / "metrics.json", json.dumps(summary, indent=2) + "\n")
        write_report(staging, metrics=summary, base_metrics=base, summary_keys=VIDEO_SUMMARY_KEYS,
                     jf_by_sequence=by_sequence,
                     title=f"sam3-lora validation (video, DAVIS semi-supervised): {summary['split']} split, "
                           f"{summary['weights']}")


def _jf(metrics: dict) -> dict[str, float]:
    return {name: values["J&F"] for name, values in metrics["per_sequence"].items()}


def format_video(summary: dict) -> str:
    """The printed table of ``validate_video``'s metrics: overall (the base's beside it when
    scored), then per category."""
    columns = ("J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay")
    base = summary.get("base")
    rows = [("base model", base), ("fine-tuned", summary)] if base else [("all objects", summary)]
    rows += [(f"  {name}", metrics) for name, metrics in sorted(summary["per_category"].items())]
    lines = [f"{'':<20}" + "".join(f"{name:>9}" for name in columns)]
    lines += [f"{name[:20]:<20}" + "".join(f"{metrics[c]:>9.3f}" for c in columns) for name, metrics in rows]
    lines.append(f"{summary['objects']} objects in {summary['sequences']} sequences")
    return "\n".join(lines)
