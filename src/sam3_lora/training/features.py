"""Cached image features (``data.cache_features``): the vision encoder runs once per image.

When no trainable weight sits in SAM3's vision encoder (no LoRA there, nothing unfrozen) and
nothing random happens inside it (its dropouts are 0), its output depends only on the
transformed image: training can compute it once and reuse it at every epoch and every
evaluation. ``trunk_problem`` is the one place that asks; the trainer refuses a cache it
answers with a reason (one line naming the key that fixes it).

The key of an image is a hash of the transformed input itself (``image_keys``: BLAKE2b of
its shape, dtype and bytes, computed in the data loader's workers), so the key is "the image
and its transform" exactly: with random augmentation each draw is its own entry, reused
only when the same draw comes again (``random_resize`` draws about 17 scales, times 2 with
``horizontal_flip``: reuse starts after that many epochs; ``color_jitter`` never repeats, so
the trainer refuses the cache with it). What is kept per image: the three FPN levels SAM3's
heads read (at 1008 px: 288^2, 144^2 and 72^2 positions x 256 channels, 56 MB in bfloat16,
111 MB in float32), in the dtype the encoder produced them in, so the heads see exactly what
they would have seen. The position encodings depend on shapes alone and are kept once.

``ram`` keeps entries in CPU memory, ``disk`` in a folder as safetensors files, which later
runs on the same base reuse (the folder is keyed by a fingerprint of the vision encoder's
weights and the precision). Both stop adding entries once ``data.cache_features_bytes`` is
reached and keep what they hold: every epoch visits every image in turn, so evicting the
oldest would only trade one miss for another.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn
from torch.utils.data import DataLoader
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from sam3_lora.config import DataConfig
from sam3_lora.files import write_file
from sam3_lora.model.adapter_parameters import is_adapter_parameter
from sam3_lora.model.forward import encode_images

KEY_BYTES = 16   # BLAKE2b digest size of an image key: 128 bits, collisions out of reach


def trunk_problem(model: nn.Module, data: DataConfig) -> str | None:
    """Why the vision encoder's output cannot be cached for ``model`` and ``data``, or None:
    it must have no trainable weight and no LoRA, no dropout, and the augmentation must be
    able to repeat a draw."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoder = getattr(base, "vision_encoder", None)
    if encoder is None:
        return "the model has no vision_encoder"
    adapted = any(is_adapter_parameter(name) for name, _ in encoder.named_modules())
    if adapted or any(p.requires_grad for p in encoder.parameters()):
        return ("the vision encoder trains (LoRA or unfrozen weights there); set lora.apply_to_vision_encoder=false "
                "(the heads preset) with training.method=lora, or training.component_learning_rates="
                "{vision_encoder: 0} with training.method=full")
    if any(_drops(module) for module in encoder.modules()):
        return "the vision encoder has dropout, so its output changes from call to call"
    if data.color_jitter > 0:
        return "data.color_jitter > 0 makes every image draw new, so nothing would be reused; set data.color_jitter=0"
    return None


def _drops(module: nn.Module) -> bool:
    """Whether ``module`` applies a non-zero dropout in training mode."""
    if isinstance(module, nn.Dropout):
        return module.p > 0
    rate = getattr(module, "attention_dropout", 0.0)   # SAM3's ViT attention: a float rate
    return isinstance(rate, float) and rate > 0


# ---- keys, computed in the loader --------------------------------------------------------

