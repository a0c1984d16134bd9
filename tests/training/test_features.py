import json

import pytest
import torch

from sam3_lora.config import load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import ConfigError
from sam3_lora.model.forward import encode_images
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.training.features import FeatureCache, image_key
from tests.conftest import TINY_CONFIG

# The tests' tiny LoRA config with the vision encoder left alone (as in the heads and demo
# presets), and augmentation that repeats: each image is one draw, reused from epoch 2.
FROZEN_TRUNK = ["lora.apply_to_vision_encoder=false", "data.random_resize=false", "data.horizontal_flip=0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Synthetic coloured shapes at the tiny model's 112 px: 8 train, 4 valid images."""
    root = tmp_path_factory.mktemp("shapes")
    synthesize(root, images_per_split={"train": 8, "valid": 4, "test": 0}, image_size=112, seed=0)
    return root


def trainer(shapes, run, *overrides) -> SAM3LoRATrainer:
    config = load_config(TINY_CONFIG, [f"data.root={shapes}", f"output.dir={run}", "training.batch_size=4",
                                       "training.report_to=[]", "training.log_every_steps=1", *FROZEN_TRUNK,
                                       *overrides])
    return SAM3LoRATrainer(config, quiet=True).setup()


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_with_cached_features_equals_the_loss_without(shapes, tmp_path):
    """Same seed, 6 steps (3 epochs of 2 batches, each followed by a validation): every
    training and validation loss agrees, while after the first epoch and the first validation
    no image is encoded again. (One trainer at a time: Accelerate's state is process-wide.)"""
    plain = trainer(shapes, tmp_path / "plain", "training.max_steps=6")
    plain.train()
    cached = trainer(shapes, tmp_path / "cached", "training.max_steps=6", "data.cache_features=ram")
    cached.train()
    without, with_cache = records(tmp_path / "plain"), records(tmp_path / "cached")
    for key in ("loss", "val_loss"):
        expected, found = ([r[key] for r in rs if key in r] for rs in (without, with_cache))
        assert len(expected) == (6 if key == "loss" else 3)
        torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-6)
    assert cached.features is not None and plain.features is None
    # 8 training and 4 validation images encoded once; then 2 x 8 + 2 x 4 reuses.
    assert (cached.features.misses, cached.features.hits) == (12, 24)
    # logged after each step: the first validation (after step 2) encodes, the second reuses
    assert [r["feature_cache_hits"] for r in with_cache if "loss" in r] == [0, 0, 4, 8, 16, 20]


def test_the_cache_keeps_within_its_byte_budget(shapes, tmp_path):
    """An entry of the tiny model is 3 FPN levels (32 channels at 32^2, 16^2 and 8^2) in float32."""
    entry = 32 * (32 * 32 + 16 * 16 + 8 * 8) * 4
    run = trainer(shapes, tmp_path / "run", "training.max_steps=4", "data.cache_features=ram",
                  f"data.cache_features_bytes={3 * entry}")
    run.train()
    assert run.features.stored_bytes == 3 * entry and len(run.features.entries) == 3
    # epoch 1: 8 encoded (3 kept), validation: 4; epoch 2: 3 reused, 5 encoded again; validation: 4
    assert run.features.hits == 3 and run.features.misses == 8 + 4 + 5 + 4


def test_the_disk_cache_is_reused_by_the_next_run(shapes, tmp_path):
    folder = tmp_path / "features"
    first = trainer(shapes, tmp_path / "one", "training.max_steps=2", "data.cache_features=disk",
                    f"data.cache_features_dir={folder}")
    first.train()
    files = list(folder.glob("*/*.safetensors"))
    assert len(files) == 12 and first.features.hits == 0   # 8 train + 4 valid, each seen once
    second = trainer(shapes, tmp_path / "two", "training.max_steps=2", "data.cache_features=disk",
                     f"data.cache_features_dir={folder}")
    second.train()
    # The first batch computes (it also yields the shape-only position encodings), then the
    # files serve: 4 images of batch 2 and the 4 validation images.
    assert (second.features.misses, second.features.hits) == (4, 8)
    assert sorted(folder.glob("*/*.safetensors")) == sorted(files)


def test_a_draw_is_its_own_entry():
    """The key is the transformed image: a flipped draw is another entry, the same draw the same."""
    image = torch.rand(3, 28, 28)
    assert image_key(image) == image_key(image.clone())
    assert image_key(image.flip(-1)) != image_key(image)
    assert image_key(image.double()) != image_key(image)


def test_cached_features_are_the_encoders_own(tiny):
    pixels = torch.rand(3, 3, 112, 112)
    keys = [image_key(p) for p in pixels]
    cache = FeatureCache(budget=10**9)
    first = cache.encode(tiny.model, pixels[:2], keys[:2])
    again = cache.encode(tiny.model, pixels, keys)   # 2 from the cache, 1 encoded
    with torch.no_grad():
        direct = encode_images(tiny.model, pixels)
    assert (cache.hits, cache.misses) == (2, 3)
    for level, expected in zip(again.fpn_hidden_states[:-1], direct.fpn_hidden_states[:-1]):
        torch.testing.assert_close(level, expected)
    for level, expected in zip(again.fpn_position_encoding[:-1], direct.fpn_position_encoding[:-1]):
        torch.testing.assert_close(level, expected)
    torch.testing.assert_close(first.fpn_hidden_states[0], direct.fpn_hidden_states[0][:2])


@pytest.mark.parametrize("override, message", [
    ("lora.apply_to_vision_encoder=true", "the vision encoder trains .*set lora.apply_to_vision_encoder=false"),
    ("data.color_jitter=0.2", "data.color_jitter > 0 makes every image draw new"),
])
def test_a_cache_that_cannot_be_right_or_useful_is_refused(shapes, tmp_path, override, message):
    with pytest.raises(ConfigError, match=rf"data.cache_features=ram: {message}.*or set data.cache_features=off"):
        trainer(shapes, tmp_path / "run", "data.cache_features=ram", override)


def test_full_training_trains_the_vision_encoder_so_it_is_never_cached(shapes, tmp_path):
    with pytest.raises(ConfigError, match="the vision encoder trains"):
        trainer(shapes, tmp_path / "run", "data.cache_features=ram", "training.method=full")

