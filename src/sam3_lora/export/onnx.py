"""Export a fine-tuned SAM3 as three ONNX graphs that onnxruntime runs without torch.

``export_onnx(weights, out)`` takes a weights folder as ``export_merged`` does (an adapter is
merged into its base first; a whole-model folder is used as it is) and writes the new folder
``out``::

    vision_encoder.onnx   pixel_values (B, 3, S, S) float32
                          -> fpn_0 (B, C, 4g, 4g), fpn_1 (B, C, 2g, 2g), fpn_2 (B, C, g, g)
    text_encoder.onnx     input_ids, attention_mask (K, T) int64 -> text_features (K, T, D)
    prompt_decoder.onnx   fpn_0, fpn_1, fpn_2 of ONE image (1, C, ., .), text_features (K, T, D),
                          text_mask (K, T) int64, input_boxes (K, n, 4) float32 cxcywh in [0, 1],
                          input_boxes_labels (K, n) int64 (1 positive, 0 negative, -10 padding)
                          -> pred_logits (K, N), pred_boxes (K, N, 4) xyxy in [0, 1],
                             pred_masks (K, N, M, M) logits, presence_logits (K, 1)
    tokenizer.json, tokenizer_config.json
    sam3_onnx.json        format, image size and normalisation, tokenizer settings, score
                          rule, box-prompt conventions, graph inputs and outputs, versions,
                          export seconds, quantization, file sizes

(g = S / 14; C = D = 256 for SAM3; T = 32; N = 200 queries; M = 4g.) B, K and n are
dynamic; one image encoding serves all K prompts, as in PyTorch. S and T are fixed by the
model (its position ids). Graphs whose weights pass 1 GiB keep them in ``GRAPH.onnx.data``.
``serve.onnx_engine.SAM3OnnxInference`` runs the folder with numpy, PIL and ``tokenizers``.
``sam3_onnx.json`` says ``"task": "concept"``; SAM3's tracker (``model.task: interactive``)
exports as two other graphs through ``export.onnx_tracker``.

What the export had to work around (transformers 5.23, torch 2.13), each patch living only
inside ``export_patches`` and undone on exit:

- **SDPA**: the prompt decoder does not export with transformers' "sdpa" attention (torch's
  decomposition of the attention carrying the DETR decoder's float box bias fails: "Cannot
  view a tensor with shape ..."); attention is switched to "eager" (MatMul + Softmax, which
  INT8 quantization also wants) for the export.
- **roi_align** (box prompts): the geometry encoder calls ``torchvision.ops.roi_align(
  features, boxes.unbind(0), 7)``; ``unbind`` over the prompts fixes K in the graph, and
  torchvision may be absent. ``_encode_boxes`` is replaced by a batched copy that pools all
  K x n boxes through one custom op, ``sam3_lora_onnx::roi_align``, translated to ONNX
  ``RoiAlign`` with ``coordinate_transformation_mode="output_half_pixel"`` (= torchvision's
  ``aligned=False``, what SAM3 uses), ``sampling_ratio=0`` (adaptive, = torchvision's -1),
  ``mode="avg"``. Measured against torchvision's kernel over 900 random boxes on 8, 24 and
  72 px maps (sub-pixel, larger than the map, partly outside): within 1.2e-5;
  ``half_pixel`` (= ``aligned=True``) would be off by up to 4.2.
- **No-box prompts and the empty-geometry CLS token**: transformers runs the geometry
  encoder only when boxes are given, so a text-only prompt has NO geometry tokens, not even
  the CLS token that Meta's original code always appends. This package trains and predicts
  text prompts through transformers' path, so the export reproduces it: the graph always
  runs the geometry encoder (a text-only row passes one padding box, label -10), and a hook
  masks every geometry token of rows without a real box out of the prompt (masked tokens get
  zero attention and leave the pooled prompt). Measured on the bundled base: equal to
  transformers' no-box forward within 1.4e-6 (logits) and 6.9e-5 (mask logits); keeping the
  CLS token instead would move logits by up to 0.113 and the presence logit by 0.24.
- ``view_as_complex`` (rotary embedding), the dynamic cumsum and the shape asserts that
  public reports of SAM3 exports mention export as they are in these versions.

The dynamo exporter writes opset 18 and converts upwards only: 18 (the default) to what the
installed onnx knows are accepted, the written opset is checked per graph, and each graph is
then run in onnxruntime at shapes other than the traced ones and compared with PyTorch
(relative error < 1e-3) before the folder appears: an opset this onnxruntime cannot run
(RoiAlign-22 in onnxruntime 1.32) fails the export in one line, never at prediction time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from sam3_lora import __version__
from sam3_lora.config import Config
from sam3_lora.export.merged import ExportError, empty_target, load_merged
from sam3_lora.export.onnx_folder import (
    CONFIG_FILE,
    FORMAT,
    GRAPH_FILES,
    INSTALL_HINT,
    write_metadata,
)
from sam3_lora.export.quantize import quantize_export, quantize_folder
from sam3_lora.files import atomic_folder, sigterm_as_exit
from sam3_lora.model.processing import BOX_PADDING_LABEL, IMAGE_MEAN, IMAGE_STD

DEFAULT_OPSET = 18
MIN_OPSET = 18
"""torch.onnx's dynamo exporter builds opset 18 and converts only upwards: asked for 16 or 17
it warns and keeps 18 in some graphs (measured)."""
QUANTIZE_CHOICES = ("int8",)
EXTERNAL_DATA_BYTES = 1 << 30
"""Graphs with more weight bytes keep them in ``GRAPH.onnx.data`` (protobuf's limit is 2 GiB)."""
TOOLS = ("onnx", "onnxscript", "onnxruntime")
CHECK_TOLERANCE = 1e-3
"""Largest relative error (to the output's largest magnitude) onnxruntime may show against
PyTorch in the export's own check; measured errors are around 1e-6."""

Progress = Callable[[str], None]


class OnnxExportError(ExportError):
    """An ONNX export that cannot be done: one line saying what, and what to do."""


# ---- roi_align as a custom op that becomes ONNX RoiAlign ---------------------------------------

def _roi_align_impl(input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
                    pooled_width: int, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """input (N, C, H, W), rois (R, 5) [batch index, x1, y1, x2, y2] -> (R, C, ph, pw):
    torchvision's kernel where it imports, else the package's pure-torch copy of it."""
    try:
        from torchvision.ops import roi_align
    except Exception:  # noqa: BLE001 - ImportError, or a CUDA build's RuntimeError on a CPU machine
        from sam3_lora.model.roi_align import roi_align
    return roi_align(input, rois, (pooled_height, pooled_width), spatial_scale, sampling_ratio, aligned)


def roi_align_op():
    """``sam3_lora_onnx::roi_align``, registered once per process."""
    namespace = torch.ops.sam3_lora_onnx
    if not hasattr(namespace, "roi_align"):
        op = torch.library.custom_op("sam3_lora_onnx::roi_align", mutates_args=())(_roi_align_impl)

        @op.register_fake
        def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
            return input.new_empty(rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return namespace.roi_align.default


def translation_table() -> dict:
    """The custom op -> its ONNX translation: onnxscript's translation of torchvision's
    roi_align (aligned=False -> output_half_pixel, sampling_ratio <= 0 -> 0, mode avg)."""
    from onnxscript.function_libs.torch_lib.ops.vision import torchvision_roi_align

    return {roi_align_op(): torchvision_roi_align}


def _encode_boxes_batched(self, boxes, boxes_mask, boxes_labels, vision_features):
    """``Sam3GeometryEncoder._encode_boxes`` with one batched roi_align.

    boxes (K, n, 4) cxcywh in [0, 1]; boxes_mask (K, n) bool; boxes_labels (K, n);
    vision_features (K, C, h, w). Returns ((K, n, C) box embeddings, boxes_mask): transformers'
    maths, with the per-row box list (``unbind(0)``, which fixes K in a graph) replaced by one
    (K * n, 5) rois tensor. Equal to the original (tests/export/test_onnx.py).
    """
    from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy

    rows, count = boxes.shape[:2]
    height, width = vision_features.shape[-2:]
    embedded = self.boxes_direct_project(boxes)
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    row = torch.arange(rows, dtype=boxes.dtype, device=boxes.device)[:, None, None]
    rois = torch.cat([row.expand(-1, count, 1), box_cxcywh_to_xyxy(boxes) * scale], dim=-1).reshape(-1, 5)
    # sampling_ratio 0 = adaptive, as torchvision's default -1 (both kernels treat <= 0 alike);
    # 0 spares onnxscript's warning that -1 "is not supported" before it maps it to 0 anyway
    pooled = roi_align_op()(vision_features, rois, 1.0, self.roi_size, self.roi_size, 0, False)
    embedded = embedded + self.boxes_pool_project(pooled).view(rows, count, self.hidden_size)
    center_x, center_y, box_width, box_height = boxes.unbind(-1)
    position = self._encode_box_coordinates(center_x.flatten(), center_y.flatten(), box_width.flatten(),
                                            box_height.flatten()).view(rows, count, -1)
    embedded = embedded + self.boxes_pos_enc_project(position)
    return self.label_embed(boxes_labels.long()) + embedded, boxes_mask


def _drop_geometry_without_boxes(module, args, kwargs, output):
    """Forward hook on the geometry encoder: a row whose boxes are all padding loses every
    geometry token (the CLS included) from the prompt, as transformers' forward without boxes
    has none. (Inside the encoder the CLS stays valid: an all-masked attention row is NaN.)"""
    from transformers.models.sam3.modeling_sam3 import Sam3GeometryEncoderOutput

    has_box = kwargs["box_mask"].any(dim=-1, keepdim=True)   # (K, 1)
    return Sam3GeometryEncoderOutput(last_hidden_state=output.last_hidden_state,
                                     attention_mask=output.attention_mask & has_box)


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    """transformers' warning about sub-configs on ``set_attn_implementation`` is noise here."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@contextlib.contextmanager
def eager_eval(model) -> Iterator[None]:
    """Inside, ``model`` is in eval mode with "eager" attention (MatMul + Softmax: what the
    exporter handles, and what INT8 quantization wants); both restored on exit."""
    was_training = model.training
    attention = model.config._attn_implementation
    try:
        with _transformers_quiet():
            model.set_attn_implementation("eager")
        model.eval()
        yield
    finally:
        with _transformers_quiet():
            model.set_attn_implementation(attention)
        model.train(was_training)


@contextlib.contextmanager
def export_patches(model) -> Iterator[None]:
    """Make ``model`` (a ``Sam3Model``) exportable; all is restored on exit, also after an
    error: eval mode, eager attention, the batched ``_encode_boxes`` and the no-box hook.
    Inside, the wrappers below compute what the graphs compute: the export's reference."""
    geometry = model.geometry_encoder
    hook = geometry.register_forward_hook(_drop_geometry_without_boxes, with_kwargs=True)
    geometry._encode_boxes = types.MethodType(_encode_boxes_batched, geometry)
    try:
        with eager_eval(model):
            yield
    finally:
        hook.remove()
        del geometry._encode_boxes   # the class's method shows through again


# ---- the three graphs as modules --------------------------------------------------------------

class VisionEncoder(nn.Module):
    """pixel_values (B, 3, S, S) -> fpn_0 (B, C, 4g, 4g), fpn_1 (B, C, 2g, 2g), fpn_2 (B, C, g, g):
    the three levels SAM3's heads read. The fourth level (never read) and the position
    encodings (a function of the image size alone: the decoder computes them) are left out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.model.get_vision_features(pixel_values=pixel_values).fpn_hidden_states
        return levels[0], levels[1], levels[2]


class TextEncoder(nn.Module):
    """input_ids, attention_mask (K, T) -> text_features (K, T, D): the text encoder's last
    hidden state through SAM3's projection (``get_text_features(...).pooler_output``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class PromptDecoder(nn.Module):
    """One image's three levels (1, C, ., .) and K prompts -> SAM3's outputs for the K prompts.

    text_features (K, T, D), text_mask (K, T) int64, input_boxes (K, n, 4) cxcywh in [0, 1],
    input_boxes_labels (K, n) int64 (a row of padding boxes, label -10, is a text-only
    prompt). Returns pred_logits (K, N), pred_boxes (K, N, 4), pred_masks (K, N, M, M),
    presence_logits (K, 1). Run it inside ``export_patches``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fpn_0, fpn_1, fpn_2, text_features, text_mask, input_boxes, input_boxes_labels):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        rows = text_features.shape[0]
        levels = tuple(level.expand(rows, -1, -1, -1) for level in (fpn_0, fpn_1, fpn_2))
        position = self.model.vision_encoder.neck.position_encoding(fpn_2.shape, fpn_2.device, fpn_2.dtype)
        vision = Sam3VisionEncoderOutput(
            fpn_hidden_states=(*levels, None),   # Sam3Model drops the last level
            fpn_position_encoding=(None, None, position.expand(rows, -1, -1, -1), None),
        )
        out = self.model(vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(pooler_output=text_features),
                         attention_mask=text_mask, input_boxes=input_boxes, input_boxes_labels=input_boxes_labels)
        return out.pred_logits, out.pred_boxes, out.pred_masks, out.presence_logits


# ---- checks done before anything is loaded -------------------------------------------------------

def check_onnx_tools(opset: int) -> dict[str, str]:
    """The export toolchain's versions; a missing tool or an unusable ``opset`` is one line."""
    versions = {"sam3_lora": __version__, "torch": torch.__version__}
    missing = []
    for name in TOOLS:
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxExportError(f"ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")
    import onnx
    import transformers

    versions["transformers"] = transformers.__version__
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise OnnxExportError(f"opset {opset}: choose {MIN_OPSET}..{newest} (torch.onnx writes opset {MIN_OPSET} and "
                              f"converts only upwards; onnx {onnx.__version__} knows up to {newest}); "
                              f"{DEFAULT_OPSET} is the default", option="opset")
    return versions


def check_quantize(quantize: str | None) -> None:
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise OnnxExportError(f"quantize {quantize!r}: choose int8 (dynamic INT8 weights of the vision and text "
                              f"encoders) or none", option="quantize")


# ---- export ----------------------------------------------------------------------------------------

def export_onnx(weights: str | Path, out: str | Path, config: Config | None = None, *, opset: int = DEFAULT_OPSET,
                quantize: str | None = None, progress: Progress | None = None) -> Path:
    """Export the model in ``weights`` (an adapter, merged into its base first; or a
    whole-model folder) to the new folder ``out``; returns it. ``weights`` may also be a
    float32 ONNX export: with ``quantize="int8"`` it is then quantized into ``out`` without
    exporting again (minutes and gigabytes saved at full size).

    ``config`` names the adapter's base (default: the base the adapter records), as for
    ``export_merged`` (``model.task: interactive``, the tracker, is
    ``export.onnx_tracker.export_tracker_onnx_from``). ``quantize="int8"``: dynamic INT8 of the vision and text encoders
    (``export.quantize``). ``progress`` receives one line per step. Everything is checked
    before the model loads: the tools, ``opset``, ``quantize``, and that ``out`` is new or
    an empty folder.
    """
    versions = check_onnx_tools(opset)
    check_quantize(quantize)
    out = empty_target(out)
    if (Path(weights) / CONFIG_FILE).is_file():   # an ONNX export already: it can be quantized (checked there)
        if not quantize:
            raise OnnxExportError(f"{weights}: is an ONNX export already; to make an INT8 copy of it, ask for "
                                  f"int8 quantization", option="quantize")
        return quantize_export(weights, out, progress)
    if config is not None and config.model.task == "interactive":
        raise OnnxExportError("model.task=interactive: the tracker exports through "
                              "export.onnx_tracker.export_tracker_onnx_from (sam3-lora export --onnx chooses it)",
                              option="config")
    loaded = load_merged(weights, config)
    loaded.model.float()   # a folder saved in bfloat16 loads as such; the graphs compute in float32
    return export_sam3_onnx(loaded.model, loaded.tokenizer, out, opset=opset, quantize=quantize,
                            progress=progress, versions=versions)


def export_sam3_onnx(model, tokenizer, out: str | Path, *, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                     check: bool = True, progress: Progress | None = None, versions: dict | None = None) -> Path:
    """Export a plain ``Sam3Model`` in memory (a LoRA must be merged first) with its
    transformers tokenizer to the new folder ``out``; returns it.

    ``check`` runs every graph in onnxruntime against PyTorch before the folder appears.
    The folder is written next to ``out`` under a hidden name and renamed at the end: a
    failure, Ctrl-C or SIGTERM leaves no ``out`` and no hidden folder (one killed outright
    is removed by the next export, or any atomic write, into the same parent folder).
    """
    versions = versions or check_onnx_tools(opset)
    check_quantize(quantize)
    from transformers import Sam3Model

    model = plain_model(model, Sam3Model)
    out = empty_target(out)
    say = progress or (lambda line: None)
    with sigterm_as_exit(), atomic_folder(out) as work:
        started = time.perf_counter()
        max_length = model.config.text_config.max_position_embeddings
        with export_patches(model), torch.no_grad():
            inputs = _example_inputs(model, tokenizer, max_length)
            seconds = _export_graphs(model, inputs, work, opset, say)
            if check:
                _check_graphs(model, inputs, work, say)
        tokenizer.save_pretrained(work)
        metadata = _metadata(model, versions, opset, _tokenizer_spec(tokenizer, work, max_length), seconds)
        finish_folder(work, metadata, quantize, started, say)
    say(f"wrote {out}")
    return out


def finish_folder(work: Path, metadata: dict, quantize: str | None, started: float, say) -> None:
    """The last steps of an export into ``work`` (either task): the INT8 copy of its graphs
    if asked, the total time since ``started`` (``time.perf_counter()``), ``sam3_onnx.json``."""
    if quantize:
        metadata["quantization"] = quantize_folder(work, metadata, say)
    metadata["export_seconds"]["total"] = round(time.perf_counter() - started, 1)
    write_metadata(work, metadata)


def plain_model(model, expected: type, what: str = "the model"):
    """``model`` itself if it can be exported: an ``expected`` transformers model, no adapter
    left on it, float32 weights; else one line saying what to do."""
    if hasattr(model, "peft_config"):
        raise OnnxExportError(f"{what} still carries a LoRA adapter: merge it first "
                              f"(model = peft_model.merge_and_unload()), then export")
    if not isinstance(model, expected):
        raise OnnxExportError(f"expected a transformers {expected.__name__}, got {type(model).__name__}")
    dtypes = {str(p.dtype).removeprefix("torch.") for p in model.parameters()}
    if dtypes != {"float32"}:
        raise OnnxExportError(f"{what}'s weights are {', '.join(sorted(dtypes))}; the export computes in float32: "
                              f"export model.float() (quantize afterwards for a smaller, faster model)")
    return model


def _example_inputs(model, tokenizer, max_length: int) -> tuple:
    """Example inputs with every dynamic size 2 or more (B = 2 images, K = 3 prompts, n = 2
    boxes): torch.export specialises a dimension it sees as 1."""
    size = model.config.vision_config.backbone_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    encoded = tokenizer(["a red circle", "blue square", "x"], padding="max_length", max_length=max_length,
                        truncation=True, return_tensors="pt")
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.3], [0.3, 0.7, 0.2, 0.2]]]).expand(3, -1, -1).contiguous()
    labels = torch.tensor([[1, BOX_PADDING_LABEL], [1, 0], [BOX_PADDING_LABEL, BOX_PADDING_LABEL]])
    return pixel_values, encoded["input_ids"], encoded["attention_mask"], boxes, labels


