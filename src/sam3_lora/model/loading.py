"""Loading SAM3 from any source: a hub id, a local folder, or a named preset.

``load_sam3(source)`` returns the model with the processor that turns images and prompts
into its inputs. Sources, in the order they are recognised:

- a preset name: ``sam3`` (the full-size architecture, 840M parameters, random weights: for
  benchmarks and tests of the real shapes) or ``sam3-tiny`` (~0.4M parameters, 112 px,
  random weights: for tests). Presets use the byte-level tokenizer, since CLIP's vocabulary
  cannot be had offline.
- ``sam3-tiny-shapes``: the bundled pretrained base, ``sam3-tiny`` trained from scratch on
  synthetic coloured shapes (``configs/base.yaml`` says how); shipped inside the package, so
  it loads offline. Its ``sam3_lora.json`` lists the concepts it knows.
- a local folder written by ``save_pretrained`` (model and tokenizer): the offline path.
- a hub id such as ``facebook/sam3`` (gated: the token comes from ``HF_TOKEN`` or the hub
  login). Access denied, an unreachable hub and a wrong id each give a one-line error.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    Sam3Config,
    Sam3DETRDecoderConfig,
    Sam3DETREncoderConfig,
    Sam3GeometryEncoderConfig,
    Sam3MaskDecoderConfig,
    Sam3Model,
    Sam3VisionConfig,
    Sam3ViTConfig,
)

from sam3_lora.errors import ModelLoadError
from sam3_lora.model.folders import (
    METADATA_FILE,
    check_finite_model,
    check_model_metadata,
    quiet_progress,
)
from sam3_lora.model.processing import Sam3InputProcessor
from sam3_lora.model.roi_align import install_fallback
from sam3_lora.model.tokenizer import VOCAB_SIZE, build_byte_tokenizer

PRESETS = ("sam3", "sam3-tiny", "sam3-small")   # architectures with random weights
BUNDLED = {"sam3-tiny-shapes": Path(__file__).parents[1] / "assets" / "sam3-tiny-shapes"}
TINY_IMAGE_SIZE = 112


@dataclass
class LoadedSam3:
    """A SAM3 model with what turns images and prompts into its inputs."""

    model: Sam3Model
    processor: Sam3InputProcessor
    source: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def save_pretrained(self, folder: str | Path) -> None:
        """Write model and tokenizer so that ``load_sam3(folder)`` reads them back offline."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def tiny_config(image_size: int = TINY_IMAGE_SIZE, width: int = 32) -> Sam3Config:
    """The ``sam3-tiny`` architecture: every SAM3 component, a few hundred thousand weights.
    ``width`` is that of the text encoder and of everything after the ViT (``sam3-small``: 64)."""
    vit = Sam3ViTConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=14, window_size=4, global_attn_indexes=[1],
        pretrain_image_size=image_size,
    )
    text = CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=32, projection_dim=width,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    sizes = {"hidden_size": width, "num_attention_heads": 2, "intermediate_size": 2 * width}
    config = Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=width),
        text_config=text,
        geometry_encoder_config=Sam3GeometryEncoderConfig(num_layers=1, **sizes),
        detr_encoder_config=Sam3DETREncoderConfig(num_layers=1, **sizes),
        detr_decoder_config=Sam3DETRDecoderConfig(num_layers=2, num_queries=20, **sizes),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=width, num_attention_heads=2),
    )
    return set_image_size(config, image_size)


def set_image_size(config: Sam3Config, image_size: int) -> Sam3Config:
    """Set the square input size and the feature-map sizes that follow from it."""
    backbone = config.vision_config.backbone_config
    if image_size % backbone.patch_size:
        raise ModelLoadError(
            f"model.image_size={image_size}: must be a multiple of the patch size "
            f"{backbone.patch_size}, e.g. {image_size // backbone.patch_size * backbone.patch_size}"
        )
    grid = image_size // backbone.patch_size
    backbone.image_size = image_size
    config.vision_config.backbone_feature_sizes = [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]
    return config


def load_sam3_config(source: str, revision: str | None = None, image_size: int | None = None,
                     token: str | None = None) -> Sam3Config:
    """The architecture of ``source`` without its weights (fast: no download of weights)."""
    if source == "sam3":
        config = Sam3Config()
    elif source == "sam3-tiny":
        config = tiny_config()
    elif source == "sam3-small":
        config = tiny_config(width=64)
    else:
        location = _bundled(source) or _local_folder(source) or _probe_hub(source, revision, token)
        try:
            config = Sam3Config.from_pretrained(location, revision=revision, token=token)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model.source {source!r}: config.json is not a SAM3 config ({exc})") from None
    return set_image_size(config, image_size) if image_size else config


