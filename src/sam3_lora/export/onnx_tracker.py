"""Export SAM3's tracker (``model.task: interactive``) as SAM's two ONNX graphs: the image
encoded once, then one small mask-decoder run per click.

``export_tracker_onnx(model, out)`` writes the new folder ``out``::

    image_encoder.onnx   pixel_values (B, 3, S, S) float32
                         -> image_embeddings (B, C, g, g)   (the no-memory embedding added)
                            high_res_features_0 (B, C/8, 4g, 4g), high_res_features_1 (B, C/4, 2g, 2g)
                            (the FPN's two finer levels through the mask decoder's conv_s0 / conv_s1)
    mask_decoder.onnx    image_embeddings, high_res_features_0, high_res_features_1 of ONE image,
                         point_coords (1, n, 2) float32 x, y in pixels of the S x S input,
                         point_labels (1, n) int64: 1 object, 0 not it, 2 / 3 a box's top-left /
                             bottom-right corner, -1 "not a point" (the padding token SAM appends),
                         mask_input (1, 1, m, m) float32 (previous mask logits, or a mask in [0, 1]),
                         has_mask_input (1,) float32: 1 use mask_input, 0 ignore it
                         -> masks (1, T, m, m) logits, iou_scores (1, T), object_score_logits (1, 1)
    sam3_onnx.json       ``task: interactive``, image size and normalisation, the ``tracker``
                         section (mask size, tokens, the stability rule), graphs, versions

(g = S / 14, m = 4g, T = 4 mask tokens.) n is dynamic. The decoder returns ALL T masks and
scores, so one graph serves both of SAM's modes and the engine chooses: ``multimask_output``
(a lone click: masks 1..3, the best predicted IoU kept) or the single mask 0, replaced by the
best of 1..3 when it is unstable (transformers' ``dynamic_multimask_via_stability``, applied
by the engine with the thresholds recorded in ``tracker``). ``serve.onnx_tracker`` runs it.

A box is two points with labels 2 and 3, as in SAM's ONNX export: transformers embeds a box's
corners exactly as points with those labels, and appends one "not a point" token (label -1)
after the prompt when the prompt is points alone or ends in a box; the engine feeds points,
then the corners, then that token, so the graph reproduces transformers' token sequence.
The mask input is blended by ``has_mask_input`` (SAM's ONNX convention): 0 gives the
"no mask" embedding exactly, 1 the embedded mask.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from sam3_lora import __version__
from sam3_lora.config import Config
from sam3_lora.export.merged import empty_target
from sam3_lora.export.onnx import (
    DEFAULT_OPSET,
    EXTERNAL_DATA_BYTES,
    Progress,
    check_in_onnxruntime,
    check_onnx_tools,
    check_quantize,
    eager_eval,
    export_graph,
    export_onnx,
    finish_folder,
    plain_model,
)
from sam3_lora.export.onnx_folder import (
    CONFIG_FILE,
    FORMAT,
    TRACKER_GRAPH_FILES,
    TRACKER_GRAPH_IO,
)
from sam3_lora.files import atomic_folder, sigterm_as_exit
from sam3_lora.model.folders import is_model_folder
from sam3_lora.model.processing import IMAGE_MEAN, IMAGE_STD

NOT_A_POINT = -1
"""SAM's label of the padding token appended after a prompt."""
BOX_CORNER_LABELS = (2, 3)
"""The labels of a box's top-left and bottom-right corners, as points."""


def load_merged_tracker(weights: str | Path, config: Config):
    """The tracker in ``weights`` as one plain ``Sam3TrackerModel`` (eval, CPU, float32) with
    its processor: an adapter merged into ``config.model.source``'s tracker, or a whole-model
    folder as it is (``lora.weights.load_base`` loads either)."""
    from sam3_lora.lora.adapter import check_mergeable, load_adapter
    from sam3_lora.lora.weights import load_base

    whole = is_model_folder(weights)
    if not whole:
        check_mergeable(weights)
    loaded = load_base(config, str(weights) if whole else config.model.source, torch.float32, "cpu")
    if not whole:
        loaded.model = load_adapter(loaded.model, weights).merge_and_unload().eval()
    return loaded


def export_tracker_onnx_from(weights: str | Path, out: str | Path, config: Config, *, opset: int = DEFAULT_OPSET,
                             quantize: str | None = None, progress: Progress | None = None) -> Path:
    """``export.onnx.export_onnx`` for ``config.model.task: interactive``: the tracker in
    ``weights`` (an adapter merged into ``config.model.source``'s tracker, or a whole-model
    folder) to the new folder ``out``; the tools, ``opset``, ``quantize`` and ``out`` are
    checked before the model loads. An ONNX export as ``weights`` is quantized as there."""
    versions = check_onnx_tools(opset)
    check_quantize(quantize)
    out = empty_target(out)
    if (Path(weights) / CONFIG_FILE).is_file():   # an ONNX export already: export_onnx copies it in INT8
        return export_onnx(weights, out, None, opset=opset, quantize=quantize, progress=progress)
    tracker = load_merged_tracker(weights, config)
    return export_tracker_onnx(tracker.model.float(), out, opset=opset, quantize=quantize, progress=progress,
                               versions=versions)


