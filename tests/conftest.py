"""Shared fixtures: tiny random SAM3 models and a synthetic image, all built offline."""

import os
from pathlib import Path

from sam3_lora.cpu import share_cpu, usable_cpus

# pytest-xdist runs the suite on several worker processes (pyproject.toml's addopts): each
# takes its share of the CPUs, its threads waiting passively as a command's do (cpu.share_cpu),
# before torch reads the settings.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // _WORKERS)))
    share_cpu()

import numpy as np  # after the thread settings above
import pytest
import torch
from PIL import Image

from sam3_lora.model.loading import load_sam3

# The tests' fixed LoRA config on the random tiny model (see the file).
TINY_CONFIG = Path(__file__).parent / "tiny.yaml"


@pytest.fixture
def tiny():
    """A fresh ``sam3-tiny`` (seed 0) with its processor; cheap, so one per test."""
    return load_sam3("sam3-tiny", seed=0)


@pytest.fixture
def image():
    """A 90x120 random RGB image."""
    return Image.fromarray((np.random.RandomState(0).rand(90, 120, 3) * 255).astype("uint8"))


@pytest.fixture
def tiny_inputs(tiny, image):
    """Model inputs for one image and two prompts (one row per (image, prompt) pair)."""
    pixels = tiny.processor.images([image, image])
    return {"pixel_values": pixels, **tiny.processor.text(["red circle", "blue star"])}


PREDICTIONS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits")


@pytest.fixture
def predict(tiny_inputs):
    """predict(model) -> the prediction tensors of a no-grad forward on ``tiny_inputs``."""

    def run(model) -> dict:
        with torch.no_grad():
            out = model(**tiny_inputs)
        return {k: out[k] for k in PREDICTIONS}

    return run


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two dicts of same-shaped tensors."""
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture
def differ():
    return max_difference
