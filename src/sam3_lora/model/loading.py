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
- a hub id ``owner/name`` such as ``facebook/sam3`` (gated: the token comes from ``HF_TOKEN``
  or the hub login). Access denied, an unreachable hub and a wrong id each give a one-line
  error; a name of any other form that is no folder is reported as "no such folder".

The hub is asked once, without retries and with a short timeout (huggingface_hub would
otherwise retry a failed connection five times, 30-45 s of "Retrying in 8s"): unreachable,
the hub cache is used if it holds the model, else loading fails in one line. ``HF_HUB_OFFLINE=1``
reads the cache alone. ``facebook/sam3``'s architecture is known without the hub (it is
transformers' default ``Sam3Config``), so ``load_sam3_config`` needs no network for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
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
    check_safetensors_weights,
    quiet_progress,
)
from sam3_lora.model.precision import default_device
from sam3_lora.model.processing import Sam3InputProcessor
from sam3_lora.model.quantize import quantize_linears
from sam3_lora.model.roi_align import install_fallback
from sam3_lora.model.tokenizer import VOCAB_SIZE, build_byte_tokenizer

PRESETS = ("sam3", "sam3-tiny", "sam3-small")   # architectures with random weights
BUNDLED = {"sam3-tiny-shapes": Path(__file__).parents[1] / "assets" / "sam3-tiny-shapes"}
TINY_IMAGE_SIZE = 112
# Hub repos whose architecture transformers' default Sam3Config is (its defaults are facebook/sam3's):
# their config is built here, so `sam3-lora info` and other shape-only questions need no network.
KNOWN_HUB_ARCHITECTURES = ("facebook/sam3",)
HUB_TIMEOUT_S = 5.0   # one probe of the hub; HF_HUB_ETAG_TIMEOUT, when set, wins (a slow link)


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
    """The architecture of ``source`` without its weights (fast: no download of weights; no
    network at all for presets, bundled bases, folders and KNOWN_HUB_ARCHITECTURES)."""
    config = _built_config(source, revision)
    if config is None:
        location, cache_only = locate(source, revision, token)
        config = _read_config(location, source, revision, token, cache_only)
    return set_image_size(config, image_size) if image_size else config


def _built_config(source: str, revision: str | None) -> Sam3Config | None:
    """The config of a preset or of a known hub architecture (at its default revision), or None."""
    if source == "sam3" or (source in KNOWN_HUB_ARCHITECTURES and revision is None):
        return Sam3Config()
    if source == "sam3-tiny":
        return tiny_config()
    if source == "sam3-small":
        return tiny_config(width=64)
    return None


