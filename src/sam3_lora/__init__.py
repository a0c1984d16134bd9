"""sam3-lora: LoRA fine-tuning, evaluation and serving of Meta's SAM3.

The public API, imported lazily so that ``import sam3_lora`` (and ``sam3-lora --help``)
does not pay for torch and transformers until something is used.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config",
    "LoRAConfig": "config",
    "load_config": "config",
    "load_sam3": "model.loading",
    "apply_lora_to_model": "lora.apply",
    "count_parameters": "lora.apply",
    "save_adapter": "lora.adapter",
    "load_adapter": "lora.adapter",
    "save_lora_weights": "lora.adapter",
    "load_lora_weights": "lora.adapter",
    "SAM3LoRATrainer": "recipes.train",
    "SAM3LoRAInference": "serve.inference",
    "SAM3OnnxInference": "serve.onnx_engine",
}
__all__ = [  # noqa: RUF022 - grouped by module, like _EXPORTS
    "Config", "LoRAConfig", "load_config", "load_sam3", "apply_lora_to_model", "count_parameters",
    "save_adapter", "load_adapter", "save_lora_weights", "load_lora_weights", "SAM3LoRATrainer",
    "SAM3LoRAInference", "SAM3OnnxInference", "__version__",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam3_lora' has no attribute {name!r}")
    return getattr(import_module(f"sam3_lora.{_EXPORTS[name]}"), name)
