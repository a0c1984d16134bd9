"""The one place that runs SAM3: images encoded once, Q (image, prompt) queries on them.

SAM3's vision encoder (the ViT: most of the compute) depends only on the image, the heads on
the (image, prompt) pair. ``forward_queries`` encodes each image once and expands its
features to every query on it. ``capture_aux_outputs`` recovers the per-decoder-layer
predictions that transformers' ``Sam3Model`` computes but does not return (the loss needs
them). ``QueryModel`` wraps both in one ``forward`` so that DDP sees a single call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput, inverse_sigmoid

from sam3_lora.model.box_ops import box_cxcywh_to_xyxy
from sam3_lora.model.precision import autocast_like

OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")


def encode_images(model: nn.Module, pixel_values: torch.Tensor) -> Sam3VisionEncoderOutput:
    """Run the vision encoder once: (B, 3, S, S) -> SAM3's vision features for B images.
    The detector (``Sam3Model``) and the tracker (``Sam3TrackerModel``) hold the same module
    under the same name, so this serves both."""
    with autocast_like(model):
        return model.vision_encoder(pixel_values=pixel_values)


def encode_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Text features of K prompts: input_ids, attention_mask (K, T) -> (K, T, D), the form
    ``forward_queries(text_features=...)`` takes (text encoder and projection applied)."""
    with autocast_like(model):
        return model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def select_images(vision: Sam3VisionEncoderOutput, image_index: torch.Tensor) -> Sam3VisionEncoderOutput:
    """Vision features of B images -> features for Q queries, query q on image image_index[q].

    The ViT (most of SAM3's compute) ran once per image; every query reuses its image's
    features, and gradients from all queries flow back into that one encoding.
    """
    def pick(tensors):
        return tuple(t.index_select(0, image_index) for t in tensors)

    return Sam3VisionEncoderOutput(
        last_hidden_state=vision.last_hidden_state.index_select(0, image_index),
        fpn_hidden_states=pick(vision.fpn_hidden_states),
        fpn_position_encoding=pick(vision.fpn_position_encoding),
    )


def forward_queries(model: nn.Module, image_index: torch.Tensor, *, pixel_values: torch.Tensor | None = None,
                    vision: Sam3VisionEncoderOutput | None = None, input_ids: torch.Tensor | None = None,
                    text_features: torch.Tensor | None = None, attention_mask: torch.Tensor,
                    input_boxes: torch.Tensor | None = None, input_boxes_labels: torch.Tensor | None = None,
                    aux_outputs: bool = False) -> dict:
    """SAM3 on Q (image, prompt) queries over B images, each image encoded once.

    Images: ``pixel_values`` (B, 3, S, S), or their ``vision`` features from ``encode_images``
    (to reuse one encoding across calls); ``image_index`` (Q,) in [0, B) names each query's
    image. Prompts: ``input_ids`` (Q, T), or cached ``text_features`` (Q, T, D) from
    ``encode_text``, with ``attention_mask`` (Q, T); optional box prompts ``input_boxes``
    (Q, n, 4) cxcywh in [0, 1] with ``input_boxes_labels`` (Q, n): 1 positive, 0 negative.

    Returns a dict: "pred_logits" (Q, N), "pred_boxes" (Q, N, 4) xyxy in [0, 1],
    "pred_masks" (Q, N, M, M) logits, "presence_logits" (Q, 1), and with ``aux_outputs`` the
    intermediate decoder layers' predictions under "aux_outputs" (``capture_aux_outputs``).
    A half-precision model runs under autocast of its dtype (``autocast_like``), and its
    outputs are in that dtype (``as_float32`` converts them).
    """
    if vision is None:
        vision = encode_images(model, pixel_values)
    prompts = {"input_ids": input_ids} if text_features is None else {
        "text_embeds": BaseModelOutputWithPooling(pooler_output=text_features)}
    if input_boxes is not None:
        prompts.update(input_boxes=input_boxes, input_boxes_labels=input_boxes_labels)
    with capture_aux_outputs(model) if aux_outputs else contextlib.nullcontext() as aux, autocast_like(model):
        output = model(vision_embeds=select_images(vision, image_index), attention_mask=attention_mask, **prompts)
    outputs = {key: output[key] for key in OUTPUTS}
    if aux_outputs:
        outputs["aux_outputs"] = aux
    return outputs


