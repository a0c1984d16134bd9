"""Train/eval transforms: image, boxes and masks stay consistent; randomness is seeded."""

import pytest
import torch

from sam3_lora.config import DataConfig
from sam3_lora.data.masks import mask_to_box, rles_to_input
from sam3_lora.data.rle import to_rle
from sam3_lora.data.transforms import (
    EvalTransform,
    TrainTransform,
    build_transform,
    color_jitter,
    scale_choices,
)
from sam3_lora.model.processing import resize_and_normalize


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def red_rectangle_image(height=90, width=150, box=(30, 20, 60, 40)):
    """(3, H, W) uint8 black image with a red rectangle at COCO ``box`` [x, y, w, h]."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    x, y, w, h = box
    image[0, y : y + h, x : x + w] = 255
    return image, torch.tensor([box], dtype=torch.float)


def red_box(pixels: torch.Tensor) -> torch.Tensor:
    """x1, y1, x2, y2 of the clearly red pixels of a normalised (3, S, S) input."""
    red = (pixels[0] > 0.0) & (pixels[1] < -0.5)
    return mask_to_box(red)


def test_scale_choices_follow_sam3():
    assert scale_choices(1008, 480 / 1008) == list(range(480, 1008, 32)) + [1008]
    assert scale_choices(1008, 1.0) == [1008]
    small = scale_choices(112, 0.5)  # step round(112 * 32 / 1008) = 4
    assert small[0] == 56 and small[-1] == 112 and small[1] - small[0] == 4
    assert scale_choices(14, 0.1) == list(range(2, 15))  # step at least 1


def test_eval_transform_is_inference_preprocessing():
    image, boxes = red_rectangle_image()
    pixels, mapped, geometry = EvalTransform(112)(image, boxes)
    assert torch.equal(pixels, resize_and_normalize(image, 112))
    # Direct resize: x scaled by 112/150, y by 112/90.
    expected = torch.tensor([[30 * 112 / 150, 20 * 112 / 90, 90 * 112 / 150, 60 * 112 / 90]])
    torch.testing.assert_close(mapped, expected)
    assert geometry.content_size == (112, 112) and not geometry.flipped


@pytest.mark.parametrize("size", [224, 1008])
def test_train_transform_keeps_image_box_and_mask_together(size):
    """Over seeds (flipped and not, many scales): pixels, box and mask agree within 1 px."""
    image, boxes = red_rectangle_image()
    rle = to_rle([[30, 20, 90, 20, 90, 60, 30, 60]], 90, 150)
    transform = TrainTransform(size, min_resize_ratio=0.3, horizontal_flip=0.5)
    mask_size = 4 * (size // 14)
    flips = set()
    for seed in range(12):
        pixels, mapped, geometry = transform(image, boxes, seeded(seed))
        flips.add(geometry.flipped)
        assert pixels.shape == (3, size, size)
        assert (red_box(pixels) - mapped[0]).abs().max() <= 1.0
        mask = rles_to_input([rle], geometry, mask_size)[0]
        mask_box_in_input_px = mask_to_box(mask) * size / mask_size
        assert (mask_box_in_input_px - mapped[0]).abs().max() <= size / mask_size + 1e-4
    assert flips == {True, False}


def test_train_resize_keeps_aspect_and_pads_black():
    image, boxes = red_rectangle_image(height=90, width=150)
    transform = TrainTransform(112, min_resize_ratio=0.5, horizontal_flip=0.0)
    for seed in range(6):
        pixels, _, geometry = transform(image, boxes, seeded(seed))
        content_h, content_w = geometry.content_size
        assert content_w in scale_choices(112, 0.5)
        assert abs(content_h - content_w * 90 / 150) <= 0.5 + 1e-6
        assert (pixels[:, content_h:, :] == -1).all() and (pixels[:, :, content_w:] == -1).all()


def test_random_resize_off_resizes_directly_like_eval():
    image, boxes = red_rectangle_image()
    transform = TrainTransform(112, random_resize=False, horizontal_flip=0.0)
    pixels, mapped, geometry = transform(image, boxes, seeded(0))
    eval_pixels, eval_boxes, _ = EvalTransform(112)(image, boxes)
    assert geometry.content_size == (112, 112)
    torch.testing.assert_close(mapped, eval_boxes)
    # uint8 vs float resampling: at most a rounding step apart.
    assert (pixels - eval_pixels).abs().max() <= 2 * 2 / 255 + 1e-6


def test_same_generator_seed_same_output():
    image, boxes = red_rectangle_image()
    transform = TrainTransform(112, min_resize_ratio=0.3, color_jitter=0.4)
    first = transform(image, boxes, seeded(7))
    again = transform(image, boxes, seeded(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[2] == again[2]
    others = [transform(image, boxes, seeded(s))[0] for s in range(8, 12)]
    assert any(not torch.equal(first[0], other) for other in others)


def test_color_jitter_changes_colours_only_in_range():
    image = torch.rand(3, 20, 20, generator=seeded(0)) * 255
    assert torch.equal(color_jitter(image, 0.0, seeded(1)), image)
    jittered = color_jitter(image, 0.5, seeded(1))
    assert not torch.equal(jittered, image)
    assert jittered.min() >= 0 and jittered.max() <= 255


def test_jitter_leaves_padding_and_geometry_alone():
    image, boxes = red_rectangle_image()
    plain = TrainTransform(112, min_resize_ratio=0.3, horizontal_flip=0.5)
    jittered = TrainTransform(112, min_resize_ratio=0.3, horizontal_flip=0.5, color_jitter=0.5)
    a, boxes_a, geometry_a = plain(image, boxes, seeded(3))
    b, boxes_b, geometry_b = jittered(image, boxes, seeded(3))
    # Draws happen in a fixed order: jitter on does not move the scale or the flip.
    assert geometry_a == geometry_b and torch.equal(boxes_a, boxes_b)
    content_h, content_w = geometry_a.content_size
    assert not torch.equal(a, b)
    assert (b[:, content_h:] == -1).all() and (b[:, :, content_w:] == -1).all()


def test_build_transform_reads_config():
    cfg = DataConfig(
        random_resize=False, min_resize_ratio=0.6, horizontal_flip=0.2, color_jitter=0.3
    )
    train = build_transform(cfg, 112, train=True)
    assert train == TrainTransform(112, False, 0.6, 0.2, 0.3)
    assert build_transform(cfg, 112, train=False) == EvalTransform(112)