def _weight_bytes(*modules: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def _export_graphs(model, inputs: tuple, work: Path, opset: int, say: Progress) -> dict[str, float]:
    """The three graphs into ``work``; returns seconds per graph."""
    pixel_values, input_ids, attention_mask, boxes, labels = inputs
    batch = torch.export.Dim("batch", min=1, max=4096)
    prompts = torch.export.Dim("prompts", min=1, max=4096)
    count = torch.export.Dim("boxes", min=1, max=1024)
    levels = VisionEncoder(model)(pixel_values[:1])
    text_features = TextEncoder(model)(input_ids, attention_mask)
    jobs = {
        "vision_encoder": (VisionEncoder(model), (pixel_values,), ["pixel_values"], ["fpn_0", "fpn_1", "fpn_2"],
                           ({0: batch},), [model.vision_encoder]),
        "text_encoder": (TextEncoder(model), (input_ids, attention_mask), ["input_ids", "attention_mask"],
                         ["text_features"], ({0: prompts}, {0: prompts}), [model.text_encoder, model.text_projection]),
        "prompt_decoder": (PromptDecoder(model), (*levels, text_features, attention_mask, boxes, labels),
                           ["fpn_0", "fpn_1", "fpn_2", "text_features", "text_mask", "input_boxes",
                            "input_boxes_labels"],
                           ["pred_logits", "pred_boxes", "pred_masks", "presence_logits"],
                           (None, None, None, {0: prompts}, {0: prompts}, {0: prompts, 1: count}, {0: prompts, 1: count}),
                           [model.geometry_encoder, model.detr_encoder, model.detr_decoder, model.mask_decoder,
                            model.dot_product_scoring]),
    }
    seconds = {}
    for name, (module, args, input_names, output_names, dynamic, parts) in jobs.items():
        say(f"exporting {name}")
        started = time.perf_counter()
        export_graph(module.eval(), args, work / GRAPH_FILES[name], input_names, output_names, dynamic, opset,
                     external=_weight_bytes(*parts) > EXTERNAL_DATA_BYTES)
        seconds[name] = round(time.perf_counter() - started, 1)
    return seconds


def export_graph(module: nn.Module, args: tuple, path: Path, input_names: Sequence[str],
                 output_names: Sequence[str], dynamic_shapes, opset: int, external: bool = False) -> None:
    """``torch.onnx.export`` (dynamo) of one graph to ``path``; its failures as one line, and
    the written opset checked (the exporter keeps its own, with a warning only, when it
    cannot convert)."""
    try:
        with _exporter_quiet():
            torch.onnx.export(module, args, str(path), dynamo=True, opset_version=opset, external_data=external,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=dynamic_shapes, custom_translation_table=translation_table())
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds, as long reports
        raise OnnxExportError(f"{path.stem}: torch.onnx.export failed at opset {opset}: {_summary(exc)}; try "
                              f"another opset, or report it with these versions (torch {torch.__version__})"
                              ) from None
    import onnx

    written = {entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import
               if entry.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise OnnxExportError(f"{path.stem}: asked for opset {opset}, the exporter wrote {sorted(written)}; "
                              f"use opset {DEFAULT_OPSET} (the default)", option="opset")


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """The exporter's progress prints ("[torch.onnx] ... ✅") and warnings, silenced; its
    errors still arrive as exceptions."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _summary(exc: BaseException) -> str:
    """The telling line of an exporter exception (its "Exception summary" when it has one)."""
    text = str(exc)
    if "## Exception summary" in text:
        tail = [line.strip() for line in text.split("## Exception summary", 1)[1].splitlines() if line.strip()]
        return " ".join(tail[:2])[:300]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300]


def ort_session(path: Path, threads: int = 1):
    """An onnxruntime CPU session on ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_graphs(model, inputs: tuple, work: Path, say: Progress) -> None:
    """Each graph in onnxruntime at shapes other than the traced ones (B = 1, K = 4, n = 3,
    rows with boxes, with a negative box, and without) against the patched PyTorch modules;
    a graph onnxruntime cannot run, or whose answers differ, fails the export."""
    pixel_values, input_ids, attention_mask, boxes, _ = inputs
    ids, mask = torch.cat([input_ids, input_ids[:1]]), torch.cat([attention_mask, attention_mask[:1]])
    boxes4 = torch.cat([boxes, boxes[:1]])[:, [0, 1, 0]].contiguous()
    labels4 = torch.tensor([[1, 0, BOX_PADDING_LABEL], [1, BOX_PADDING_LABEL, BOX_PADDING_LABEL],
                            [BOX_PADDING_LABEL] * 3, [0, 1, 1]])
    levels = VisionEncoder(model)(pixel_values[:1])
    features = TextEncoder(model)(ids, mask)
    decoded = PromptDecoder(model)(*levels, features, mask, boxes4, labels4)
    cases = {
        "vision_encoder": ({"pixel_values": pixel_values[:1]}, levels),
        "text_encoder": ({"input_ids": ids, "attention_mask": mask}, (features,)),
        "prompt_decoder": ({"fpn_0": levels[0], "fpn_1": levels[1], "fpn_2": levels[2], "text_features": features,
                            "text_mask": mask, "input_boxes": boxes4, "input_boxes_labels": labels4}, decoded),
    }
    for name, (feeds, expected) in cases.items():
        check_in_onnxruntime(work / GRAPH_FILES[name], name, feeds, expected, say)


def check_in_onnxruntime(path: Path, name: str, feeds: dict[str, torch.Tensor], expected: Sequence[torch.Tensor],
                         say: Progress) -> None:
    """Run graph ``name`` (the file ``path``) in onnxruntime on ``feeds`` and compare each
    output with PyTorch's ``expected`` (relative error < ``CHECK_TOLERANCE``); a graph that
    cannot run, or answers otherwise, is one line."""
    import numpy as np
    import onnxruntime as ort

    try:
        got = ort_session(path).run(None, {k: v.numpy() for k, v in feeds.items()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated classes
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise OnnxExportError(f"{name}: onnxruntime {ort.__version__} cannot run the exported graph "
                              f"({first[:200]}); export with opset {DEFAULT_OPSET} (the default) or upgrade "
                              f"onnxruntime", option="opset") from None
    for array, reference in zip(got, expected, strict=True):
        reference = reference.numpy()
        error = float(np.abs(array - reference).max()) / max(float(np.abs(reference).max()), 1.0)
        if array.shape != reference.shape or not error < CHECK_TOLERANCE:
            raise OnnxExportError(f"{name}: onnxruntime disagrees with PyTorch (shape {array.shape} vs "
                                  f"{reference.shape}, relative error {error:.1e}); the export is unusable: "
                                  f"please report it with the versions of torch and onnxruntime")
    say(f"checked {name} in onnxruntime {ort.__version__}")


def _tokenizer_spec(tokenizer, work: Path, max_length: int) -> dict:
    """How ``tokenizers`` alone reproduces ``tokenizer(..., padding="max_length",
    truncation=True)``; checked on awkward prompts, so that a mismatch fails the export
    rather than the predictions."""
    import numpy as np
    from tokenizers import Tokenizer

    if not (work / "tokenizer.json").is_file():
        raise OnnxExportError(f"{type(tokenizer).__name__} wrote no tokenizer.json; the ONNX engine needs a fast "
                              f"(tokenizers) tokenizer")
    spec = {"file": "tokenizer.json", "max_length": max_length, "pad_id": int(tokenizer.pad_token_id),
            "pad_token": tokenizer.pad_token}
    fast = Tokenizer.from_file(str(work / "tokenizer.json"))
    fast.enable_truncation(max_length=max_length)
    fast.enable_padding(length=max_length, pad_id=spec["pad_id"], pad_token=spec["pad_token"])
    probes = ["red circle", "A Yellow TRIANGLE", "", "  spaces  ", "naïve café ☃", "word " * 40]
    expected = tokenizer(probes, padding="max_length", max_length=max_length, truncation=True)
    for probe, encoding, ids, mask in zip(probes, fast.encode_batch(probes), expected["input_ids"],
                                          expected["attention_mask"], strict=True):
        if encoding.ids != list(ids) or not np.array_equal(encoding.attention_mask, mask):
            raise OnnxExportError(f"tokenizer.json alone does not reproduce {type(tokenizer).__name__} on "
                                  f"{probe[:20]!r}; the ONNX engine could not tokenize as PyTorch does")
    return spec


def _metadata(model, versions: dict, opset: int, text: dict, seconds: dict) -> dict:
    """The contents of ``sam3_onnx.json`` (what the engine reads, and what a reader needs)."""
    config = model.config
    size = config.vision_config.backbone_config.image_size
    grid = size // config.vision_config.backbone_config.patch_size
    width, queries = config.vision_config.fpn_hidden_size, config.detr_decoder_config.num_queries
    length = text["max_length"]
    levels = {f"fpn_{i}": [scale * grid, scale * grid] for i, scale in enumerate((4, 2, 1))}
    return {
        "format": FORMAT,
        "task": "concept",
        "sam3_lora_version": __version__,
        "exported_with": versions,
        "opset": opset,
        "image": {"size": size, "resize": "direct bilinear, antialiased (torch antialias=True), not aspect-preserving",
                  "rescale": 1 / 255, "mean": [IMAGE_MEAN] * 3, "std": [IMAGE_STD] * 3},
        "text": {**text, "vocab_size": config.text_config.vocab_size},   # the engine checks the tokenizer's ids
        "score": {"rule": "sigmoid(pred_logits) * sigmoid(presence_logits)", "default_threshold": 0.5,
                  "mask": "bilinear resize of mask logits to the image (align_corners=False), then > 0"},
        "box_prompts": {"format": "cxcywh in [0, 1]",
                        "labels": {"positive": 1, "negative": 0, "padding": BOX_PADDING_LABEL},
                        "roi_align": "ONNX RoiAlign, output_half_pixel (torchvision aligned=False), sampling_ratio 0, "
                                     "avg",
                        "no_boxes": "one padding box per prompt; its geometry tokens (CLS included) are masked out, "
                                    "as transformers' text-only forward has none"},
        "num_queries": queries,
        "mask_size": 4 * grid,
        "graphs": {
            "vision_encoder": {"file": GRAPH_FILES["vision_encoder"],
                               "inputs": {"pixel_values": ["batch", 3, size, size]},
                               "outputs": {k: ["batch", width, *v] for k, v in levels.items()}},
            "text_encoder": {"file": GRAPH_FILES["text_encoder"],
                             "inputs": {"input_ids": ["prompts", length], "attention_mask": ["prompts", length]},
                             "outputs": {"text_features": ["prompts", length, width]}},
            "prompt_decoder": {"file": GRAPH_FILES["prompt_decoder"],
                               "inputs": {**{k: [1, width, *v] for k, v in levels.items()},
                                          "text_features": ["prompts", length, width],
                                          "text_mask": ["prompts", length],
                                          "input_boxes": ["prompts", "boxes", 4],
                                          "input_boxes_labels": ["prompts", "boxes"]},
                               "outputs": {"pred_logits": ["prompts", queries], "pred_boxes": ["prompts", queries, 4],
                                           "pred_masks": ["prompts", queries, 4 * grid, 4 * grid],
                                           "presence_logits": ["prompts", 1]}},
        },
        "export_seconds": seconds,
        "quantization": None,
    }
