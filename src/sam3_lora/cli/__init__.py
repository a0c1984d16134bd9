"""The ``sam3-lora`` command: a thin layer over the Python API, one module per command group."""

from sam3_lora.cli.main import main

__all__ = ["main"]
