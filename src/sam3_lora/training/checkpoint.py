"""Resumable training checkpoints, without pickle.

A checkpoint folder is the trained weights (an adapter folder, ``lora.adapter``, or a whole
model folder with ``training.method: full``) plus the training state:

    optimizer.safetensors   every tensor of the optimiser state (AdamW moments, step counts)
    trainer_state.json      the rest: optimiser hyper-parameters, scheduler and loss-scaler
                            state, RNG states, step, epoch and batches done in the epoch

``trainer_state.json`` is written last and the folder is renamed into place, so a folder
that has it is complete. Restoring all of it makes a resumed run take the same steps, with
the same data, dropout and augmentation, as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import atomic_folder

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STEP_FOLDER = re.compile(r"^step-(\d+)$")


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


def load_checkpoint(folder: Path, optimizer, scheduler, scaler) -> dict:
    """Restore optimiser, scheduler, scaler and RNG states; returns the progress dict.

    The weights are loaded separately (``adapter.load_lora_weights``, ``model.load_model_weights``).
    """
    state_path = Path(folder) / STATE_FILE
    if not state_path.is_file():
        raise Sam3LoraError(f"{folder}: not a resumable checkpoint (no {STATE_FILE}); "
                            f"give a run folder or one of its checkpoints/step-N folders")
    state = json.loads(state_path.read_text())
    optimizer.load_state_dict(_join_optimizer_state(load_file(Path(folder) / OPTIMIZER_FILE), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["progress"]


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := STEP_FOLDER.match(p.name)) and (p / STATE_FILE).is_file()]
    return [path for _, path in sorted(found)]


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
