"""Images and prompts into SAM3's inputs, without transformers' image processor.

transformers' ``Sam3ImageProcessor`` needs torchvision, which CPU machines cannot have, so
this module does the same preprocessing itself: a direct (not aspect-preserving) bilinear
resize to the model's square size, scaling to [0, 1], then mean 0.5 / std 0.5 normalisation.
Text goes through the model's tokenizer, padded to its context length (32 for SAM3's CLIP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_MEAN = 0.5
IMAGE_STD = 0.5
BOX_PADDING_LABEL = -10
"""SAM3's label for a padding box (and transformers' ``Sam3Processor.point_pad_value``)."""


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 or float in [0, 255] -> float normalised as SAM3 expects."""
    return (pixels.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD


def image_to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """An RGB PIL image or HxWx3 uint8 array -> (3, H, W) uint8 tensor."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape HxWx3, got {array.shape}")
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1)


def resize_and_normalize(image: Image.Image | np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """SAM3's evaluation preprocessing: direct bilinear resize to size x size, normalise.

    Returns (3, size, size) float32.
    """
    pixels = image if isinstance(image, torch.Tensor) else image_to_tensor(image)
    resized = F.interpolate(
        pixels[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]
    return normalize(resized.clamp(0, 255))


@dataclass
class Sam3InputProcessor:
    """Turns images and text prompts into ``Sam3Model`` keyword arguments.

    ``image_size`` is the model's square input size; ``tokenizer`` is any transformers
    tokenizer (CLIP for real checkpoints, the byte-level one of the tiny preset).
    """

    tokenizer: object
    image_size: int
    max_text_length: int = 32

    def images(self, images: list) -> torch.Tensor:
        """List of PIL images / arrays -> (B, 3, S, S) ``pixel_values``."""
        return torch.stack([resize_and_normalize(image, self.image_size) for image in images])

    def text(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """List of prompts -> ``input_ids`` and ``attention_mask``, each (K, max_text_length)."""
        encoded = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_text_length,
            truncation=True,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def save_processor_config(folder: str | Path, image_size: int, patch_size: int = 14) -> list[Path]:
    """Write what transformers' ``Sam3Processor.from_pretrained(folder)`` reads besides the
    tokenizer, describing the preprocessing above (direct bilinear resize to ``image_size``,
    /255, mean 0.5, std 0.5): ``processor_config.json`` (the processor, with its image
    processor nested, as transformers 5 saves it) and ``preprocessor_config.json`` (the image
    processor alone, where older loaders look). Written as JSON because transformers' image
    processor itself cannot be built without torchvision. Returns the paths written."""
    image_processor = {
        "image_processor_type": "Sam3ImageProcessor",
        "do_convert_rgb": True, "do_resize": True, "do_rescale": True, "do_normalize": True,
        "size": {"height": image_size, "width": image_size},
        "mask_size": {"height": 4 * (image_size // patch_size), "width": 4 * (image_size // patch_size)},
        "resample": 2,   # PIL's BILINEAR
        "rescale_factor": 1 / 255,
        "image_mean": [IMAGE_MEAN] * 3,
        "image_std": [IMAGE_STD] * 3,
    }
    processor = {"processor_class": "Sam3Processor", "image_processor": image_processor,
                 "target_size": image_size, "point_pad_value": BOX_PADDING_LABEL}
    written = []
    for name, content in (("processor_config.json", processor),
                          ("preprocessor_config.json", {**image_processor, "processor_class": "Sam3Processor"})):
        path = Path(folder) / name
        path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