class QueryModel(nn.Module):
    """``forward_queries`` with auxiliary outputs as one module, so that DDP sees a single
    forward (images encoded once, Q queries) of the model it wraps (PEFT or bare SAM3)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, image_index: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, vision: Sam3VisionEncoderOutput | None = None) -> dict:
        """``vision``: the images' features when they were computed already (a feature
        cache); ``pixel_values`` are then not encoded again."""
        return forward_queries(self.model, image_index, pixel_values=pixel_values if vision is None else None,
                               vision=vision, input_ids=input_ids, attention_mask=attention_mask, aux_outputs=True)


@contextlib.contextmanager
def capture_aux_outputs(model: nn.Module, include_last: bool = False) -> Iterator[list[dict]]:
    """Recover the per-decoder-layer predictions that transformers' SAM3 computes but drops.

    Yields a list that each forward of ``model`` inside the block refills with one dict per
    intermediate decoder layer (all L layers with ``include_last``)::

        {"pred_logits": (Q, N), "pred_boxes": (Q, N, 4) xyxy, "presence_logits": (Q, 1)}

    Forward hooks read the decoder's per-layer hidden states, reference boxes and presence
    logits, and the scoring head's logits for every layer (the model scores all layers and
    keeps the last). Boxes go through the model's own ``detr_decoder.box_head`` exactly as
    ``Sam3Model.forward`` does for the last layer, so LoRA layers there apply and gradients
    flow. Works on a bare ``Sam3Model`` or one wrapped by PEFT; hooks are removed on exit.
    """
    sam3 = _find_sam3(model)
    layers: list[dict] = []
    keep = slice(None) if include_last else slice(0, -1)
    decoded: dict[str, torch.Tensor] = {}

    def on_decoder(decoder, args, output):
        hidden = output.intermediate_hidden_states[keep]  # (L', Q, N, D), layer-normed
        reference = output.reference_boxes[keep]  # (L', Q, N, 4) cxcywh, each layer's input
        boxes = (inverse_sigmoid(reference) + decoder.box_head(hidden)).sigmoid()
        decoded["pred_boxes"] = box_cxcywh_to_xyxy(boxes)
        decoded["presence_logits"] = output.presence_logits[keep]  # (L', Q, 1)

    def on_scoring(scoring, args, output):
        logits = output.squeeze(-1)[keep]  # (L, Q, N, 1) -> (L', Q, N)
        layers[:] = [{"pred_logits": logits[i], "pred_boxes": decoded["pred_boxes"][i],
                      "presence_logits": decoded["presence_logits"][i]} for i in range(len(logits))]

    handles = [sam3.detr_decoder.register_forward_hook(on_decoder),
               sam3.dot_product_scoring.register_forward_hook(on_scoring)]
    try:
        yield layers
    finally:
        for handle in handles:
            handle.remove()


def _find_sam3(model: nn.Module) -> nn.Module:
    """The ``Sam3Model`` inside ``model`` (itself, or under PEFT's base_model.model)."""
    for module in model.modules():
        children = module._modules
        if "detr_decoder" in children and "dot_product_scoring" in children:
            return module
    raise TypeError(f"{type(model).__name__} holds no SAM3 model (no detr_decoder and "
                    f"dot_product_scoring modules)")


def as_float32(outputs: dict) -> dict:
    """``forward_queries``' outputs (auxiliary layers included) in float32, as the loss wants
    them whatever precision the forward ran in."""
    out = {key: value.float() for key, value in outputs.items() if key != "aux_outputs"}
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [{k: v.float() for k, v in layer.items()} for layer in outputs["aux_outputs"]]
    return out