def _read_config(location: str, source: str, revision: str | None, token: str | None,
                 cache_only: bool) -> Sam3Config:
    """The ``config.json`` at ``location`` (a folder or a hub id; ``cache_only``: from the hub cache)."""
    try:
        return Sam3Config.from_pretrained(location, revision=revision, token=token, local_files_only=cache_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.source {source!r}: config.json is not a SAM3 config ({exc})") from None


def load_sam3(source: str = "facebook/sam3", *, revision: str | None = None,
              image_size: int | None = None, token: str | None = None, seed: int = 0,
              dtype: torch.dtype = torch.float32, quantize: str = "none",
              device: torch.device | str | None = None) -> LoadedSam3:
    """Load SAM3 and its input processor from a preset, a local folder or a hub id.

    ``seed`` fixes the random weights of presets. ``image_size`` overrides the input size
    (a multiple of 14). ``token`` defaults to ``HF_TOKEN`` or the stored hub login.
    ``dtype`` is that of the weights (``model.precision.resolve_precision`` picks it), whatever
    the checkpoint stores; presets draw their random weights in float32 first, so every dtype
    holds the same weights, rounded. ``quantize`` (``model.quantize``: nf4, fp4, int8) turns
    the Linear layers into bitsandbytes ones computing in ``dtype`` (``model.quantize``),
    quantized on ``device`` (default: the GPU when there is one), where they then already are.
    """
    install_fallback()
    if source in PRESETS:
        config = load_sam3_config(source, revision, image_size, token)
        with seeded(seed):
            model = Sam3Model(config).to(dtype)
        tokenizer = build_byte_tokenizer(config.text_config.max_position_embeddings)
    else:
        location, cache_only = locate(source, revision, token)
        # The checkpoint's own config.json, even for a known architecture: it is the one its weights were saved with.
        config = _read_config(location, source, revision, token, cache_only)
        if image_size:
            set_image_size(config, image_size)
        if Path(location).is_dir():
            check_safetensors_weights(location, source)
        hub = {"revision": revision, "token": token, "local_files_only": cache_only}
        with quiet_progress() if source in BUNDLED else contextlib.nullcontext():
            # An explicit dtype: transformers would otherwise keep the checkpoint's own. Never
            # pickle (pytorch_model.bin), from a folder or the hub: unpickling can run code.
            model = load_pretrained(Sam3Model, location, source, config=config, dtype=dtype,
                                     use_safetensors=True, **hub)
        check_finite_model(model, source)
        tokenizer = load_pretrained(AutoTokenizer, location, source, **hub)
        _check_tokenizer(tokenizer, config, source)
    if quantize != "none":
        quantize_linears(model, quantize, dtype, device or default_device())
    processor = Sam3InputProcessor(
        tokenizer=tokenizer,
        image_size=config.vision_config.backbone_config.image_size,
        max_text_length=config.text_config.max_position_embeddings,
    )
    return LoadedSam3(model=model.eval(), processor=processor, source=source)


def locate(source: str, revision: str | None, token: str | None) -> tuple[str, bool]:
    """Where ``source``'s files are (a folder, or the hub id) and whether to read them from the
    hub cache alone (offline mode, or a hub that cannot be reached)."""
    folder = bundled_folder(source) or local_folder(source)
    if folder:
        return folder, False
    return source, probe_hub(source, revision, token)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch for random-init weights without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def bundled_folder(source: str) -> str | None:
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
    return json.loads((Path(bundled_folder(source)) / METADATA_FILE).read_text())["prompts"]


def _is_hub_id(source: str) -> bool:
    """Whether ``source`` has the form of a hub id, ``owner/name`` (it may be a folder too)."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not source.endswith("/")


def local_folder(source: str) -> str | None:
    """The folder ``source`` names, or None if it has the form of a hub id and is no folder."""
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
    if not _is_hub_id(source):
        raise ModelLoadError(
            f"model.source {source!r}: no such folder ({path.absolute()}); give a save_pretrained folder, "
            f"a hub id owner/name (facebook/sam3) or a preset ({', '.join([*PRESETS, *BUNDLED])})"
        )
    return None


def probe_hub(repo_id: str, revision: str | None, token: str | None) -> bool:
    """Ask the hub once for the repo's config.json, turning each failure into one clear line.

    Returns True where the files are to be read from the hub cache alone: offline mode, or a
    hub that cannot be reached while the cache holds the repo. One request, no retries, a
    short timeout: huggingface_hub's own download retries a failed connection five times.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    not_here = f"model.source {repo_id!r}: no folder {Path(repo_id).absolute()}, and as a hub id"
    offline_fix = (f"download it on a connected machine (hf download {repo_id} --local-dir DIR) "
                   f"and set model.source to DIR")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelLoadError(
            f"model.source {repo_id!r}: not a hub id, folder or preset; use facebook/sam3, a local folder, "
            f"or one of {', '.join([*PRESETS, *BUNDLED])}"
        ) from None
    if is_offline_mode():
        if _in_hub_cache(repo_id, revision):
            return True
        raise ModelLoadError(f"{not_here}: offline mode is on (HF_HUB_OFFLINE) and the hub cache "
                             f"({_hub_cache()}) does not hold it; {offline_fix}")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision), token=token,
                             timeout=_hub_timeout())
    except GatedRepoError:
        raise ModelLoadError(
            f"model.source {repo_id!r}: access denied (gated model); request access on its hub page, then log in "
            f"with `hf auth login` or set HF_TOKEN, or use a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{not_here}: no such model on the hub, or it is private and you are not logged in; "
            f"check the id (e.g. facebook/sam3), log in, or give a local folder"
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"model.source {repo_id!r}: revision {revision!r} not found; check model.revision") from None
    except HfHubHTTPError as exc:
        raise ModelLoadError(f"model.source {repo_id!r}: the hub answered an error ({_first_line(exc)}); "
                             f"{offline_fix}") from None
    except _network_errors() as exc:
        if _in_hub_cache(repo_id, revision):
            warnings.warn(f"model.source {repo_id!r}: the hub is unreachable ({type(exc).__name__}); "
                          f"loading the copy in the hub cache ({_hub_cache()})", stacklevel=2)
            return True
        raise ModelLoadError(f"{not_here}: the hub is unreachable ({type(exc).__name__}: {_first_line(exc)}) "
                             f"and its cache ({_hub_cache()}) does not hold it; {offline_fix}") from None
    return False


def _network_errors() -> tuple[type[Exception], ...]:
    """The failures to reach the hub: those huggingface_hub itself retries (its HTTP library's
    timeouts and network errors), and the operating system's."""
    from huggingface_hub.utils import _http

    return (OSError, *getattr(_http, "_DEFAULT_RETRY_ON_EXCEPTIONS", ()))


def _hub_timeout() -> float:
    """Seconds to wait for the hub's answer: HUB_TIMEOUT_S unless HF_HUB_ETAG_TIMEOUT says otherwise."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT) if os.environ.get("HF_HUB_ETAG_TIMEOUT") else HUB_TIMEOUT_S


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    """Whether the hub cache holds the repo's config.json (at ``revision``)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


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


def load_pretrained(cls, location: str, source: str, **kwargs):
    """``cls.from_pretrained`` with failures turned into one line naming the source."""
    try:
        return cls.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as exc:
        what = "tokenizer" if cls is AutoTokenizer else "model weights"
        raise ModelLoadError(
            f"model.source {source!r}: cannot load the {what} ({_first_line(exc)}); a folder needs both, written "
            f"with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)"
        ) from None