def image_key(pixels: torch.Tensor) -> str:
    """The cache key of one transformed image (3, S, S): a hash of what the encoder reads."""
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    digest.update(f"{tuple(pixels.shape)}{pixels.dtype}".encode())
    digest.update(pixels.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _collate_with_keys(collate, samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate(samples)
    batch["image_keys"] = [image_key(image) for image in batch["pixel_values"]]
    return batch


def with_image_keys(loader: DataLoader) -> DataLoader:
    """``loader`` whose batches also carry ``image_keys`` (B strings), hashed in its workers."""
    if not isinstance(loader.collate_fn, functools.partial) or loader.collate_fn.func is not _collate_with_keys:
        loader.collate_fn = functools.partial(_collate_with_keys, loader.collate_fn)
    return loader


# ---- the cache -----------------------------------------------------------------------------

class FeatureCache:
    """Vision features by image key, in RAM or in a folder, up to ``budget`` bytes.

    ``encode(model, pixel_values, keys)`` returns what ``model.forward_queries`` takes as
    ``vision``: cached entries as they are, the rest encoded (in one call) and stored.
    ``hits`` / ``misses`` count images; ``stored_bytes`` what the entries hold.
    """

    def __init__(self, budget: int, folder: Path | None = None):
        self.budget, self.folder = budget, folder
        self.entries: dict[str, tuple[torch.Tensor, ...]] = {}
        self.positions: tuple[torch.Tensor, ...] | None = None
        self.formats: tuple[torch.memory_format, ...] = ()
        self.hits = self.misses = self.stored_bytes = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self.stored_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))

    def encode(self, model: nn.Module, pixel_values: torch.Tensor, keys: list[str]) -> Sam3VisionEncoderOutput:
        """Vision features of the B images (``pixel_values`` (B, 3, S, S) with their keys)."""
        found = [self._get(key) for key in keys]
        # One encoding per distinct image: the tracker's batches hold a row per object.
        first_row: dict[str, int] = {}
        for index, (key, entry) in enumerate(zip(keys, found)):
            if entry is None:
                first_row.setdefault(key, index)
        self.hits += len(keys) - len(first_row)
        self.misses += len(first_row)
        if first_row:
            with torch.no_grad():
                fresh = encode_images(model, pixel_values[list(first_row.values())])
            # The heads read every FPN level but the last (Sam3Model.forward: [:-1]; the tracker: [:3]).
            levels = fresh.fpn_hidden_states[:-1]
            self.positions = tuple(p[:1] for p in fresh.fpn_position_encoding[:-1])
            self.formats = tuple(_memory_format(level) for level in levels)
            encoded = {key: tuple(level[row] for level in levels) for row, key in enumerate(first_row)}
            for key, entry in encoded.items():
                self._put(key, entry)
            found = [entry if entry is not None else encoded[key] for key, entry in zip(keys, found)]
        return self._output(found, pixel_values.device)

    def _output(self, found: list[tuple[torch.Tensor, ...]], device: torch.device) -> Sam3VisionEncoderOutput:
        count = len(found)
        # In the encoder's own memory layout (channels-last): the heads' kernels, and so their
        # float sums, follow the layout.
        levels = tuple(torch.stack([entry[i] for entry in found]).to(device).contiguous(memory_format=form)
                       for i, form in enumerate(self.formats))
        positions = tuple(p.to(device).expand(count, *p.shape[1:]).contiguous(memory_format=form)
                          for p, form in zip(self.positions, self.formats))
        # The last level and last_hidden_state are never read by the heads: empty stand-ins
        # keep the output's form (forward.select_images picks rows of every field).
        empty = levels[0].new_zeros(count, 0)
        return Sam3VisionEncoderOutput(last_hidden_state=empty, fpn_hidden_states=(*levels, empty),
                                       fpn_position_encoding=(*positions, empty))

    def _get(self, key: str) -> tuple[torch.Tensor, ...] | None:
        if key in self.entries:
            return self.entries[key]
        if self.folder is None or self.positions is None:   # positions come with the first encoding
            return None
        path = self.folder / f"{key}.safetensors"
        try:
            tensors = load(path.read_bytes())
        except (OSError, SafetensorError):   # absent, or half-written by a run that was killed
            return None
        return tuple(tensors[f"level{i}"] for i in range(len(tensors)))

    def _put(self, key: str, levels: tuple[torch.Tensor, ...]) -> None:
        size = sum(level.numel() * level.element_size() for level in levels)
        if self.stored_bytes + size > self.budget:
            return
        levels = tuple(level.detach().to("cpu").clone(memory_format=torch.contiguous_format) for level in levels)
        if self.folder is None:
            self.entries[key] = levels
        else:
            write_file(self.folder / f"{key}.safetensors", save({f"level{i}": t for i, t in enumerate(levels)}))
        self.stored_bytes += size


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """The layout of a (B, C, H, W) feature map: channels-last (SAM3's FPN) or contiguous."""
    channels_last = tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def fingerprint(model: nn.Module, precision: str) -> str:
    """A name for what the vision encoder computes: a hash of its weights and ``precision``
    (the autocast it runs under), so a disk cache is never read by another base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    digest = hashlib.blake2b(precision.encode(), digest_size=KEY_BYTES)
    for name, tensor in [*base.vision_encoder.named_parameters(), *base.vision_encoder.named_buffers()]:
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