# ---- the graphs as modules ------------------------------------------------------------------------

def _all_masks(self, all_mask_logits, all_iou_scores):
    """Stands in for the mask decoder's ``_dynamic_multimask_via_stability`` in the export:
    every mask and score goes out, the engine chooses (see the module docstring)."""
    return all_mask_logits, all_iou_scores


@contextlib.contextmanager
def tracker_patches(model) -> Iterator[None]:
    """Make ``model`` (a ``Sam3TrackerModel``) exportable, restored on exit: eval mode, eager
    attention, and a mask decoder that returns all its masks (without multimask output it
    then takes the stability path, which the patch turns into "return them all")."""
    decoder = model.mask_decoder
    dynamic = decoder.dynamic_multimask_via_stability
    decoder.dynamic_multimask_via_stability = True
    decoder._dynamic_multimask_via_stability = types.MethodType(_all_masks, decoder)
    try:
        with eager_eval(model):
            yield
    finally:
        del decoder._dynamic_multimask_via_stability   # the class's method shows through again
        decoder.dynamic_multimask_via_stability = dynamic


class TrackerImageEncoder(nn.Module):
    """pixel_values (B, 3, S, S) -> image_embeddings (B, C, g, g), high_res_features_0
    (B, C/8, 4g, 4g), high_res_features_1 (B, C/4, 2g, 2g): ``get_image_embeddings``, what
    transformers reuses across clicks."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fine, middle, coarse = self.model.get_image_embeddings(pixel_values)
        return coarse, fine, middle


class TrackerMaskDecoder(nn.Module):
    """One image's embeddings and one prompt -> masks (1, T, m, m), iou_scores (1, T),
    object_score_logits (1, 1) (inputs as the module docstring says). Run it inside
    ``tracker_patches``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings, high_res_features_0, high_res_features_1, point_coords, point_labels,
                mask_input, has_mask_input):
        prompt = self.model.prompt_encoder
        sparse = prompt._embed_points(point_coords[:, None], point_labels[:, None], pad=False)   # (1, 1, n, C)
        blend = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = prompt.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = blend * prompt.mask_embed(mask_input) + (1 - blend) * no_mask
        position = self.model.get_image_wide_positional_embeddings().repeat(image_embeddings.shape[0], 1, 1, 1)
        masks, scores, _, objects = self.model.mask_decoder(
            image_embeddings=image_embeddings, image_positional_embeddings=position,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            high_resolution_features=[high_res_features_0, high_res_features_1])
        return masks[:, 0], scores[:, 0], objects[:, 0]


# ---- export -----------------------------------------------------------------------------------------

def export_tracker_onnx(model, out: str | Path, *, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                        check: bool = True, progress: Progress | None = None, versions: dict | None = None) -> Path:
    """Export a plain ``Sam3TrackerModel`` in memory (a LoRA merged first, float32) to the new
    folder ``out``, atomically as ``export_sam3_onnx``; ``check`` runs both graphs in
    onnxruntime against PyTorch first. ``quantize="int8"``: dynamic INT8 of the image encoder."""
    versions = versions or check_onnx_tools(opset)
    check_quantize(quantize)
    from transformers import Sam3TrackerModel

    model = plain_model(model, Sam3TrackerModel, "the tracker")
    out = empty_target(out)
    say = progress or (lambda line: None)
    with sigterm_as_exit(), atomic_folder(out) as work:
        started = time.perf_counter()
        with tracker_patches(model), torch.no_grad():
            inputs = example_inputs(model)
            seconds = _export_graphs(model, inputs, work, opset, say)
            if check:
                _check_graphs(model, inputs, work, say)
        metadata = tracker_metadata(model, versions, opset, seconds)
        finish_folder(work, metadata, quantize, started, say)
    say(f"wrote {out}")
    return out


def _sizes(model) -> tuple[int, int]:
    """(S, m): the input side and the mask side of ``model``."""
    prompt = model.config.prompt_encoder_config
    return prompt.image_size, 4 * prompt.image_size // prompt.patch_size


def example_inputs(model, points: int = 3, seed: int = 0) -> tuple:
    """pixel_values (2, 3, S, S) and a prompt of ``points`` tokens (a click, a box's two
    corners... ending in the "not a point" token) with a random mask input used: every
    dynamic size 2 or more, as torch.export specialises a size it sees as 1."""
    size, side = _sizes(model)
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    coords = torch.rand(1, points, 2, generator=generator) * size
    labels = torch.tensor([[1, 0, *BOX_CORNER_LABELS, 1][:points - 1] + [NOT_A_POINT]])
    mask = torch.randn(1, 1, side, side, generator=generator) * 4
    return pixel_values, coords, labels, mask, torch.ones(1)


