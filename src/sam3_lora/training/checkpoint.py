"""Resumable training checkpoints, without pickle.

A checkpoint folder is the trained weights (an adapter folder, ``lora.adapter``, or a whole
model folder with ``training.method: full``) plus the training state:

    optimizer.safetensors   every tensor of the optimiser state (AdamW moments, step counts)
    trainer_state.json      the rest: optimiser hyper-parameters, scheduler and loss-scaler
                            state, RNG states, step, epoch and batches done in the epoch

``trainer_state.json`` is written last and the folder is renamed into place, so a folder
that has it is complete. Restoring all of it makes a resumed run take the same steps, with
the same data, dropout and augmentation, as an uninterrupted one.

A checkpoint damaged after it was written (truncated, edited, a file deleted) is refused
with one line before anything of it is used, and ``restore_newest`` then falls back to the
newest intact older one.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import save_file

from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import atomic_folder, write_file
from sam3_lora.model.tensor_files import read_tensors

T = TypeVar("T")

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STEP_FOLDER = re.compile(r"^step-(\d+)$")
MAX_COUNT = 10**9
"""The largest step, epoch or batch count a checkpoint may hold: no run takes a billion
optimiser steps, and a larger count (10^30 was accepted) is damage."""


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state -> (flat tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"scalars": scalars, "param_groups": state_dict["param_groups"]}


class CheckpointError(Sam3LoraError):
    """A checkpoint that cannot be resumed from: damaged, or not one."""


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        param_id, name = key.split(".", 1)
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as JSON-able values."""
    numpy_state = np.random.get_state()
    state = {
        "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *[int(v) if i < 2 else float(v)
                                                          for i, v in enumerate(numpy_state[2:])]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(folder: Path, write_weights: Callable[[Path], None], optimizer, scheduler, scaler,
                    progress: dict) -> Path:
    """Write weights (``write_weights(folder)``) + training state to ``folder`` atomically
    (temporary name, then rename)."""
    with atomic_folder(folder) as written:
        write_weights(written)
        tensors, rest = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, written / OPTIMIZER_FILE)
        state = {
            "progress": progress,
            "optimizer": rest,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
        }
        (written / STATE_FILE).write_text(json.dumps(state))   # last: marks the folder complete
    return folder


def load_checkpoint(folder: Path, optimizer, scheduler, scaler, progress_like: dict | None = None,
                    progress_check: Callable[[dict], str | None] | None = None,
                    progress_added: dict | None = None) -> dict:
    """Restore optimiser, scheduler, scaler and RNG states; returns the progress dict.

    Everything is read and checked first against the structure this process would write
    itself (same keys, list lengths and kinds of values, finite numbers, optimiser tensors
    shaped like their parameters; ``progress_like``: a progress dict of the expected form,
    whose whole numbers must be whole numbers from 0 to ``MAX_COUNT`` here too;
    ``progress_check(progress)``: what else is wrong with it for the run resuming, or None),
    so that a damaged checkpoint raises ``CheckpointError`` (one line) before any state is
    touched. ``progress_added``: progress keys newer than some checkpoints, with the value
    that means what the versions before them did; a checkpoint without such a key gets it,
    so that runs written by an older sam3-lora still resume. The weights are loaded separately (``adapter.load_lora_weights``,
    ``model.load_model_weights``).
    """
    folder = Path(folder)
    state = _read_state(folder)
    if isinstance(state.get("progress"), dict):
        state["progress"] = {**(progress_added or {}), **state["progress"]}
    tensors = read_tensors(folder / OPTIMIZER_FILE, CheckpointError)
    problem = (_state_problem(state, optimizer, scheduler, scaler, progress_like)
               or _optimizer_tensor_problem(tensors, optimizer)
               or _progress_problem(folder, state["progress"], progress_like)
               or _checked(progress_check, state["progress"]))
    if problem:
        raise CheckpointError(f"{folder}: {problem}; the checkpoint is damaged")
    try:
        optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: its training state does not load ({_first_line(exc)}); "
                              f"the checkpoint is damaged or from another run") from None
    return state["progress"]


def _read_state(folder: Path) -> dict:
    """``trainer_state.json`` as a mapping, or ``CheckpointError``."""
    path = folder / STATE_FILE
    if not path.is_file() and STEP_FOLDER.match(folder.name):   # written last: deleted since
        raise CheckpointError(f"{path}: missing")
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a resumable checkpoint (no {STATE_FILE}); "
                              f"give a run folder or one of its checkpoints/step-N folders")
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON, truncated or damaged ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training state (a JSON object); the checkpoint is damaged")
    return state


