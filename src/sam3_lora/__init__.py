"""sam3-lora: LoRA fine-tuning, evaluation and serving of Meta's SAM3."""

__version__ = "0.1.0"
