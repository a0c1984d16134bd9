"""The ONNX export folder's format: its file names, ``sam3_onnx.json``'s schema, and the
checks made before anything in a folder is opened. No torch: ``serve.onnx_engine`` runs
without it.

``export.onnx`` writes such a folder, ``export.quantize`` rewrites its encoders in INT8 and
``serve.onnx_engine`` runs it; the last two read the folder through ``read_metadata`` and
``check_graph``, so a damaged or hostile folder is refused the same way by both, in one line:

- ``sam3_onnx.json`` must be UTF-8 JSON of at most ``MAX_METADATA_BYTES``, of this format,
  and match ``Metadata`` (types checked strictly: ``"32"`` is no integer, ``112.7`` no image
  size; sizes bounded, so that a wrong number cannot make a reader allocate gigabytes);
- every file it names (the graphs, their ``.data`` files, the tokenizer) must lie inside the
  folder, by its text and through symbolic links (``files.inside_folder``): a name is
  refused before anything opens, quantizes or deletes it;
- its graphs must be those of its ``task`` (``TASKS``: a concept export, the default, or
  the tracker's ``interactive`` one);
- the sizes it states must agree with each other (``image.size`` with the vision encoder's
  input, ``text.max_length`` with the text encoder's, ``tracker.mask_size`` with the mask
  decoder's mask input) and, once onnxruntime has loaded each
  graph, with the graph's own inputs and outputs (``check_graph``): graphs swapped between
  file names, or an edited size, are refused before any image runs.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import inside_folder

FORMAT = "sam3-lora-onnx/1"
"""What ``sam3_onnx.json`` says the folder is; the number changes with the graphs' interface."""
CONFIG_FILE = "sam3_onnx.json"
GRAPH_FILES = {"vision_encoder": "vision_encoder.onnx", "text_encoder": "text_encoder.onnx",
               "prompt_decoder": "prompt_decoder.onnx"}
