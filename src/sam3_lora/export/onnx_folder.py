"""Writing the ONNX export folder's ``sam3_onnx.json``. No torch.

The format itself (file names, the schema of ``sam3_onnx.json``, and the checks every reader
makes) is ``sam3_lora.onnx_format``, below both ``export`` and ``serve.onnx_engine``;
its names are re-exported here for the export's modules.
"""

from __future__ import annotations

import json
from pathlib import Path

from sam3_lora.files import write_file
from sam3_lora.onnx_format import (
    CONFIG_FILE,
    FORMAT,
    GRAPH_FILES,
    INSTALL_HINT,
    TRACKER_GRAPH_FILES,
    TRACKER_GRAPH_IO,
    read_metadata,
)

__all__ = ["CONFIG_FILE", "FORMAT", "GRAPH_FILES", "INSTALL_HINT", "TRACKER_GRAPH_FILES", "TRACKER_GRAPH_IO",
           "read_metadata", "write_metadata"]


def write_metadata(folder: Path, metadata: dict) -> None:
    """Write ``sam3_onnx.json`` into ``folder``, listing the size of every other file there."""
    metadata["files"] = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())
                         if p.is_file() and p.name != CONFIG_FILE}
    write_file(Path(folder) / CONFIG_FILE, json.dumps(metadata, indent=2) + "\n")
