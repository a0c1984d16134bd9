"""Image transforms that keep the image, its boxes and its masks consistent.

Both transforms take a (3, H, W) uint8 image and (n, 4) COCO boxes [x, y, w, h] in pixels,
and return the (3, S, S) float input normalised as SAM3 expects, the boxes as
[x1, y1, x2, y2] pixels of that S x S input, and a ``Geometry`` that records what was done
so that masks (decoded later, at the loss resolution) follow the same mapping.

Training (``TrainTransform``) is SAM3's: a random square scale (long side L drawn from
``min_resize_ratio * S .. S`` in steps of ``round(S * 32 / 1008)`` px, aspect kept), an
optional horizontal flip and colour jitter, then padding at the bottom/right to S x S. The
padding is black *before* normalisation (-1 after it), as SAM3 pads its PIL images before
``Normalize``. Evaluation (``EvalTransform``) is ``processing.resize_and_normalize``: a
direct (aspect-changing) resize to S x S, so validation sees exactly what inference sees.

All randomness comes from the ``torch.Generator`` passed in, which the dataset seeds per
sample from (seed, epoch, index): a seeded run gives identical batches with any number of
loader workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam3_lora.config import DataConfig
from sam3_lora.model.processing import normalize, resize_and_normalize

# SAM3 trains at 1008 px with scales on a 32 px grid; other sizes keep the same proportion.
SAM3_SIZE = 1008
SAM3_SCALE_STEP = 32
# ITU-R 601 luma weights, as used for greyscale by PIL and torchvision.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Geometry:
    """Where the original image landed in the S x S input."""

    orig_size: tuple[int, int]
    """(h, w) of the original image."""
    content_size: tuple[int, int]
    """(h, w) of the resized image inside the input; the rest is padding (bottom/right)."""
    canvas_size: int
    """S, the square input size."""
    flipped: bool = False
    """Whether the content was flipped left-right (after resizing, before padding)."""

    def map_boxes(self, boxes_xywh: torch.Tensor) -> torch.Tensor:
        """(n, 4) COCO [x, y, w, h] boxes of the original -> (n, 4) [x1, y1, x2, y2] input px."""
        sy = self.content_size[0] / self.orig_size[0]
        sx = self.content_size[1] / self.orig_size[1]
        x1, y1, w, h = boxes_xywh.float().unbind(-1)
        boxes = torch.stack([x1 * sx, y1 * sy, (x1 + w) * sx, (y1 + h) * sy], dim=-1)
        if self.flipped:
            width = self.content_size[1]
            boxes = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1
            )
        # Annotations may overhang the image; targets must stay on the content.
        return boxes.clamp(min=0).minimum(
            torch.tensor(self.content_size[::-1] * 2, dtype=torch.float)
        )


def scale_choices(size: int, min_ratio: float) -> list[int]:
    """Long sides the training resize draws from: ceil(min_ratio*S), +step, ..., and S.

    The step is ``round(S * 32 / 1008)`` (at least 1): SAM3's 32 px at 1008. S itself is
    always a choice, so the full-size image is seen too.
    """
    step = max(1, round(size * SAM3_SCALE_STEP / SAM3_SIZE))
    smallest = max(1, min(size, math.ceil(min_ratio * size - 1e-9)))
    choices = list(range(smallest, size, step))
    return choices + [size]


def _resize_uint8(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, height, width) uint8, bilinear with antialiasing.

    Channels-last uint8 has torch's fast SIMD path (~5x the float one at 1008 px).
    """
    batch = image[None].contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(batch, size=(height, width), mode="bilinear", antialias=True)
    return resized[0]


def color_jitter(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation, each by a factor in [1-s, 1+s].

    (3, H, W) float in [0, 255] -> same. Applied in that fixed order; clamped after each.
    """
    factors = 1.0 + strength * (2 * torch.rand(3, generator=generator) - 1)
    brightness, contrast, saturation = factors.tolist()
    image = (image * brightness).clamp(0, 255)
    luma = torch.tensor(LUMA).view(3, 1, 1)
    grey = (image * luma).sum(dim=0, keepdim=True)
    image = (contrast * image + (1 - contrast) * grey.mean()).clamp(0, 255)
    grey = (image * luma).sum(dim=0, keepdim=True)
    return (saturation * image + (1 - saturation) * grey).clamp(0, 255)


@dataclass(frozen=True)
class TrainTransform:
    """SAM3's training augmentation; see the module docstring.

    With ``random_resize`` off, training uses the evaluation resize (direct to S x S), then
    flip and jitter as configured.
    """

    size: int
    random_resize: bool = True
    min_resize_ratio: float = 480 / 1008
    horizontal_flip: float = 0.5
    color_jitter: float = 0.0

    def __call__(
        self, image: torch.Tensor, boxes_xywh: torch.Tensor, generator: torch.Generator,
        orig_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Geometry]:
        """(3, H, W) uint8, (n, 4) xywh -> (3, S, S) float, (n, 4) xyxy input px, Geometry.

        ``orig_size`` (h, w): the full image's size, which boxes (and masks) are measured in,
        when ``image`` was decoded at a reduced size; default the image's own size."""
        height, width = orig_size or tuple(image.shape[-2:])
        content_h, content_w = self._content_size(height, width, generator)
        # Draw every random number in a fixed order, whether or not it is used, so that
        # switching one augmentation on does not shift the draws of the others.
        flip_draw = torch.rand(1, generator=generator).item()
        jitter_generator = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator))
        )
        flipped = flip_draw < self.horizontal_flip
        content = _resize_uint8(image, content_h, content_w)
        if flipped:
            content = content.flip(-1)
        content = content.float()
        if self.color_jitter > 0:
            content = color_jitter(content, self.color_jitter, jitter_generator)
        pixels = torch.full((3, self.size, self.size), -1.0)  # black after normalisation
        pixels[:, :content_h, :content_w] = normalize(content)
        geometry = Geometry((height, width), (content_h, content_w), self.size, flipped)
        return pixels, geometry.map_boxes(boxes_xywh), geometry

    def _content_size(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int]:
        if not self.random_resize:
            return self.size, self.size
        choices = scale_choices(self.size, self.min_resize_ratio)
        long_side = choices[int(torch.randint(len(choices), (1,), generator=generator))]
        scale = long_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic evaluation preprocessing, identical to inference's."""

    size: int

    def __call__(
        self,
        image: torch.Tensor,
        boxes_xywh: torch.Tensor,
        generator: torch.Generator | None = None,
        orig_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Geometry]:
        """(3, H, W) uint8, (n, 4) xywh -> (3, S, S) float, (n, 4) xyxy input px, Geometry;
        ``orig_size`` as in ``TrainTransform``."""
        height, width = orig_size or tuple(image.shape[-2:])
        geometry = Geometry((height, width), (self.size, self.size), self.size)
        return resize_and_normalize(image, self.size), geometry.map_boxes(boxes_xywh), geometry


def build_transform(data_cfg: DataConfig, size: int, train: bool) -> TrainTransform | EvalTransform:
    """The transform a split uses: augmentation from ``data_cfg`` in training, none in eval."""
    if not train:
        return EvalTransform(size)
    return TrainTransform(
        size=size,
        random_resize=data_cfg.random_resize,
        min_resize_ratio=data_cfg.min_resize_ratio,
        horizontal_flip=data_cfg.horizontal_flip,
        color_jitter=data_cfg.color_jitter,
    )
