"""Adapters on disk: PEFT's folder format plus a description of what they belong to.

An adapter folder holds PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``
(any PEFT user can load it) and our ``sam3_lora.json``:

    format         "sam3-lora-adapter/1"
    base_model     {"source": ..., "architecture": {...}}   what the adapter was trained on
    lora           the ``lora`` config section that selected the layers
    prompts        the prompt vocabulary the training used
    sam3_lora_version

Loading checks the base's architecture and the LoRA shapes before any tensor is copied,
and fails with a message naming both sides. Nothing is read with pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from sam3_lora import __version__
from sam3_lora.config import LoRAConfig
from sam3_lora.errors import AdapterError
from sam3_lora.files import atomic_folder
from sam3_lora.model.folders import METADATA_FILE

FORMAT = "sam3-lora-adapter/1"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def architecture(config) -> dict:
    """The sizes that decide whether LoRA tensors fit a model (a few readable numbers)."""
    if getattr(config, "model_type", None) != "sam3":
        return {"model_type": getattr(config, "model_type", type(config).__name__)}
    vit = config.vision_config.backbone_config
    text = config.text_config
    return {
        "model_type": "sam3",
        "vit": f"{vit.num_hidden_layers}x{vit.hidden_size}",
        "text": f"{text.num_hidden_layers}x{text.hidden_size}",
        "detr": f"{config.detr_encoder_config.num_layers}+{config.detr_decoder_config.num_layers}"
                f"x{config.detr_decoder_config.hidden_size}",
        "queries": config.detr_decoder_config.num_queries,
    }


def _base_architecture(model: nn.Module) -> dict:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return architecture(config) if config is not None else {"model_type": type(base).__name__}


def save_adapter(model: nn.Module, folder: str | Path, *, base_source: str = "unknown",
                 prompts: list[str] | None = None, adapter_name: str = "default") -> Path:
    """Write ``model``'s LoRA adapter to ``folder`` atomically; returns the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AdapterError(f"{folder}: is a file; give a folder path for the adapter")
    with atomic_folder(folder) as staging:
        write_adapter(model, staging, base_source=base_source, prompts=prompts, adapter_name=adapter_name)
    return folder


def write_adapter(model: nn.Module, folder: Path, *, base_source: str = "unknown",
                  prompts: list[str] | None = None, adapter_name: str = "default") -> None:
    """PEFT's adapter files plus ``sam3_lora.json``, into the existing folder ``folder``."""
    config = getattr(model, "sam3_lora_config", None)
    metadata = {
        "format": FORMAT,
        "base_model": {"source": base_source, "architecture": _base_architecture(model)},
        "lora": config.model_dump(mode="json") if isinstance(config, LoRAConfig) else None,
        "prompts": sorted(set(prompts or [])),
        "sam3_lora_version": __version__,
    }
    model.save_pretrained(folder, selected_adapters=[adapter_name])
    if adapter_name != "default":   # PEFT writes a named adapter into a subfolder
        for path in (folder / adapter_name).iterdir():
            path.rename(folder / path.name)
        (folder / adapter_name).rmdir()
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(folder: str | Path) -> dict:
    """Check that ``folder`` is an adapter; return its ``sam3_lora.json`` ({} for plain PEFT)."""
    folder = Path(folder)
    if folder.suffix in (".pt", ".pth", ".bin", ".ckpt") and folder.is_file():
        raise AdapterError(
            f"{folder}: pickle checkpoints are not read (they can run code); "
            f"use an adapter folder saved by sam3-lora or PEFT"
        )
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder; give the folder holding adapter_config.json")
    missing = [name for name in PEFT_FILES if not (folder / name).is_file()]
    if missing:
        raise AdapterError(f"{folder}: not an adapter folder (missing {', '.join(missing)})")
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        return {}
    try:
        return json.loads(metadata_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{metadata_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def check_base(model: nn.Module, folder: str | Path, metadata: dict) -> None:
    """Raise if the adapter in ``folder`` was made for another base architecture."""
    saved = metadata.get("base_model", {}).get("architecture")
    current = _base_architecture(model)
    if saved and saved != current:
        raise AdapterError(
            f"{folder}: adapter was trained on base {metadata['base_model'].get('source')} "
            f"{_describe(saved)}, but the model is {_describe(current)}; load the base it was trained on"
        )


def check_lora_shape(model: nn.Module, folder: str | Path) -> None:
    """Raise if ``model``'s own LoRA differs in rank or layers from the adapter in ``folder``."""
    peft_config = getattr(model, "peft_config", {}).get("default")
    if peft_config is None:
        return
    saved_config = json.loads((Path(folder) / "adapter_config.json").read_text())
    for key in ("r", "target_modules", "use_dora"):
        mine, theirs = peft_config.to_dict().get(key), saved_config.get(key)
        if isinstance(mine, (list, set)) or isinstance(theirs, (list, set)):
            mine, theirs = sorted(mine or []), sorted(theirs or [])
        if mine != theirs:
            raise AdapterError(
                f"{folder}: adapter has {key}={_short(theirs)} but the model's LoRA has "
                f"{key}={_short(mine)}; apply LoRA with the adapter's settings or load it onto the bare base"
            )


def load_adapter(model: nn.Module, folder: str | Path, *, adapter_name: str = "default",
                 is_trainable: bool = False):
    """Attach the adapter in ``folder`` to a bare base model; returns the PEFT model.

    A model that already carries adapters gets this one added under ``adapter_name`` (PEFT's
    named adapters), so one base in memory can switch between several.
    """
    from peft import PeftModel

    metadata = read_metadata(folder)
    check_base(model, folder, metadata)
    if isinstance(model, PeftModel):
        model.load_adapter(str(folder), adapter_name=adapter_name, is_trainable=is_trainable)
        return model
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name,
                                           is_trainable=is_trainable)
    if metadata.get("lora"):
        peft_model.sam3_lora_config = LoRAConfig.model_validate(metadata["lora"])
    return peft_model


def save_lora_weights(model: nn.Module, path: str | Path, **metadata) -> Path:
    """Seed API: save the LoRA adapter of ``model`` to the folder ``path``."""
    return save_adapter(model, path, **metadata)


def load_lora_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Seed API: load LoRA weights from ``path`` into ``model``, which already has LoRA
    applied with the same settings (``apply_lora_to_model``). Returns ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    check_base(model, path, metadata)
    if not hasattr(model, "peft_config"):
        raise AdapterError(f"{path}: the model has no LoRA yet; use load_adapter(model, path) for a bare base")
    check_lora_shape(model, path)
    result = set_peft_model_state_dict(model, load_file(Path(path) / "adapter_model.safetensors"))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise AdapterError(f"{path}: adapter lacks {len(missing)} LoRA tensors the model has (first: {missing[0]})")
    return model


def _describe(arch: dict) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in arch.items() if k != "model_type") + ")" \
        if arch.get("model_type") == "sam3" else f"({arch.get('model_type')})"


def _short(value) -> str:
    text = str(value)
    return text if len(text) < 80 else f"[{len(value)} modules]"