GRAPH_IO = {
    "vision_encoder": (("pixel_values",), ("fpn_0", "fpn_1", "fpn_2")),
    "text_encoder": (("input_ids", "attention_mask"), ("text_features",)),
    "prompt_decoder": (("fpn_0", "fpn_1", "fpn_2", "text_features", "text_mask", "input_boxes",
                        "input_boxes_labels"), ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")),
}
"""Each graph's input and output names, in order: what the engine feeds and reads."""
TRACKER_GRAPH_FILES = {"image_encoder": "image_encoder.onnx", "mask_decoder": "mask_decoder.onnx"}
"""``task: interactive`` (SAM3's tracker, SAM's split): the image encoded once, then one
mask-decoder run per click."""
TRACKER_GRAPH_IO = {
    "image_encoder": (("pixel_values",), ("image_embeddings", "high_res_features_0", "high_res_features_1")),
    "mask_decoder": (("image_embeddings", "high_res_features_0", "high_res_features_1", "point_coords",
                      "point_labels", "mask_input", "has_mask_input"), ("masks", "iou_scores", "object_score_logits")),
}
TASKS = {"concept": (GRAPH_FILES, GRAPH_IO), "interactive": (TRACKER_GRAPH_FILES, TRACKER_GRAPH_IO)}
"""``sam3_onnx.json``'s ``task`` -> its graphs' file names and input / output names. A folder
without ``task`` (exported before the tracker could be) is a concept export."""
INSTALL_HINT = "pip install 'sam3-lora[onnx]'"
MAX_METADATA_BYTES = 1_000_000
"""A written ``sam3_onnx.json`` is a few kB."""
MAX_SIZE = 16_384
"""Bound on every size the metadata states (pixels, tokens, a graph dimension): SAM3's are
1008 px and 32 tokens; a larger number is damage, and would be allocated as it stands."""
MAX_TOKEN_ID = 2**31 - 1

FileName = Annotated[str, Field(min_length=1, max_length=1000)]
"""A file of the folder, relative to it (``files.inside_folder`` checks where it leads)."""
Size = Annotated[int, Field(ge=1, le=MAX_SIZE)]
Dimension = Size | Annotated[str, Field(min_length=1, max_length=64)]
"""A graph dimension: a fixed size, or the name of a dynamic one ("batch", "prompts")."""
Finite = Annotated[float, Field(allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Part(BaseModel):
    """Strict types (no "32" for 32, no 112.7 for an int, no NaN); fields not listed here
    (the descriptions a reader may want) are kept, unchecked."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class GraphSpec(_Part):
    file: FileName
    inputs: dict[str, list[Dimension]]
    outputs: dict[str, list[Dimension]]


class ImageSpec(_Part):
    size: Annotated[int, Field(ge=14, le=MAX_SIZE)]
    """Side of the square the image is resized to, px (one 14 px patch at least)."""
    mean: Annotated[list[Finite], Field(min_length=3, max_length=3)]
    """Per RGB channel, in [0, 1] units."""
    std: Annotated[list[Positive], Field(min_length=3, max_length=3)]


class TextSpec(_Part):
    file: FileName
    max_length: Size
    """Tokens per prompt, T."""
    pad_id: Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
    pad_token: Annotated[str, Field(min_length=1, max_length=64)]
    vocab_size: Annotated[int, Field(ge=1, le=MAX_TOKEN_ID)] | None = None
    """Rows of the text encoder's token embedding: every token id must be below it (None in
    exports made before it was recorded)."""


class TrackerSpec(_Part):
    """How the engine turns the mask decoder's outputs into one answer (``task: interactive``)."""

    mask_size: Size
    """Side m of the mask logits (and of the mask input), 4x the patch grid."""
    mask_tokens: Annotated[int, Field(ge=1, le=16)]
    """Masks the decoder returns: token 0 the single-mask answer, 1.. the multimask ones."""
    dynamic_multimask_via_stability: bool
    """Without multimask output, fall back to the best multimask answer when mask 0 is unstable."""
    stability_delta: Finite
    stability_thresh: Finite


class Metadata(_Part):
    format: str
    task: Literal["concept", "interactive"] = "concept"
    exported_with: dict[str, str]
    opset: Annotated[int, Field(ge=1, le=1000)]
    image: ImageSpec
    text: TextSpec | None = None
    """The tokenizer: concept exports only (the tracker reads no text)."""
    tracker: TrackerSpec | None = None
    """Interactive exports only."""
    graphs: dict[str, GraphSpec]
    """Graph name -> its file and shapes; the names are ``TASKS[task]``'s (checked after the schema)."""
    quantization: dict[str, Any] | None = None


def read_metadata(folder: str | Path, error: type[Sam3LoraError] = Sam3LoraError) -> dict | None:
    """``folder``'s ``sam3_onnx.json``, checked as the module docstring says (each problem is
    one line, raised as ``error``), or None when the folder has none (it is no ONNX export).
    Nothing but that file is opened."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    metadata = _read_json(path, error)
    if not isinstance(metadata, dict):
        raise error(f"{path}: is a JSON {type(metadata).__name__}, not an object; export again")
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        raise error(f"{path}: format {str(found)[:40]!r}, this sam3-lora reads {FORMAT}; export again with this "
                    f"version")
    try:
        Metadata.model_validate(metadata)
    except ValidationError as exc:
        raise error(f"{path}: {_schema_problem(exc)}; the folder is damaged: export again") from None
    problem = _sizes_problem(metadata) or _outside_problem(folder, metadata)
    if problem:
        raise error(f"{path}: {problem}")
    return metadata


def _read_json(path: Path, error: type[Sam3LoraError]) -> Any:
    """The JSON value in ``path``: too large, unreadable, not UTF-8, invalid or too deeply
    nested is one line."""
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_METADATA_BYTES else None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if data is None:
        raise error(f"{path}: larger than {MAX_METADATA_BYTES:,} bytes, which no export writes; export again")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte at offset {exc.start}); the folder is damaged: export "
                    f"again") from None
    except (ValueError, RecursionError) as exc:   # JSONDecodeError is a ValueError; deep nesting recurses
        raise error(f"{path}: not valid JSON ({type(exc).__name__}); the folder is damaged: export "
                    f"again") from None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 1, 40, 40, 4, 4


def _schema_problem(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``key: what is wrong (got value)``, and how many
    more there are; values shortened, so that the message stays one short line."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    got = "" if first["type"] == "missing" else f" (got {_SHORT.repr(first.get('input')).replace(chr(10), ' ')})"
    more = f"; and {len(errors) - 1} more" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{got}{more}"


def _sizes_problem(metadata: dict) -> str | None:
    """Where the metadata contradicts itself: the graphs' names, the image size or the
    prompt length against the graphs' stated shapes."""
    task = metadata.get("task", "concept")
    graphs, (_, graph_io) = metadata["graphs"], TASKS[task]
    if list(graphs) != list(graph_io):
        return (f"graphs: {list(graphs)[:8]}, but task {task} exports have {list(graph_io)}; the folder is damaged: "
                f"export again")
    part = "text" if task == "concept" else "tracker"
    if metadata.get(part) is None:
        return f"{part}: missing, which every {task} export states; the folder is damaged: export again"
    for name, (inputs, outputs) in graph_io.items():
        stated = (tuple(graphs[name]["inputs"]), tuple(graphs[name]["outputs"]))
        if stated != (inputs, outputs):
            return (f"graphs.{name} has inputs {list(stated[0])} and outputs {list(stated[1])}, not {list(inputs)} "
                    f"and {list(outputs)}; the folder is damaged: export again")
    encoder = next(iter(graph_io))   # the graph that reads the image
    size, pixels = metadata["image"]["size"], graphs[encoder]["inputs"]["pixel_values"]
    if pixels[-2:] != [size, size]:
        return f"image.size {size} disagrees with the {encoder.replace('_', ' ')}'s input {pixels}; export again"
    if task == "interactive":
        side, masks = metadata["tracker"]["mask_size"], graphs["mask_decoder"]["inputs"]["mask_input"]
        if masks[-2:] != [side, side]:
            return f"tracker.mask_size {side} disagrees with the mask decoder's mask_input {masks}; export again"
        return None
    length, ids = metadata["text"]["max_length"], graphs["text_encoder"]["inputs"]["input_ids"]
    if ids[-1:] != [length]:
        return f"text.max_length {length} disagrees with the text encoder's input {ids}; export again"
    return None


def named_files(metadata: dict) -> dict[str, str]:
    """Every file the metadata names, by the field naming it: each graph and the tokenizer."""
    files = {f"graphs.{name}.file": spec["file"] for name, spec in metadata["graphs"].items()}
    return {**files, "text.file": metadata["text"]["file"]} if metadata.get("text") else files


def _outside_problem(folder: Path, metadata: dict) -> str | None:
    """The first file the metadata names outside ``folder`` (or missing), with the field
    naming it. A graph's weights file ``GRAPH.onnx.data`` is checked with its graph."""
    for field, name in named_files(metadata).items():
        path = inside_folder(folder, name)
        data = inside_folder(folder, name + ".data")
        if path is None or data is None:
            return (f"{field} {name[:200]!r} leads outside {folder}; refused, nothing opened: an export names only "
                    f"files in its own folder (export again, or fix the name)")
        if not path.is_file():
            return f"{field}: {path}: missing; copy the whole export folder, or export again"
    return None


def check_graph(name: str, inputs: dict[str, list], outputs: dict[str, list], metadata: dict,
                error: type[Sam3LoraError] = Sam3LoraError) -> None:
    """A loaded graph's own ``inputs`` and ``outputs`` (name -> shape, as onnxruntime lists
    them: sizes, names of dynamic sizes, or None) against what ``metadata`` states for
    ``name``; a graph under another graph's file name, or of other sizes, is one line."""
    spec = metadata["graphs"][name]
    for kind, got, stated in (("inputs", inputs, spec["inputs"]), ("outputs", outputs, spec["outputs"])):
        if list(got) != list(stated):
            raise error(f"{spec['file']}: has {kind} {list(got)[:8]}, the {name} has {list(stated)}; the graphs "
                        f"are swapped or damaged: export again")
        for tensor, shape in got.items():
            if not _same_shape(shape, stated[tensor]):
                raise error(f"{spec['file']}: {tensor} has shape {shape}, {CONFIG_FILE} states {stated[tensor]}; "
                            f"the folder is damaged: export again")


def _same_shape(got: list, stated: list) -> bool:
    """Same rank, and equal where both are fixed sizes (a dynamic size matches anything)."""
    return len(got) == len(stated) and all(
        not isinstance(a, int) or not isinstance(b, int) or a == b for a, b in zip(got, stated, strict=True))
