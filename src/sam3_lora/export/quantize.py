"""INT8 for an ONNX export, through onnxruntime's quantization tools. No torch.

``--quantize int8`` is *dynamic* quantization of the encoders: the weights of every
MatMul of the vision and text encoders (the tracker's image encoder) become int8 (symmetric, one scale per tensor), and
activations are quantized on the fly at each call, so no calibration data is needed. The
prompt decoder stays float32.

Why this and not the alternatives (measured on this project's 2-core CPU while the export was
designed, one thread; ``bench/bench_onnx.py`` measures what ships, in BENCHMARKS.md):

- static quantization (QDQ, activations calibrated on images from the dataset) was both
  slower (full size, 336 px, one prompt: 2.05 s against 1.51 s for dynamic; fp32 3.16 s) and
  less accurate (bundled base's test mAP -0.0015 against +0.0003; largest score change
  4.9e-3 against 1.5e-3), and it needs calibration images at export time;
- quantizing the prompt decoder too saved 26% of its time at K=16 prompts but moved logits
  by up to 0.0069 on random weights; it stays float32 until real SAM3 weights can be checked;
- the text encoder's 49,408 x 1,024 token embedding is a Gather, which MatMul quantization
  leaves in float32 (202 MB of its 507 MB).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from sam3_lora.errors import Sam3LoraError
from sam3_lora.export.onnx_folder import CONFIG_FILE, INSTALL_HINT, read_metadata, write_metadata
from sam3_lora.files import atomic_folder, inside_folder, sigterm_as_exit

QUANTIZED_GRAPHS = {"concept": ("vision_encoder", "text_encoder"), "interactive": ("image_encoder",)}
"""Per export task, the encoders made INT8 (the decoders stay float32, see above)."""
METHOD = "int8"


class QuantizeError(Sam3LoraError):
    """A quantization that cannot be done: one line saying what, and what to do."""


@contextlib.contextmanager
def _quantizer_quiet() -> Iterator[None]:
    """onnxruntime's quantizer advice ("consider pre-processing") is logged as warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_folder(folder: Path, metadata: dict, progress: Callable[[str], None] | None = None) -> dict:
    """Replace the vision and text encoders of the export in ``folder`` by INT8 versions
    (``GRAPH_int8.onnx``, external data kept where the source had it) and update
    ``metadata["graphs"]``; returns what goes under ``metadata["quantization"]``.

    Each source graph (and its ``.data``) is deleted once quantized, so ``metadata`` must be
    checked (``onnx_format.read_metadata``): it names files inside ``folder`` only."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise QuantizeError(f"INT8 quantization needs onnxruntime and onnx: {INSTALL_HINT}") from None
    say = progress or (lambda line: None)
    seconds = {}
    graphs = QUANTIZED_GRAPHS[metadata.get("task", "concept")]
    for name in graphs:
        source = folder / metadata["graphs"][name]["file"]
        target = folder / f"{name}_int8.onnx"
        data = source.with_name(source.name + ".data")
        say(f"quantizing {name} (int8)")
        started = time.perf_counter()
        try:
            with _quantizer_quiet():
                quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                                 per_channel=False, use_external_data_format=data.exists())
        except Exception as exc:  # noqa: BLE001 - the quantizer raises many kinds
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise QuantizeError(f"{name}: onnxruntime's INT8 quantization failed ({first[:200]}); export without "
                                f"quantization, or report it with the onnxruntime version") from None
        source.unlink()
        data.unlink(missing_ok=True)
        metadata["graphs"][name]["file"] = target.name
        seconds[name] = round(time.perf_counter() - started, 1)
    import onnxruntime

    return {"method": METHOD, "graphs": list(graphs), "op_types": ["MatMul"],
            "weights": "int8, symmetric, per tensor", "activations": "uint8, quantized at each call (dynamic)",
            "onnxruntime": onnxruntime.__version__, "seconds": seconds}


def quantize_export(source: str | Path, out: str | Path, progress: Callable[[str], None] | None = None) -> Path:
    """An INT8 copy of the float32 export ``source`` in the new folder ``out`` (torch is not
    needed); atomic, like the export itself."""
    source, out = Path(source), Path(out)
    metadata = read_metadata(source, QuantizeError)
    if metadata is None:
        raise QuantizeError(f"{source}: no {CONFIG_FILE}; give a folder written by `sam3-lora export --onnx`")
    if metadata.get("quantization"):
        raise QuantizeError(f"{source}: already quantized ({metadata['quantization'].get('method')}); quantize "
                            f"a float32 export")
    with sigterm_as_exit(), atomic_folder(out) as work:
        for path in _files_to_copy(source):
            shutil.copy2(path, work / path.name)
        metadata["quantization"] = quantize_folder(work, metadata, progress)
        write_metadata(work, metadata)
    return out


def _files_to_copy(source: Path) -> list[Path]:
    """The export's files but its metadata; a symbolic link leading out of ``source`` is
    refused (it would copy a file from elsewhere into the new export)."""
    files = [path for path in sorted(source.iterdir()) if path.is_file() and path.name != CONFIG_FILE]
    for path in files:
        if inside_folder(source, path.name) is None:
            raise QuantizeError(f"{path}: a link to a file outside {source}; an export holds its own files: "
                                f"replace the link by the file, or export again")
    return files
