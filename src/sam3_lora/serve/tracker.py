"""One object from clicks, a box or a mask: what ``SAM3LoRAInference.segment`` answers
(``model.task: interactive``, SAM3's tracker).

The prompt, in pixels of the image (W x H)::

    points   (K, 2) x, y          clicks
    labels   (K,) 1 / 0           positive (the object) / negative (not it); all 1 if omitted
    box      (4,) x1, y1, x2, y2  around the object
    mask     (H, W) bool          a mask of it (e.g. an earlier answer) to refine

The answer is a dict: ``mask`` (H, W) bool, ``score`` the predicted IoU of that mask,
``object_score`` the probability that the object is there at all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sam3_lora.data.collate import mask_size_for
from sam3_lora.data.masks import mask_to_box
from sam3_lora.serve.prompts import PromptError, check_boxes


def check_points(points, labels, size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(K, 2) finite clicks inside an image of ``size`` (W, H) and their (K,) 1 / 0 labels
    (all positive when None), or a clear error; (None, None) without points."""
    if points is None or len(points) == 0:
        if labels is not None and len(labels):
            raise PromptError("labels: given without points; give one label per point")
        return None, None
    try:
        array = np.asarray(points, dtype=float).reshape(-1, 2)
    except (TypeError, ValueError):
        raise PromptError("points: each point needs 2 numbers [x, y] in pixels") from None
    width, height = size
    if not np.isfinite(array).all() or (array < 0).any() or (array[:, 0] >= width).any() or (array[:, 1] >= height).any():
        raise PromptError(f"points: every point must lie inside the {width}x{height} image (0 <= x < {width}, "
                          f"0 <= y < {height})")
    marks = np.ones(len(array), dtype=int) if labels is None else np.asarray(labels).reshape(-1)
    if len(marks) != len(array) or not np.isin(marks, (0, 1)).all():
        raise PromptError(f"labels: give one label per point ({len(array)}), each 1 (object) or 0 (not it)")
    return array, marks.astype(int)


def segment_object(model, processor, image: Image.Image, points=None, labels=None, box=None,
                   mask=None) -> dict:
    """The tracker's answer to one prompt on ``image`` (see the module docstring)."""
    size = image.size
    points, labels = check_points(points, labels, size)
    box_array = check_boxes(box, size, what="box") if box is not None else None
    if box_array is not None and len(box_array) != 1:
        raise PromptError("box: give one box [x1, y1, x2, y2] for the one object")
    if points is None and box_array is None and mask is None:
        raise PromptError("segment: give points, a box or a mask of the object")
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
    array = np.asarray(mask)
    if array.shape != (size[1], size[0]):
        raise PromptError(f"mask: shape {array.shape} for a {size[0]}x{size[1]} image; give an (H, W) = "
                          f"({size[1]}, {size[0]}) mask")
    tensor = torch.from_numpy(array.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True)


def as_prediction(answer: dict, name: str = "object") -> dict:
    """A ``segment`` answer in ``predict``'s form (one detection), for the overlay and the
    COCO results that ``predict`` writes."""
    mask = answer["mask"]
    return {"prompt": name, "num_detections": 1, "boxes": mask_to_box(mask)[None].numpy(),
            "scores": np.array([answer["score"]]), "masks": mask[None], "presence": answer["object_score"]}
