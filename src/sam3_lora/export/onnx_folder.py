"""The ONNX export folder's layout: file names and ``sam3_onnx.json``. No torch.

``export.onnx`` writes the folder, ``export.quantize`` rewrites its encoders in INT8, and
``serve.onnx_engine`` reads it (with its own copy of these names, which a test keeps equal:
the engine may not import from ``export``).
"""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "sam3-lora-onnx/1"
"""What ``sam3_onnx.json`` says the folder is; the number changes with the graphs' interface."""
CONFIG_FILE = "sam3_onnx.json"
GRAPH_FILES = {"vision_encoder": "vision_encoder.onnx", "text_encoder": "text_encoder.onnx",
               "prompt_decoder": "prompt_decoder.onnx"}
INSTALL_HINT = "pip install 'sam3-lora[onnx]'"


def read_metadata(folder: Path) -> dict | None:
    """The folder's ``sam3_onnx.json``, or None when it has none (it is no ONNX export)."""
    path = Path(folder) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_metadata(folder: Path, metadata: dict) -> None:
    """Write ``sam3_onnx.json`` into ``folder``, listing the size of every other file there."""
    metadata["files"] = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())
                         if p.is_file() and p.name != CONFIG_FILE}
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
