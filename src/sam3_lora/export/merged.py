"""Export an adapter: merged into the base model, or as a clean adapter folder to share.

A merged export is a plain transformers folder (model and tokenizer): anyone loads it with
``Sam3Model.from_pretrained(OUT)`` and no sam3_lora code, at the base model's speed (the LoRA
products are folded into the weights). An adapter-only export copies just the files that make
the adapter: PEFT's two and our ``sam3_lora.json``, nothing of a run's training state.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sam3_lora.config import Config
from sam3_lora.errors import Sam3LoraError
from sam3_lora.lora.adapter import METADATA_FILE, PEFT_FILES, load_adapter, read_metadata


class ExportError(Sam3LoraError):
    """The export target or source is unusable."""


def _empty_target(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is {'a file' if not out.is_dir() else 'not empty'}; "
                          f"choose a new or empty folder (nothing is overwritten)")
    return out


def export_adapter(weights: str | Path, out: str | Path) -> Path:
    """Copy the adapter in ``weights`` (checked first) to the new folder ``out``."""
    read_metadata(weights)
    out = _empty_target(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*PEFT_FILES, METADATA_FILE, "README.md"):
        if (Path(weights) / name).is_file():
            shutil.copy2(Path(weights) / name, out / name)
    return out


def export_merged(weights: str | Path, out: str | Path, config: Config | None = None,
                  dtype: str = "float32") -> Path:
    """Merge the adapter into its base and save model + tokenizer to ``out``, in ``dtype``
    (``float32``, ``bfloat16`` or ``float16``).

    The base is ``config.model.source`` when a config is given, else the base the adapter
    records. (Random-weight presets also need the config: their weights follow its seed.)
    The merge itself is done in float32, whatever ``dtype`` and ``model.dtype`` say, so that
    the small LoRA product is not rounded away before the weights are cast once.
    """
    from sam3_lora.model.loading import load_sam3
    from sam3_lora.model.precision import DTYPES

    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}", option="dtype")

    metadata = read_metadata(weights)
    out = _empty_target(out)
    source = config.model.source if config else metadata.get("base_model", {}).get("source")
    if not source or source == "unknown":
        raise ExportError(f"{weights}: the adapter does not record its base model; give a config whose "
                          f"model.source is the base it was trained on", option="config")
    loaded = load_sam3(source, revision=config.model.revision if config else None,
                       image_size=config.model.image_size if config else None,
                       seed=config.training.seed if config else 0)
    merged = load_adapter(loaded.model, weights).merge_and_unload().to(DTYPES[dtype])
    merged.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out