_ANY = object()
"""In a reference structure: any value is accepted there."""


def _state_problem(state: dict, optimizer, scheduler, scaler, progress_like: dict | None) -> str | None:
    """Where ``trainer_state.json`` differs from what this process would write, or None."""
    expected = json.loads(json.dumps({   # as JSON: tuples become lists, as they were saved
        "progress": progress_like, "optimizer": _split_optimizer_state(optimizer.state_dict())[1],
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state()}))
    expected["optimizer"]["scalars"] = _ANY   # filled by steps; checked with the tensors
    if progress_like is None:
        expected["progress"] = _ANY
    if not expected["scaler"]:
        expected["scaler"] = _ANY             # no loss scaling in this run: the saved one is unused
    expected["rng"].pop("cuda", None)
    found = {**state, "rng": {k: v for k, v in state["rng"].items() if k != "cuda"}} \
        if isinstance(state.get("rng"), dict) else state
    problem = _mismatch(expected, found)
    scalars = state["optimizer"]["scalars"] if not problem else {}
    if not isinstance(scalars, dict) or any(_kind(v) != "number" or v is None for v in scalars.values()):
        problem = "optimizer.scalars: expected a mapping of numbers"
    return f"{STATE_FILE}: {problem}" if problem else None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)) or value is None:   # None: a number not known yet (best_value)
        return "number"
    return {str: "text", list: "list", dict: "mapping"}.get(type(value), type(value).__name__)


def _mismatch(expected: Any, value: Any, path: str = "") -> str | None:
    """Where ``value`` differs in structure from ``expected``: keys, list lengths, kinds of
    values, finiteness of numbers; None if nowhere."""
    here = path or "top level"
    if expected is _ANY:
        return None
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return f"{here}: expected a mapping, found {_kind(value)}"
        differ = sorted(set(expected) ^ set(value))
        if differ:
            return f"{here}: keys differ ({', '.join(str(key)[:30] for key in differ[:3])})"
        children = ((f"{path}.{key}" if path else key, expected[key], value[key]) for key in expected)
    elif isinstance(expected, list):
        if not isinstance(value, list) or len(value) != len(expected):
            found = f"a list of {len(value)}" if isinstance(value, list) else _kind(value)
            return f"{here}: expected a list of {len(expected)}, found {found}"
        children = ((f"{path}[{i}]", ref, item) for i, (ref, item) in enumerate(zip(expected, value)))
    elif _kind(expected) != _kind(value):
        return f"{here}: expected {_kind(expected)}, found {_kind(value)}"
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{here}: {value} is not a finite number"
    else:
        return None
    return next((found for child_path, ref, item in children if (found := _mismatch(ref, item, child_path))), None)


def _optimizer_tensor_problem(tensors: dict[str, torch.Tensor], optimizer) -> str | None:
    """Whether every optimiser tensor belongs to a parameter and (but step counts) has its shape."""
    saved = optimizer.state_dict()["param_groups"]
    parameters = {pid: p for group, live in zip(saved, optimizer.param_groups)
                  for pid, p in zip(group["params"], live["params"])}
    for key, tensor in tensors.items():
        param_id, _, name = key.partition(".")
        parameter = parameters.get(int(param_id)) if param_id.isdigit() else None
        if parameter is None or not name:
            return f"{OPTIMIZER_FILE}: {key[:60]} belongs to no parameter of the model"
        if name != "step" and tensor.shape != parameter.shape:
            return (f"{OPTIMIZER_FILE}: {key[:60]} has shape {tuple(tensor.shape)}, its parameter "
                    f"{tuple(parameter.shape)}")
    return None


