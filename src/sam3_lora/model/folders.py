"""Whole-model folders: what ``training.method: full`` writes and ``model.source`` reads back.

A model folder is a ``save_pretrained`` folder (config, weights, tokenizer) plus
``sam3_lora.json`` (METADATA_FILE) saying what it was trained from and on which prompts;
adapters (``lora.adapter``) carry the same file name with their own format.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sam3_lora import __version__
from sam3_lora.errors import ModelLoadError
from sam3_lora.model.tensor_files import check_finite, read_tensors

if TYPE_CHECKING:
    from transformers import Sam3Model

MODEL_FORMAT = "sam3-lora-model/1"
METADATA_FILE = "sam3_lora.json"
# Files written by torch.save or pickle: never read, since unpickling one can run any code.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")   # one file, or shards


@contextlib.contextmanager
def quiet_progress():
    """transformers' progress bars off (loading and saving the tiny bundled model is instant)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def write_model(model: Sam3Model, tokenizer, folder: Path, *, base_source: str = "unknown",
                prompts: list[str] | None = None) -> None:
    """A whole trained model (``training.method: full``) into the existing ``folder``: a
    ``save_pretrained`` folder that ``model.source`` can name, plus ``sam3_lora.json``
    saying what it was trained from and on which prompts."""
    with quiet_progress():   # a "writing shards" bar at every checkpoint is noise
        model.save_pretrained(folder)
        if tokenizer is not None:   # the tracker reads no text
            tokenizer.save_pretrained(folder)
    metadata = {"format": MODEL_FORMAT, "trained_from": base_source, "prompts": sorted(set(prompts or [])),
                "sam3_lora_version": __version__}
    (Path(folder) / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def _under_own_names(model, folder: str | Path, tensors: dict) -> dict:
    """``tensors`` (read intact from ``folder``) under ``model``'s own names. transformers writes
    some models under another model's checkpoint names, and renames them back as it reads
    (SAM3's tracker is written as the full checkpoint's ``tracker_model.*``, its ViT as
    ``tracker_model.detector_model.vision_encoder.*``): those are read through it."""
    if tensors.keys() <= model.state_dict().keys():
        return tensors
    with quiet_progress():
        try:
            again, info = type(model).from_pretrained(folder, config=model.config, dtype=next(model.parameters()).dtype,
                                                      use_safetensors=True, local_files_only=True,
                                                      output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{folder}: its weights cannot be read as a {type(model).__name__} "
                                 f"({type(exc).__name__}); resume with the run's own config") from None
    misfits = [*info["missing_keys"], *info["unexpected_keys"], *info.get("mismatched_keys", [])]
    if misfits:   # transformers would start those weights afresh: a resume must not
        raise ModelLoadError(f"{folder}: weights do not fit the model ({str(misfits[0])[:100]}); resume with "
                             f"the run's own config")
    return again.state_dict()


def check_model_metadata(folder: str | Path) -> None:
    """Refuse a model folder whose ``sam3_lora.json`` is not ours of this version (an
    adapter's, a later sam3-lora's, damaged): one line naming the file. A folder without one
    (a plain ``save_pretrained`` folder) passes."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return
    try:
        metadata = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:   # unreadable, not UTF-8, not JSON
        raise ModelLoadError(f"{path}: not valid JSON ({type(exc).__name__}); delete it or save the "
                             f"model again") from None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != MODEL_FORMAT:
        raise ModelLoadError(f"{path}: format {str(found)[:40]!r}, this sam3-lora reads {MODEL_FORMAT}; "
                             f"give a model folder this version wrote (an adapter goes to --weights)")


def check_finite_model(model: Sam3Model, source: str) -> None:
    """Refuse a loaded model whose weights hold NaN or infinity (a diverged full training):
    it would answer every prompt with nothing."""
    check_finite(dict(model.state_dict()), f"model.source {source!r}", ModelLoadError)


def pickle_refusal(folder: Path) -> str | None:
    """Why ``folder``'s weights are not read, where it holds pickle files in their place
    (the one wording, shared by model folders and adapters); None otherwise."""
    pickles = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    return f"holds {pickles[0]}, a pickle file, which is not read (it can run code)" if pickles else None


def check_safetensors_weights(folder: str | Path, source: str) -> None:
    """Refuse a model folder whose weights are only pickle files (``pytorch_model.bin``) before
    transformers is asked to unpickle them."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in SAFETENSORS_WEIGHTS):
        return
    refusal = pickle_refusal(folder)
    if refusal:
        raise ModelLoadError(f"model.source {source!r}: {refusal}; convert it to safetensors (load it where you trust "
                             f"it and save with model.save_pretrained(DIR), which writes model.safetensors)")


def is_model_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a whole model (``save_pretrained``) rather than an adapter."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file()


def load_model_weights(model: Sam3Model, folder: str | Path) -> None:
    """Copy the weights of a model folder written by ``write_model`` into ``model`` (resume);
    damaged, non-finite or misfitting weights raise ``ModelLoadError`` before any is copied."""
    check_model_metadata(folder)
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no model.safetensors; resume a method=full run from its own checkpoints")
    tensors = _under_own_names(model, folder, read_tensors(path, ModelLoadError))
    own = model.state_dict()
    misfit = next((key for key, tensor in tensors.items() if key in own and own[key].shape != tensor.shape), None)
    if misfit:
        raise ModelLoadError(f"{path}: {misfit[:100]} has shape {tuple(tensors[misfit].shape)}, the model's "
                             f"{tuple(own[misfit].shape)}; resume with the run's own config")
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{path}: weights do not fit the model (missing {result.missing_keys[:2]}, "
                             f"unexpected {result.unexpected_keys[:2]}); resume with the run's own config")
