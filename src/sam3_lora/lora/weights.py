"""A run's weights onto their base, ready to use, and switching the adapter off.

``load_finetuned`` is what validation, prediction and the app load: the base model with an
adapter attached, or a whole model folder from ``training.method: full``, or the base alone.
``has_adapter`` / ``adapter_disabled`` are the one way to ask a model for its base's answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from sam3_lora.config import SHARED_ADAPTER, Config
from sam3_lora.errors import AdapterError, ConfigError
from sam3_lora.lora.adapter import PEFT_FILES, load_adapter
from sam3_lora.lora.apply import activate_adapters
from sam3_lora.model.folders import is_model_folder
from sam3_lora.model.loading import load_sam3
from sam3_lora.model.precision import default_device, enable_tf32, resolve_precision
from sam3_lora.model.processing import Sam3InputProcessor
from sam3_lora.model.tracker import load_tracker
from sam3_lora.model.video import load_video_tracker

ADAPTER_CONFIG = PEFT_FILES[0]   # PEFT's config, in every adapter folder


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries a LoRA adapter that can be switched off (PEFT)."""
    return hasattr(model, "disable_adapter")


@contextlib.contextmanager
def adapter_disabled(model: nn.Module, disabled: bool = True) -> Iterator[None]:
    """Inside, ``model`` answers as its base model (PEFT's ``disable_adapter``); a model
    without an adapter, or ``disabled=False``, is left as it is."""
    with model.disable_adapter() if disabled and has_adapter(model) else contextlib.nullcontext():
        yield


def load_base(config: Config, source: str, dtype: torch.dtype, device: torch.device | str | None = None):
    """The model ``config.model.task`` trains, from ``source``, with its processor: SAM3's
    tracker (``model.tracker.load_tracker``) for the interactive task, else SAM3 itself
    (``load_sam3``, quantized as ``model.quantize`` says, for ``device``); for the video task
    its video tracker (``model.video.load_video_tracker``)."""
    model = config.model
    if model.task == "video":
        return load_video_tracker(source, revision=model.revision, image_size=model.image_size,
                                  seed=config.training.seed, dtype=dtype, width=model.tracker_width)
    if model.task == "interactive":
        return load_tracker(source, revision=model.revision, image_size=model.image_size,
                            seed=config.training.seed, dtype=dtype, width=model.tracker_width)
    return load_sam3(source, revision=model.revision, image_size=model.image_size, seed=config.training.seed,
                     dtype=dtype, quantize=model.quantize, device=device)


def load_finetuned(config: Config, weights: str | Path | None = None, no_lora: bool = False,
                   device: torch.device | str | None = None,
                   task: str | None = None) -> tuple[nn.Module, Sam3InputProcessor, Path | None]:
    """(model in eval mode, processor, weights folder or None): the base with the adapter
    attached unless ``no_lora``; with ``task`` (a dataset of ``data.datasets``), that task's
    adapters (``task_adapter_folders``), active together.

    ``weights`` (default: the run's ``best/``) is an adapter folder, or a whole model folder
    from ``training.method: full``, which then replaces the base (so there is no adapter).
    ``device`` defaults to the GPU when there is one. The weights are in ``model.dtype`` as
    resolved for ``device`` (``model.precision``; the adapter stays float32), and the model
    runs under autocast of that dtype wherever ``model.forward`` runs it.
    """
    check_task(config, task)   # before looking for weights: a misspelt task is the first thing to say
    chosen = None if no_lora else Path(weights) if weights else Path(config.output.dir) / "best"
    if chosen is not None and not chosen.exists():
        raise AdapterError(f"{chosen}: no adapter there; train first (sam3-lora train), give the "
                           f"weights folder, or use the base model (no LoRA)")
    whole = chosen is not None and is_model_folder(chosen)
    device = torch.device(device) if device is not None else default_device()
    precision = resolve_precision(config.model.dtype, None, device)
    enable_tf32(precision)
    folders = [] if chosen is None or whole else task_adapter_folders(config, chosen, task)
    loaded = load_base(config, str(chosen) if whole else config.model.source, precision.dtype, device)
    model = loaded.model
    for name, folder in folders:
        model = load_adapter(model, folder, adapter_name=name)
    if len(folders) > 1:
        activate_adapters(model, [name for name, _ in folders])
    return model.to(device).eval(), loaded.processor, chosen


def check_task(config: Config, task: str | None) -> None:
    """Raise (one line) unless ``task`` is None or a dataset of ``config.data.datasets``."""
    names = [entry.name for entry in config.data.datasets]
    if task is not None and task not in names:
        raise ConfigError(f"task {task[:64]!r}: not a dataset of data.datasets "
                          f"({', '.join(names) or 'there is none'}); name one of them")


def task_adapter_folders(config: Config, chosen: Path, task: str | None) -> list[tuple[str, Path]]:
    """(adapter name, folder) of each adapter to load from the weights folder ``chosen``: the
    shared one, in ``chosen`` itself, and with ``task`` that task's own, in ``chosen/TASK``
    (as a run with ``lora.task_adapters`` writes them), of those that exist. ``task`` must be
    a dataset of ``config.data.datasets`` (``check_task``: so also a plain folder name)."""
    check_task(config, task)
    names = [entry.name for entry in config.data.datasets]
    shared = (chosen / ADAPTER_CONFIG).is_file()
    own = [name for name in names if (chosen / name / ADAPTER_CONFIG).is_file()]
    if task is None and not shared and own:
        raise AdapterError(f"{chosen}: holds one adapter per task ({', '.join(own)}) and no shared one; choose "
                           f"one of them", option="task")
    if task is None or task not in own:
        return [(SHARED_ADAPTER, chosen)]   # the shared one is the task's (or the usual error if none)
    return ([(SHARED_ADAPTER, chosen)] if shared else []) + [(task, chosen / task)]