def _export_graphs(model, inputs: tuple, work: Path, opset: int, say: Progress) -> dict[str, float]:
    """Both graphs into ``work``; returns seconds per graph."""
    pixel_values, coords, labels, mask, has_mask = inputs
    batch = torch.export.Dim("batch", min=1, max=4096)
    points = torch.export.Dim("points", min=1, max=1024)
    embeddings = TrackerImageEncoder(model)(pixel_values[:1])
    jobs = {
        "image_encoder": (TrackerImageEncoder(model), (pixel_values,), ({0: batch},), [model.vision_encoder]),
        "mask_decoder": (TrackerMaskDecoder(model), (*embeddings, coords, labels, mask, has_mask),
                         (None, None, None, {1: points}, {1: points}, None, None),
                         [model.prompt_encoder, model.mask_decoder]),
    }
    seconds = {}
    for name, (module, args, dynamic, parts) in jobs.items():
        say(f"exporting {name}")
        started = time.perf_counter()
        names_in, names_out = TRACKER_GRAPH_IO[name]
        export_graph(module.eval(), args, work / TRACKER_GRAPH_FILES[name], names_in, names_out, dynamic, opset,
                     external=sum(p.numel() * p.element_size() for m in parts for p in m.parameters())
                     > EXTERNAL_DATA_BYTES)
        seconds[name] = round(time.perf_counter() - started, 1)
    return seconds


def _check_graphs(model, inputs: tuple, work: Path, say: Progress) -> None:
    """Both graphs in onnxruntime at shapes other than the traced ones (B = 1; n = 2, a click
    and the padding token, no mask) against the patched PyTorch modules."""
    pixel_values, coords, _, mask, _ = inputs
    embeddings = TrackerImageEncoder(model)(pixel_values[:1])
    feeds = dict(zip(("image_embeddings", "high_res_features_0", "high_res_features_1"), embeddings, strict=True))
    feeds.update(point_coords=coords[:, :2].contiguous(), point_labels=torch.tensor([[1, NOT_A_POINT]]),
                 mask_input=mask, has_mask_input=torch.zeros(1))
    decoded = TrackerMaskDecoder(model)(*feeds.values())
    check_in_onnxruntime(work / TRACKER_GRAPH_FILES["image_encoder"], "image_encoder",
                         {"pixel_values": pixel_values[:1]}, embeddings, say)
    check_in_onnxruntime(work / TRACKER_GRAPH_FILES["mask_decoder"], "mask_decoder", feeds, decoded, say)


def tracker_metadata(model, versions: dict, opset: int, seconds: dict) -> dict:
    """The contents of ``sam3_onnx.json`` for a tracker export (``onnx_format.Metadata``)."""
    size, side = _sizes(model)
    config = model.config
    width = config.mask_decoder_config.hidden_size
    decoder = config.mask_decoder_config
    tokens = model.mask_decoder.num_mask_tokens
    grid = size // config.prompt_encoder_config.patch_size
    levels = {"image_embeddings": [width, grid, grid], "high_res_features_0": [width // 8, 4 * grid, 4 * grid],
              "high_res_features_1": [width // 4, 2 * grid, 2 * grid]}
    return {
        "format": FORMAT,
        "task": "interactive",
        "sam3_lora_version": __version__,
        "exported_with": versions,
        "opset": opset,
        "image": {"size": size, "resize": "direct bilinear, antialiased (torch antialias=True), not aspect-preserving",
                  "rescale": 1 / 255, "mean": [IMAGE_MEAN] * 3, "std": [IMAGE_STD] * 3},
        "tracker": {"mask_size": side, "mask_tokens": tokens,
                    "dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
                    "stability_delta": float(decoder.dynamic_multimask_stability_delta),
                    "stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
                    "point_labels": {"object": 1, "not_object": 0, "box_top_left": BOX_CORNER_LABELS[0],
                                     "box_bottom_right": BOX_CORNER_LABELS[1], "not_a_point": NOT_A_POINT},
                    "points": "x, y in pixels of the S x S input; prompt = clicks, then a box's two corners, "
                              "then one not_a_point token",
                    "mask_input": "previous mask logits (m x m), or a mask in [0, 1] resized to m x m "
                                  "(antialiased bilinear); has_mask_input 1 uses it, 0 ignores it",
                    "choice": "multimask (a lone click, no box or mask): best iou of masks 1..; else mask 0, "
                              "or the best of 1.. when the stability of mask 0 < stability_thresh"},
        "graphs": {
            "image_encoder": {"file": TRACKER_GRAPH_FILES["image_encoder"],
                              "inputs": {"pixel_values": ["batch", 3, size, size]},
                              "outputs": {k: ["batch", *v] for k, v in levels.items()}},
            "mask_decoder": {"file": TRACKER_GRAPH_FILES["mask_decoder"],
                             "inputs": {**{k: [1, *v] for k, v in levels.items()},
                                        "point_coords": [1, "points", 2], "point_labels": [1, "points"],
                                        "mask_input": [1, 1, side, side], "has_mask_input": [1]},
                             "outputs": {"masks": [1, tokens, side, side], "iou_scores": [1, tokens],
                                         "object_score_logits": [1, 1]}},
        },
        "export_seconds": seconds,
        "quantization": None,
    }