def _progress_problem(folder: Path, progress: Any, progress_like: dict | None = None) -> str | None:
    """Counts in the progress must be at least 0 (and whole numbers up to ``MAX_COUNT`` where
    ``progress_like`` has whole numbers), and a ``step-N`` folder must hold step N."""
    if not isinstance(progress, dict):
        return None
    negative = [key for key, value in progress.items() if _kind(value) == "number" and isinstance(value, int)
                and value < 0]
    if negative:
        return f"{STATE_FILE}: progress.{str(negative[0])[:30]} is negative"
    for key, like in (progress_like or {}).items():
        value = progress.get(key)
        if _kind(like) == "number" and isinstance(like, int) and not isinstance(value, int):
            return f"{STATE_FILE}: progress.{key}: expected a whole number, found {str(value)[:20]}"
        if isinstance(like, int) and isinstance(value, int) and value > MAX_COUNT:
            return f"{STATE_FILE}: progress.{key} is {_shown(value)}, more than any run reaches ({MAX_COUNT:.0e})"
    match = STEP_FOLDER.match(folder.name)
    if match and "step" in progress and progress["step"] != int(match[1]):
        return f"{STATE_FILE}: progress.step is {str(progress['step'])[:20]}, but the folder is step {int(match[1])}"
    return None


def _checked(progress_check: Callable[[dict], str | None] | None, progress: dict) -> str | None:
    """``progress_check``'s verdict, in the words of the other problems (naming the file)."""
    problem = progress_check(progress) if progress_check else None
    return f"{STATE_FILE}: {problem}" if problem else None


def _shown(count: int) -> str:
    """A count for a message: as it is, or in scientific notation when long (10^30)."""
    return str(count) if count < 10**12 else f"{count:.1e}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def resume_candidates(path: str | Path) -> list[Path]:
    """The checkpoints to resume from, newest first: a checkpoint folder then the older ones
    beside it, or a run folder's checkpoints; [] if there are none. Step folders whose
    ``trainer_state.json`` is gone are included: ``restore_newest`` says they are damaged
    (skipping them silently resumed from an older step without a word)."""
    path = Path(path)
    match = STEP_FOLDER.match(path.name)
    if match and path.parent.name == "checkpoints" and path.is_dir():
        older = [p for p in step_folders(path.parent.parent) if int(STEP_FOLDER.match(p.name)[1]) < int(match[1])]
        return [path, *older[::-1]]
    if (path / STATE_FILE).is_file():
        return [path]
    return step_folders(path)[::-1]


def restore_newest(candidates: list[Path], restore: Callable[[Path], T]) -> tuple[Path, T, list[tuple[Path, str]]]:
    """``restore(folder)`` for each of ``candidates`` (newest first) until one succeeds.

    Returns (the folder restored, what ``restore`` returned, [(damaged folder, why)] for each
    newer one that raised ``Sam3LoraError``; ``why`` names the damaged file). Each attempt
    restores everything anew, so a failed one leaves nothing behind. With none intact, raises
    ``CheckpointError`` saying why the newest is not.
    """
    damaged = []
    for folder in candidates:
        try:
            return folder, restore(folder), damaged
        except Sam3LoraError as exc:
            damaged.append((folder, exc.message))
    older = f"; the {len(damaged) - 1} older one(s) are damaged too" if len(damaged) > 1 else ""
    raise CheckpointError(f"no intact checkpoint to resume from: {damaged[0][1]}{older}; start the run anew",
                          option="resume")


def truncate_log(path: Path, step: int) -> None:
    """Cut a run's JSON-lines log back to what was written before the checkpoint of ``step``:
    records of earlier steps and the training and evaluation records of ``step`` itself (a
    resumed run would repeat the rest). Unreadable lines (a process killed mid-write) go too."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if _before(line, step)]
    if kept == lines:
        return
    write_file(path, "".join(kept))   # replaced, never written through a link


def _before(line: str, step: int) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    if not line.endswith("\n") or not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return False
    # Non-finite steps are logged after the checkpoint of the step they failed to follow.
    return record["step"] < step or (record["step"] == step and "nonfinite_steps" not in record)


def step_folders(run_dir: Path) -> list[Path]:
    """The ``checkpoints/step-N`` folders of a run, complete or not, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := STEP_FOLDER.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (with their ``trainer_state.json``), oldest first."""
    return [path for path in step_folders(run_dir) if (path / STATE_FILE).is_file()]


def latest_checkpoint(run_dir_or_checkpoint: str | Path) -> Path | None:
    """The checkpoint to resume from: the folder itself if it is one, else the run's newest."""
    path = Path(run_dir_or_checkpoint)
    if (path / STATE_FILE).is_file():
        return path
    found = step_checkpoints(path)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int | None) -> None:
    """Delete all but the ``keep`` newest step checkpoints."""
    if keep is None:
        return
    for old in step_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