def load_sam3(source: str = "facebook/sam3", *, revision: str | None = None,
              image_size: int | None = None, token: str | None = None, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> LoadedSam3:
    """Load SAM3 and its input processor from a preset, a local folder or a hub id.

    ``seed`` fixes the random weights of presets. ``image_size`` overrides the input size
    (a multiple of 14). ``token`` defaults to ``HF_TOKEN`` or the stored hub login.
    ``dtype`` is that of the weights (``model.precision.resolve_precision`` picks it), whatever
    the checkpoint stores; presets draw their random weights in float32 first, so every dtype
    holds the same weights, rounded.
    """
    install_fallback()
    config = load_sam3_config(source, revision, image_size, token)
    if source in PRESETS:
        with _seeded(seed):
            model = Sam3Model(config).to(dtype)
        tokenizer = build_byte_tokenizer(config.text_config.max_position_embeddings)
    else:
        location = _bundled(source) or _local_folder(source) or source
        with quiet_progress() if source in BUNDLED else contextlib.nullcontext():
            # An explicit dtype: transformers would otherwise keep the checkpoint's own.
            model = _from_pretrained(Sam3Model, location, source, config=config, revision=revision, token=token,
                                     dtype=dtype)
        check_finite_model(model, source)
        tokenizer = _from_pretrained(AutoTokenizer, location, source, revision=revision, token=token)
        _check_tokenizer(tokenizer, config, source)
    processor = Sam3InputProcessor(
        tokenizer=tokenizer,
        image_size=config.vision_config.backbone_config.image_size,
        max_text_length=config.text_config.max_position_embeddings,
    )
    return LoadedSam3(model=model.eval(), processor=processor, source=source)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch for random-init weights without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _bundled(source: str) -> str | None:
    """The package's folder of a bundled model, or None if ``source`` is not one."""
    if source not in BUNDLED:
        return None
    folder = BUNDLED[source]
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"model.source {source!r}: the bundled weights are missing from {folder}; "
                             f"reinstall sam3-lora (pip install -e .)")
    return str(folder)


def bundled_concepts(source: str) -> list[str]:
    """The concepts a bundled base was trained on (its ``sam3_lora.json`` prompts)."""
    return json.loads((Path(_bundled(source)) / METADATA_FILE).read_text())["prompts"]


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith("/") or source.count("/") > 1


def _local_folder(source: str) -> str | None:
    """The folder ``source`` names, or None if it is not a path."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model.source {source!r}: folder has no config.json; give a folder written by save_pretrained"
            )
        check_model_metadata(path)
        return str(path)
    if path.exists():
        raise ModelLoadError(f"model.source {source!r}: is a file; model.source takes a folder, a hub id or a preset")
    if _looks_like_path(source):
        raise ModelLoadError(
            f"model.source {source!r}: no such folder; give a save_pretrained folder, a hub id "
            f"(facebook/sam3) or a preset ({', '.join([*PRESETS, *BUNDLED])})"
        )
    return None


def _probe_hub(repo_id: str, revision: str | None, token: str | None) -> str:
    """Fetch the repo's config.json to turn hub failures into one clear line."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline_fix = (f"download it on a connected machine (hf download {repo_id} --local-dir DIR) "
                   f"and set model.source to DIR")
    try:
        hf_hub_download(repo_id, "config.json", revision=revision, token=token)
    except GatedRepoError:
        raise ModelLoadError(
            f"model.source {repo_id!r}: access denied (gated model); request access on its hub page, then log in "
            f"with `hf auth login` or set HF_TOKEN, or use a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"model.source {repo_id!r}: no such model on the hub, or it is private and you are not logged in; "
            f"check the id (e.g. facebook/sam3), log in, or give a local folder"
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"model.source {repo_id!r}: revision {revision!r} not found; check model.revision") from None
    except HFValidationError:
        raise ModelLoadError(
            f"model.source {repo_id!r}: not a hub id, folder or preset; use facebook/sam3, a local folder, "
            f"or one of {', '.join([*PRESETS, *BUNDLED])}"
        ) from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"model.source {repo_id!r}: the hub is unreachable (offline?); {offline_fix}") from None
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"model.source {repo_id!r}: the hub answered an error ({exc}); {offline_fix}") from None
    except OSError as exc:
        raise ModelLoadError(f"model.source {repo_id!r}: the hub is unreachable ({type(exc).__name__}); {offline_fix}") from None
    return repo_id


def _check_tokenizer(tokenizer, config: Sam3Config, source: str) -> None:
    """Refuse a tokenizer that cannot serve the text encoder.

    transformers builds an empty two-token CLIP tokenizer from a folder that has none, which
    would turn every prompt into the same ids: catch that here rather than in training.
    """
    vocab = config.text_config.vocab_size
    if len(tokenizer) < 4 or len(tokenizer) > vocab:
        raise ModelLoadError(
            f"model.source {source!r}: its tokenizer has {len(tokenizer)} tokens for a text encoder "
            f"of {vocab}; save the matching tokenizer with tokenizer.save_pretrained(DIR)"
        )


def _from_pretrained(cls, location: str, source: str, **kwargs):
    """``cls.from_pretrained`` with failures turned into one line naming the source."""
    try:
        return cls.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        what = "tokenizer" if cls is AutoTokenizer else "model weights"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"model.source {source!r}: cannot load the {what} ({first_line}); a folder needs both, written "
            f"with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)"
        ) from None
