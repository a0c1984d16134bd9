"""Export an adapter: merged into the base model, or as a clean adapter folder to share.

A merged export is a plain transformers folder: anyone runs it with
``Sam3Model.from_pretrained(OUT)`` and ``Sam3Processor.from_pretrained(OUT)`` (the model, the
tokenizer, and the processor's configuration; transformers' processor needs torchvision) and
no sam3_lora code, at the base model's speed (the LoRA products are folded into the weights).
An adapter-only export copies just the files that make the adapter: PEFT's two and our
``sam3_lora.json``, nothing of a run's training state. Both are written atomically, with the
user's umask (``files.atomic_folder``).

``load_merged`` (a weights folder -> one plain ``Sam3Model`` and its processor) is shared
with the ONNX export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sam3_lora.config import Config
from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import atomic_folder
from sam3_lora.lora.adapter import (
    METADATA_FILE,
    PEFT_FILES,
    check_mergeable,
    load_adapter,
    read_metadata,
)
from sam3_lora.model.folders import is_model_folder
from sam3_lora.model.precision import DTYPES
from sam3_lora.model.processing import save_processor_config
from sam3_lora.model.quantize import dequantize_linears


class ExportError(Sam3LoraError):
    """The export target or source is unusable."""


def empty_target(out: str | Path) -> Path:
    """``out`` as a ``Path`` if it is new or an empty folder; anything else is refused, an
    empty path too (``Path("")`` would be the current folder)."""
    if not str(out).strip():
        raise ExportError("the output folder's path is empty; give the new folder to write the export to")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is {'a file' if not out.is_dir() else 'not empty'}; "
                          f"choose a new or empty folder (nothing is overwritten)")
    return out


def export_adapter(weights: str | Path, out: str | Path) -> Path:
    """Copy the adapter in ``weights`` (checked first) to the new folder ``out``."""
    read_metadata(weights)
    out = empty_target(out)
    with atomic_folder(out) as staging:
        for name in (*PEFT_FILES, METADATA_FILE, "README.md"):
            if (Path(weights) / name).is_file():
                shutil.copy2(Path(weights) / name, staging / name)
    return out


def load_merged(weights: str | Path, config: Config | None = None):
    """The model in ``weights`` as one plain ``Sam3Model`` (eval mode, on the CPU) with its
    processor (``LoadedSam3``): an adapter is merged into its base (``merge_and_unload``), a
    base quantized as ``config.model.quantize`` says dequantized first; a whole-model folder
    (``training.method: full``) is loaded as it is. An adapter of a method that cannot merge
    (``lora.method: adapter``) is refused in one line before the base is loaded.

    The base of an adapter is ``config.model.source`` when a config is given, else the base
    the adapter records. (Random-weight presets also need the config: their weights follow
    its seed.)
    """
    from sam3_lora.model.loading import load_sam3

    sizes = {"revision": config.model.revision, "image_size": config.model.image_size,
             "seed": config.training.seed} if config else {}
    if is_model_folder(weights):
        return load_sam3(str(weights), **sizes)
    metadata = read_metadata(weights)
    check_mergeable(weights, metadata)
    source = config.model.source if config else metadata.get("base_model", {}).get("source")
    if not source or source == "unknown":
        raise ExportError(f"{weights}: the adapter does not record its base model; give a config whose "
                          f"model.source is the base it was trained on", option="config")
    quantize = config.model.quantize if config else "none"
    loaded = load_sam3(source, **sizes, quantize=quantize, device="cpu")
    # A quantized base: the LoRA product goes onto the weights it was trained against, in
    # float32 (PEFT would merge into the 4-bit weights and round it away).
    dequantize_linears(loaded.model)
    loaded.model = load_adapter(loaded.model, weights).merge_and_unload().eval()
    return loaded


def export_merged(weights: str | Path, out: str | Path, config: Config | None = None,
                  dtype: str = "float32") -> Path:
    """Save the model in ``weights`` (an adapter merged into its base, or a whole-model
    folder) with its tokenizer and ``Sam3Processor`` configuration to the new folder ``out``,
    its weights in ``dtype`` (``float32``, ``bfloat16`` or ``float16``).

    The merge itself is done in float32, whatever ``dtype`` and ``model.dtype`` say, so that
    the small LoRA product is not rounded away before the weights are cast once.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}", option="dtype")
    out = empty_target(out)
    loaded = load_merged(weights, config)
    loaded.model = loaded.model.to(DTYPES[dtype])
    with atomic_folder(out) as staging:
        loaded.save_pretrained(staging)
        save_processor_config(staging, loaded.processor.image_size,
                              loaded.model.config.vision_config.backbone_config.patch_size)
    return out
