"""One object from clicks, a box or a mask: what ``SAM3LoRAInference.segment`` answers
(``model.task: interactive``, SAM3's tracker).

The prompt, in pixels of the image (W x H)::

    points   (K, 2) x, y          clicks
    labels   (K,) 1 / 0           positive (the object) / negative (not it); all 1 if omitted
    box      (4,) x1, y1, x2, y2  around the object
    mask     (H, W) bool          a mask of it (e.g. an earlier answer) to refine

The answer is a dict: ``mask`` (H, W) bool, ``score`` the predicted IoU of that mask,
``object_score`` the probability that the object is there at all. The prompt's checks and
the answer's ``predict`` form (``as_prediction``) are in ``serve.prompts``: torch-free, shared
with the ONNX tracker (``serve.onnx_tracker``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam3_lora.data.collate import mask_size_for
from sam3_lora.serve.prompts import check_mask, check_object_prompt


def segment_object(model, processor, image: Image.Image, points=None, labels=None, box=None,
                   mask=None) -> dict:
    """The tracker's answer to one prompt on ``image`` (see the module docstring)."""
    size = image.size
    points, labels, box_array = check_object_prompt(points, labels, box, mask, size)
    parameter = next(model.parameters())
    side = processor.image_size
    scale = np.array([side / size[0], side / size[1]])
    inputs = {"pixel_values": processor.images([image]).to(parameter.device, parameter.dtype)}
    if points is not None:
        inputs["input_points"] = torch.tensor(points * scale, dtype=torch.float)[None, None]
        inputs["input_labels"] = torch.tensor(labels)[None, None]
    if box_array is not None:
        inputs["input_boxes"] = torch.tensor(box_array[0] * np.tile(scale, 2), dtype=torch.float)[None, None]
    if mask is not None:
        inputs["input_masks"] = _mask_input(mask, size, mask_size_for(side))
    inputs = {k: v.to(parameter.device) for k, v in inputs.items()}
    single_click = box_array is None and mask is None and points is not None and len(points) == 1
    with torch.no_grad():
        out = model(**inputs, multimask_output=single_click)
    masks, scores = out.pred_masks[0, 0].float(), out.iou_scores[0, 0].float()
    best = int(scores.argmax())
    full = F.interpolate(masks[best][None, None], size=(size[1], size[0]), mode="bilinear")[0, 0]
    return {"mask": (full > 0).cpu().numpy(), "score": float(scores[best]),
            "object_score": float(torch.sigmoid(out.object_score_logits.float()).flatten()[0])}


def _mask_input(mask, size: tuple[int, int], side: int) -> torch.Tensor:
    """(H, W) mask of the image -> (1, 1, side, side) float in [0, 1], as training feeds one."""
    tensor = torch.from_numpy(check_mask(mask, size))[None, None]
    return F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True)
