"""SAM 2's ``forward_tracking`` on transformers' video tracker: clips in, every frame's masks out.

``Sam3TrackerVideoModel`` (transformers 5.23) runs video through an inference session, and
that API cannot train: its ``forward`` is decorated ``torch.inference_mode()`` (no autograd
graph at all, so no gradient reaches memory attention or the memory encoder), it tracks one
object per call, keeps only the chosen mask of a multi-mask prediction (SAM's loss needs all
M candidates) and leaves out the object scores in training mode. ``ClipTracking`` therefore
drives the model's own modules the way SAM 2's training does (``training/model/sam2.py``
``SAM2Train.forward_tracking`` / ``track_step`` / ``_iter_correct_pt_sampling``):

* every frame of every clip through the vision encoder once (``get_image_features``);
* frame 0 prompted with the clip's click, box or mask (``data.video.clips``); a mask prompt is
  taken as the frame's output (``_use_mask_as_output``, as SAM 2 and transformers do);
* each later frame conditioned on the memories of the frames before it by ``memory_attention``,
  the memories chosen by transformers' own helpers (conditioning frames, the last
  ``num_maskmem - 1`` frames, object pointers with temporal encodings) from those kept here
  (``ClipMemory``) with their autograd graph;
* on a few frames (frame 0 and, at random, others: ``training.frames_to_correct``) after a
  click or box prompt, ``training.correction_rounds`` correction clicks drawn from the errors
  (``data.prompts.correction_clicks``); a corrected frame becomes a conditioning frame (SAM 2's
  ``add_all_frames_to_correct_as_cond``, true in its MOSE fine-tuning);
* each frame's final mask encoded into memory by transformers' ``_encode_new_memory``
  (``memory_encoder``; it stores the memory in bfloat16, as at inference, so training sees the
  memories ``track`` will).

Deliberate differences from SAM 2: one initial conditioning frame (SAM 2's MOSE config draws
1 or 2; the clip loader prompts the first frame only); the mask input fed back with a
correction click is detached, as in the image task (``tasks.CorrectionRounds``).

Shapes (B clips, T frames, O objects of all clips, S input side, m = S * 4 / patch the
low-resolution mask side, M masks per prediction, C the tracker width)::

    pixel_values       (B, T, 3, S, S)
    masks              (O, T, S, S) bool   the ground truth (correction clicks and the mask prompt)
    object_clip_index  (O,) long
    boxes (O, 4), points (O, 1, 2), labels (O, 1)   frame 0's prompts, input pixels
    returns            T frames, each a list of steps {"pred_masks" (O, M, S, S) logits,
                       "iou_scores" (O, M), "object_score_logits" (O, 1)}, as
                       ``loss.tracker.TrackerCriterion`` reads them
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sam3_lora.data.prompts import PromptKind, append_clicks, correction_clicks

NO_OBJECT_LOGIT = -1024.0
"""The mask logit of an object predicted absent (SAM 2's and transformers' ``NO_OBJ_SCORE``)."""


@dataclass
class ClipMemory:
    """The part of transformers' ``Sam3TrackerVideoInferenceSession`` that its memory helpers
    (``_gather_memory_frame_outputs``, ``_get_object_pointers``) read: every object of the batch as one session
    object (index 0), its memories batched over the O objects, with their autograd graph.

    Each frame's entry: ``maskmem_features`` (h*w, O, C_mem), ``maskmem_pos_enc``
    (h*w, O, C_mem), ``object_pointer`` (O, C)."""

    dtype: torch.dtype
    output_dict_per_obj: dict = field(default_factory=lambda: {0: {"cond_frame_outputs": {},
                                                                    "non_cond_frame_outputs": {}}})

    def store(self, frame: int, entry: dict[str, torch.Tensor], conditioning: bool) -> None:
        kind = "cond_frame_outputs" if conditioning else "non_cond_frame_outputs"
        self.output_dict_per_obj[0][kind][frame] = entry


class ClipTracking(nn.Module):
    """SAM 2's training forward of a batch of clips as one module (DDP sees a single forward;
    see the module docstring). ``rounds``: correction clicks per corrected frame;
    ``frames_to_correct``: at most this many frames get them (frame 0 first, the count drawn
    uniformly from 1 .. ``frames_to_correct`` as SAM 2's ``rand_frames_to_correct``);
    ``from_mask_probability``: the chance a correction click ignores the prediction."""

    def __init__(self, model: nn.Module, rounds: int, frames_to_correct: int, from_mask_probability: float):
        super().__init__()
        self.model, self.rounds = model, rounds
        self.frames_to_correct, self.from_mask_probability = frames_to_correct, from_mask_probability

    def forward(self, pixel_values: torch.Tensor, masks: torch.Tensor, object_clip_index: torch.Tensor, kind: str,
                boxes: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                prompt_seed: int) -> list[list[dict[str, torch.Tensor]]]:
        frames, size = pixel_values.shape[1], pixel_values.shape[-1]
        kind = PromptKind(kind)
        generator = torch.Generator().manual_seed(prompt_seed)
        corrected = set() if kind == PromptKind.MASK else correction_frames(frames, self.frames_to_correct, generator)
        vision = self.model.get_image_features(pixel_values.flatten(0, 1), return_dict=True)
        memory = ClipMemory(dtype=vision.fpn_hidden_states[-1].dtype)
        outputs = []
        for t in range(frames):
            rows = object_clip_index * frames + t   # each object's frame t among the B*T encoded frames
            features = [level[:, rows] for level in vision.fpn_hidden_states]
            positions = vision.fpn_position_encoding[-1][:, rows]
            prompt = initial_prompt(kind, boxes, points, labels) if t == 0 else {}
            if t == 0 and kind == PromptKind.MASK:
                final = mask_as_output(self.model, without_memory(self.model, features), masks[:, 0])
                steps = [final]
            else:
                image = conditioned_features(self.model, memory, t, features, positions, frames)
                final = decode(self.model, image, prompt, self._multimask(t == 0, prompt))
                steps = [final]
                if t in corrected:
                    steps, final = self._correct(image, prompt, masks[:, t], final, t == 0, generator, steps)
            memory.store(t, encode_memory(self.model, features[-1], final),
                         conditioning=t == 0 or t in corrected)
            outputs.append([_loss_step(step, size) for step in steps])
        return outputs

    def _correct(self, image: list[torch.Tensor], prompt: dict, gt: torch.Tensor, out: dict, first: bool,
                 generator: torch.Generator, steps: list[dict]) -> tuple[list[dict], dict]:
        """``rounds`` correction clicks on one frame (SAM 2's ``_iter_correct_pt_sampling``):
        each from the errors of the previous step's chosen mask, fed back with its logits."""
        size = gt.shape[-1]
        clicks = (prompt.get("input_points"), prompt.get("input_labels"))
        for _ in range(self.rounds):
            predicted = F.interpolate(out["low_res_mask"][:, None], size=(size, size), mode="bilinear")[:, 0] > 0
            new_points, new_labels = correction_clicks(gt, predicted, generator, self.from_mask_probability)
            clicks = append_clicks(clicks, new_points.to(gt.device), new_labels.to(gt.device))
            step_prompt = {"input_points": clicks[0], "input_labels": clicks[1],
                           "input_boxes": prompt.get("input_boxes"),
                           "input_masks": out["low_res_mask"][:, None].detach()}
            out = decode(self.model, image, step_prompt, self._multimask(first, step_prompt))
            steps.append(out)
        return steps, out

    def _multimask(self, initial: bool, prompt: dict) -> bool:
        """transformers' (and SAM 2's) ``_use_multimask``: several masks on an initial frame
        (or any frame, with ``multimask_output_for_tracking``) when the prompt has between
        ``multimask_min_pt_num`` and ``multimask_max_pt_num`` points, a box counting as two
        (SAM 2 gives a box as two corner points)."""
        config = self.model.config
        clicks = prompt["input_points"].shape[2] if prompt.get("input_points") is not None else 0
        count = clicks + (2 if prompt.get("input_boxes") is not None else 0)
        return (config.multimask_output_in_sam and (initial or config.multimask_output_for_tracking)
                and config.multimask_min_pt_num <= count <= config.multimask_max_pt_num)


def correction_frames(frames: int, most: int, generator: torch.Generator) -> set[int]:
    """The frames that get correction clicks: frame 0 and ``n - 1`` others drawn without
    replacement, ``n`` uniform in 1 .. min(most, frames) (SAM 2's MOSE fine-tuning:
    ``num_frames_to_correct_for_train: 2``, ``rand_frames_to_correct_for_train: True``)."""
    most = min(most, frames)
    count = int(torch.randint(1, most + 1, (), generator=generator)) if most > 1 else most
    others = (torch.randperm(frames - 1, generator=generator)[:count - 1] + 1).tolist()
    return {0, *others}


def initial_prompt(kind: PromptKind, boxes: torch.Tensor, points: torch.Tensor,
                   labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frame 0's prompt as the prompt encoder takes it: boxes (O, 1, 4), or points
    (O, 1, 1, 2) with labels (O, 1, 1); nothing for a mask (it is the frame's output)."""
    if kind == PromptKind.BOX:
        return {"input_boxes": boxes[:, None]}
    if kind == PromptKind.CLICK:
        return {"input_points": points[:, None], "input_labels": labels[:, None].long()}
    return {}


def conditioned_features(model: nn.Module, memory: ClipMemory, frame: int, features: list[torch.Tensor],
                         positions: torch.Tensor, frames: int) -> list[torch.Tensor]:
    """The mask decoder's image input for ``frame``: the two high-resolution levels
    [(O, C/8, 4g, 4g), (O, C/4, 2g, 2g)] and the g x g level (O, C, g, g) fused by
    ``memory_attention`` with the memories of the frames before (frame 0: plus the "no
    memory" embedding).

    ``features``: the three levels (h*w, O, C_level) of ``get_image_features``; ``positions``
    (g*g, O, C) the last level's position encoding. The memories are chosen and encoded by
    transformers' own helpers (``_gather_memory_frame_outputs``: the conditioning frames and
    the ``num_maskmem - 1`` frames before; ``_get_object_pointers``, with their temporal
    encoding); their caller ``_prepare_memory_conditioned_features`` is not used because it
    reshapes the fused features correctly for one object only (its ``squeeze(1)`` assumes a
    session's batch of 1), and a batch here holds O."""
    objects, width = features[-1].shape[1], model.hidden_dim
    high_res = _high_res(model, features)
    if frame == 0:
        return [*high_res, _grid(model, features[-1] + model.no_memory_embedding)]
    device = features[-1].device
    previous = model._gather_memory_frame_outputs(memory, 0, frame)
    memories, memory_positions = model._build_memory_attention_inputs(previous, device)
    offsets, pointers, most = model._get_object_pointers(memory, 0, frame, frames, device)
    pointers, pointer_positions = model._process_object_pointers(offsets, pointers, most, objects, width, device)
    fused = model.memory_attention(
        current_vision_features=features[-1], current_vision_position_embeddings=positions,
        memory=torch.cat([*memories, pointers]).to(features[-1].dtype),
        memory_posision_embeddings=torch.cat([*memory_positions, pointer_positions]),
        num_object_pointer_tokens=pointers.shape[0])   # (1, O, g*g, C)
    return [*high_res, _grid(model, fused[0].transpose(0, 1))]


def without_memory(model: nn.Module, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mask decoder's image input as the vision encoder gives it (a mask prompt's frame:
    SAM 2 runs the decoder on it without the "no memory" embedding); shapes as
    ``conditioned_features``."""
    return [*_high_res(model, features), _grid(model, features[-1])]


def _high_res(model: nn.Module, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The two high-resolution levels (h*w, O, C_level) -> (O, C_level, h, w)."""
    return [level.permute(1, 2, 0).reshape(level.shape[1], level.shape[2], *shape)
            for level, shape in zip(features[:-1], model.backbone_feature_sizes[:-1])]


def _grid(model: nn.Module, top: torch.Tensor) -> torch.Tensor:
    """The g x g level (g*g, O, C) -> (O, C, g, g)."""
    return top.permute(1, 2, 0).reshape(top.shape[1], top.shape[2], *model.backbone_feature_sizes[-1])


def decode(model: nn.Module, image: list[torch.Tensor], prompt: dict, multimask: bool) -> dict[str, torch.Tensor]:
    """One prompt-encoder and mask-decoder pass for the O objects (transformers'
    ``_single_frame_forward`` after its vision part, which returns only the chosen mask;
    the loss needs all M).

    Returns ``masks`` (O, M, m, m) logits (an object scored absent gets ``NO_OBJECT_LOGIT``
    everywhere, as SAM 2 and transformers do), ``iou_scores`` (O, M), ``object_score_logits``
    (O, 1), ``low_res_mask`` (O, m, m) the mask with the highest predicted IoU, and
    ``object_pointer`` (O, C) from its output token."""
    objects = image[-1].shape[0]
    masks = prompt.get("input_masks")
    if masks is not None and masks.shape[-2:] != model.prompt_encoder.mask_input_size:
        prompt = {**prompt, "input_masks": F.interpolate(masks, size=model.prompt_encoder.mask_input_size,
                                                         mode="bilinear", align_corners=False, antialias=True)}
    if prompt.get("input_points") is None and prompt.get("input_boxes") is None:
        # No click and no box: one padding point labelled -1, as transformers pads.
        prompt = {**prompt, "input_points": image[-1].new_zeros(objects, 1, 1, 2),
                  "input_labels": -torch.ones(objects, 1, 1, dtype=torch.long, device=image[-1].device)}
    sparse, dense = model.prompt_encoder(input_points=prompt.get("input_points"),
                                         input_labels=prompt.get("input_labels"),
                                         input_boxes=prompt.get("input_boxes"),
                                         input_masks=prompt.get("input_masks"))
    positional = model.get_image_wide_positional_embeddings().repeat(objects, 1, 1, 1)
    masks, iou, tokens, object_logits = model.mask_decoder(
        image_embeddings=image[-1], image_positional_embeddings=positional, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, high_resolution_features=image[:-1])
    masks, iou, tokens, object_logits = masks[:, 0], iou[:, 0], tokens[:, 0], object_logits[:, 0]
    appearing = object_logits > 0   # (O, 1)
    masks = torch.where(appearing[:, :, None, None], masks, NO_OBJECT_LOGIT)
    best = iou.argmax(dim=1)
    index = torch.arange(objects, device=masks.device)
    pointer = model.object_pointer_proj(tokens[index, best])
    weight = appearing.to(pointer.dtype)
    pointer = weight * pointer + (1 - weight) * model.no_object_pointer
    return {"masks": masks, "iou_scores": iou, "object_score_logits": object_logits,
            "low_res_mask": masks[index, best], "object_pointer": pointer}


def mask_as_output(model: nn.Module, image: list[torch.Tensor], gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """A mask prompt taken as the frame's prediction (SAM 2's ``_use_mask_as_output``, which
    transformers transcribes for one object: its pointer broadcasts wrongly over a batch):
    logits +10 inside, -10 outside, IoU 1, the object score +10 / -10 by whether the mask has
    a pixel, and the object pointer of the mask decoder run on the mask. ``image``: the
    decoder's input (``without_memory``); ``gt`` (O, S, S) at
    the model's input size. Returns ``decode``'s keys (M = 1)."""
    scale, bias = 20.0, -10.0   # SAM 2's: sigmoid(-10) = 4.5e-5
    mask = gt[:, None].to(image[-1].dtype)   # (O, 1, S, S)
    low = F.interpolate(mask * scale + bias, size=model.prompt_encoder.mask_input_size, mode="bilinear",
                        align_corners=False, antialias=True)
    pointer = decode(model, image, {"input_masks": model.mask_downsample(mask)}, multimask=True)["object_pointer"]
    present = gt.flatten(1).any(1, keepdim=True).to(pointer.dtype)   # (O, 1)
    pointer = present * pointer + (1 - present) * model.no_object_pointer
    return {"masks": low, "iou_scores": mask.new_ones(len(gt), 1), "object_score_logits": scale * present + bias,
            "low_res_mask": low[:, 0], "object_pointer": pointer}


def encode_memory(model: nn.Module, top: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A frame's memory from its final prediction: transformers' ``_encode_new_memory``
    (``memory_encoder`` on the g x g features ``top`` (g*g, O, C) and the sigmoid of the
    chosen mask, upsampled to the input). Returns ``ClipMemory``'s entry."""
    size = model.image_size
    high = F.interpolate(out["low_res_mask"][:, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False).to(out["low_res_mask"].dtype)
    features, positions = model._encode_new_memory(current_vision_feats=top, pred_masks_high_res=high,
                                                   object_score_logits=out["object_score_logits"][:, :, None],
                                                   is_mask_from_pts=False)
    return {"maskmem_features": features, "maskmem_pos_enc": positions, "object_pointer": out["object_pointer"]}


def _loss_step(out: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """One step as ``TrackerCriterion`` reads it: masks upsampled to the input (SAM 2's loss
    is on its high-resolution masks)."""
    return {"pred_masks": F.interpolate(out["masks"], size=(size, size), mode="bilinear", align_corners=False),
            "iou_scores": out["iou_scores"], "object_score_logits": out["object_score_logits"]}
