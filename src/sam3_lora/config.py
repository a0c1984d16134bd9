"""The one config schema every command reads, documented field by field.

A config is YAML with seven sections: ``model``, ``lora``, ``data``, ``training``, ``loss``,
``evaluation``, ``output``. Every field below is the single source of its default; the
presets in ``configs/`` only state what differs. Unknown keys are errors with a suggestion,
and bad values name the key that holds them.

Command-line overrides use ``section.key=value`` (the value is parsed as YAML, so
``lora.target_modules=[q_proj,v_proj]`` works), and the original tool's flags map onto keys
through ``LEGACY_FLAGS``.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from sam3_lora.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"

# The SAM3 components LoRA can be switched on for, in pipeline order: the detector's six
# (``model.task: concept``), the tracker's prompt encoder (``interactive``: the tracker has
# ``vision_encoder``, ``prompt_encoder`` and ``mask_decoder``), and the video tracker's memory
# (``video``: those three plus ``memory_attention`` and ``memory_encoder``).
COMPONENTS = (
    "vision_encoder",
    "text_encoder",
    "geometry_encoder",
    "detr_encoder",
    "detr_decoder",
    "prompt_encoder",
    "mask_decoder",
    "memory_attention",
    "memory_encoder",
)
# Small heads that full training may give a learning rate of their own
# (``training.component_learning_rates``): the detector's two outside the components (the text
# projection into the DETR width, the dot-product scoring of queries against the prompt), and
# the tracker's two inside its mask decoder (the IoU prediction that picks one of a click's
# three masks, and the object score). A head's rate overrides its component's.
HEADS = ("text_projection", "dot_product_scoring", "iou_prediction_head", "pred_obj_score_head")
# The highest LoRA rank: no SAM3 layer has a smaller side than this above it (the ViT's width
# is 1024), so a higher rank cannot add anything. Adapters read from disk are held to it too.
MAX_RANK = 1024
# Limits on what a config file may be: its size, and how deep its values nest. Echoed values
# in error messages are shortened (``_shown``), so a message stays one short line.
MAX_CONFIG_BYTES = 1_000_000
MAX_NESTING = 20


# What YAML 1.1 (PyYAML's safe_load) reads as numbers and booleans that YAML 1.2, and every
# user, reads as words or as decimal numbers: ``no``/``off``/``yes``/``on`` became booleans
# (``training.mixed_precision: no`` was refused as "got False"), ``0x10`` was 16 and ``010``
# was 8. ``ConfigLoader`` resolves plain scalars as YAML 1.2's core schema does, for config
# files and overrides alike; hex, octal and binary forms then reach the schema as text, which
# ``Section`` refuses where a number is due.
_NOT_DECIMAL = re.compile(r"[-+]?0[0-9_]*[0-9xXoObB]")
_YAML_11_WORDS = {True: {"yes", "on", "y", "true"}, False: {"no", "off", "n", "false"}}


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema booleans (true/false only) and decimal
    numbers (``1e-4`` is a float, as it is not in YAML 1.1); everything else stays a string."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"),
                                   list("-+0123456789"))
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:(?:0|[1-9][0-9_]*)(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


class Section(BaseModel):
    """Base of every section: misspelt keys are errors, assignments are re-validated."""

    # Field docstrings become the schema's descriptions: ``sam3-lora info --explain KEY``
    # and docs/config.md print them.
    # Floats must be finite: a NaN or infinite learning rate, weight or threshold is never meant.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false would pass as 1/0 where a number is due (``lora.rank: true``), and
        pydantic would read ``010`` as 10 where YAML 1.1 meant 8: numbers are plain decimals.
        A choice that is a YAML 1.1 boolean word (``mixed_precision: no``) is taken back from
        the boolean a YAML 1.1 reader made of it, in a dict given to ``validate_config``."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and typing.get_origin(annotation) is Literal:
            words = [c for c in typing.get_args(annotation) if str(c).lower() in _YAML_11_WORDS[value]]
            return words[0] if len(words) == 1 else value
        if not _is_number(annotation):
            return value
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")   # noqa: TRY004 - pydantic reports ValueError
        if isinstance(value, str) and _NOT_DECIMAL.match(value.strip()):
            raise ValueError("write numbers in decimal (no 0x, 0o, 0b or leading 0)")
        return value


class ModelConfig(Section):
    """Which SAM3 to start from, for which task, and at what input size."""

    task: Literal["concept", "interactive", "video"] = "concept"
    """What is fine-tuned. ``concept``: SAM3's detector (``Sam3Model``), which finds every
    instance of a text prompt. ``interactive``: SAM3's tracker (``Sam3TrackerModel``), which
    segments one object from clicks, a box or a mask (SAM 2's task), trained on every
    object of the dataset that has a mask, with SAM 2's prompts and correction clicks
    (``training.correction_rounds``). ``video``: SAM3's video tracker
    (``Sam3TrackerVideoModel``), which follows the objects prompted on a clip's first frame
    through its memory, trained on clips of a DAVIS / YouTube-VOS layout dataset as SAM 2
    trains (``data.clip_frames``, ``training.frames_to_correct``). Every ``source`` serves
    the first two; the bundled ``sam3-tiny-shapes`` has a tracker trained with it
    (``configs/base-tracker.yaml``)."""

    source: str = "facebook/sam3"
    """Where SAM3 comes from: a hub id (``facebook/sam3``, gated: the token is read from
    ``HF_TOKEN`` or ``hf auth login``), a local folder in ``save_pretrained`` format, or a preset
    name: ``sam3`` (full-size architecture, random weights, for benchmarks), ``sam3-tiny``
    (a few hundred thousand parameters, random weights, for tests) or ``sam3-tiny-shapes``
    (``sam3-tiny`` pretrained on synthetic coloured shapes, bundled: the demo's base)."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id; ignored for folders and presets."""

    image_size: int | None = Field(default=None, ge=28, le=2016)
    """Input resolution in pixels (square), 28 to 2016 (twice SAM3's own). ``None`` keeps the
    model's own (1008 for SAM3). Must be a multiple of the ViT patch size (14). Smaller sizes
    cut memory and time roughly quadratically; pretrained weights were trained at 1008, so
    quality drops away from it."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the base model's weights, in training and wherever the model runs (``predict``,
    ``validate``, the app, the demo). ``auto``: bfloat16 on CUDA GPUs with bf16 (Ampere and
    newer), float16 on older ones, float32 on CPU; in training it follows an explicit
    ``training.mixed_precision`` (float32 under ``no``), and with ``training.method=full`` it
    is float32 (a half one is refused there: AdamW needs float32 weights). A half-precision
    base halves the weights' memory (3.4 -> 1.7 GB for SAM3) and computes under autocast of
    its dtype; LoRA weights, their gradients, the optimiser state and saved adapters stay
    float32. ``float16`` needs a CUDA GPU."""

    tracker_width: int | None = Field(default=None, ge=32, le=1024, multiple_of=32)
    """``model.task: interactive`` and ``video``: the width of a tracker built new on a
    detector's ViT (a preset, or a folder holding a SAM3 detector): its FPN neck, prompt
    encoder and mask decoder, a multiple of 32 (one attention head per 32). ``None``: the detector's FPN width
    (256 for SAM3), and the detector's whole vision encoder, FPN neck included, carries over;
    another width builds a new neck on the detector's ViT. SAM3's video tracker needs a
    multiple of 64 above 64 (the bundled tracker is 128 wide). A source that is already a
    tracker keeps its own width."""

    quantize: Literal["none", "nf4", "fp4", "int8"] = "none"
    """Store the frozen base's Linear layers (92% of SAM3's weights) quantized, through
    bitsandbytes (``pip install 'sam3-lora[quantize]'``), as the model loads, with LoRA
    trained on top (QLoRA): ``nf4`` or ``fp4`` (4-bit, 3.1 -> 0.6 GiB for SAM3), ``int8``
    (1.0 GiB); ``none`` keeps ``model.dtype``. They compute in ``model.dtype``; the adapter
    stays float32 and also loads onto an unquantized base (and the reverse; BENCHMARKS.md,
    "Small GPUs": about 0.01 mAP on the bundled base). Applies wherever the model runs; a merged
    export dequantizes first. Not with ``training.method=full``."""


# The adapter methods ``lora.method`` chooses among, each PEFT's (0.21) of the same name but
# ``adapter``: bottleneck adapters, a custom layer PEFT's LoRA carries (lora/bottleneck.py).
Method = Literal["lora", "loha", "lokr", "adalora", "vera", "ia3", "adapter"]
METHODS: tuple[str, ...] = typing.get_args(Method)
METHOD_PEFT_TYPES = {method: "LORA" if method == "adapter" else method.upper() for method in METHODS}
"""PEFT's ``peft_type`` of each method: a bottleneck adapter saves, loads and switches as LoRA."""
MERGE_REFUSALS = {"adapter": "a bottleneck adapter is not linear (a GELU between two Linear layers), so no "
                             "weight of the base can hold it"}
"""Why a method cannot merge into the base (``export --merged``, ONNX); the others merge."""
# The ``lora`` keys each method reads; the others keep their defaults under it (``check_together``).
# The component switches and ``target_modules`` apply to every method.
METHOD_KEYS = {
    "lora": ("rank", "alpha", "dropout", "use_rslora", "use_dora"),
    "loha": ("rank", "alpha"),
    "lokr": ("rank", "alpha"),
    "adalora": ("rank", "alpha", "dropout", "adalora_init_rank"),
    "vera": ("rank", "dropout"),
    "ia3": (),
    "adapter": ("rank", "alpha"),
}


class LoRAConfig(Section):
    """Where LoRA goes and how big it is. Also the seed API's ``LoRAConfig(...)``."""

    method: Method = "lora"
    """The adapter method (PEFT's): ``lora`` (W + B A, scaled by alpha / rank); ``loha`` (the
    update is the Hadamard product of two rank-``rank`` products); ``lokr`` (a Kronecker
    product with a rank-``rank`` factor); ``adalora`` (LoRA in SVD form whose rank per layer is
    re-allocated during training, from ``adalora_init_rank`` down to ``rank`` on average:
    the final ranks are printed, logged and saved with the adapter; PEFT's orthogonality
    penalty is not added, as SAM3's loss is computed outside the model); ``vera`` (one pair of
    frozen random projections of rank ``rank`` shared by every layer, with two trained scaling
    vectors per layer: the fewest parameters of the low-rank methods); ``ia3`` (one trained
    scale per feature of each layer's output, of the input of ``fc2``-type layers: no rank);
    ``adapter`` (SAM-Adapter's bottleneck on each selected Linear layer's output ``y``:
    ``y + alpha / rank * up(gelu(down(y)))``, ``down`` to ``rank`` features and ``up`` back,
    ``up`` starting at zero; on ``fc2`` and ``out_proj`` it follows each block's MLP and
    attention; Linear layers only). Each reads only some keys of this section (``rank``,
    ``alpha``, ``dropout``, ...: each key says which); a key another method reads, set with one
    that does not, is refused. Every method but ``adapter`` (not linear) merges into the base
    (``export --merged``)."""
    rank: int = Field(default=8, gt=0, le=MAX_RANK)
    """LoRA rank r: the inner dimension of each low-rank update, 1 to 1024 (SAM3's widest
    layer side: a higher rank adds nothing). Trainable parameters grow linearly with it.
    Methods: lora, loha, lokr (their factors' rank), adalora (the average rank it ends with),
    vera (the shared projections' rank: grows only those frozen buffers), adapter (the
    bottleneck's width)."""

    alpha: float = Field(default=16.0, gt=0)
    """LoRA scaling numerator: updates are scaled by alpha / rank (alpha / sqrt(rank) with
    ``use_rslora``). Twice the rank is the usual choice. Methods: lora, loha, lokr, adalora,
    adapter (its bottleneck's output is scaled by alpha / rank)."""

    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch input during training; 0 disables it. Methods: lora,
    adalora, vera."""

    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    """Layer names to adapt inside the chosen components: ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj`` (also matches SAM3's ``o_proj``), ``fc1``, ``fc2``, or ``all`` (every Linear
    of the chosen components). Names from Meta's original code map to their equivalents:
    ``qkv`` -> q/k/v_proj, ``proj`` -> out_proj, ``linear1`` -> fc1, ``linear2`` -> fc2."""

    apply_to_vision_encoder: bool = True
    """Adapt the ViT image backbone (446M parameters, the usual place for domain shift)."""

    apply_to_text_encoder: bool = False
    """Adapt the CLIP text encoder. Off by default: adapting it erodes how well the model
    tells prompts apart, including prompts it should refuse."""

    apply_to_geometry_encoder: bool = False
    """Adapt the box-prompt (geometry) encoder."""

    apply_to_detr_encoder: bool = False
    """Adapt the DETR encoder that fuses image and prompt features."""

    apply_to_detr_decoder: bool = False
    """Adapt the DETR decoder (object queries, boxes, presence token)."""

    apply_to_prompt_encoder: bool = False
    """Adapt the tracker's prompt encoder (``model.task: interactive``). It has no Linear
    layer (point embeddings and a three-convolution mask embedder): only ``all`` reaches
    it, adapting those convolutions. The detector has no such component."""

    apply_to_mask_decoder: bool = False
    """Adapt the mask decoder. Detector: its prompt cross-attention (its only Linear layers
    besides the small mask MLP reached through ``all``). Tracker: its two-way transformer's
    attention (``q/k/v/o_proj``) and every MLP's first and last layer (``fc1``/``fc2`` select
    ``proj_in``/``proj_out``: the transformer's, the mask hypernetworks', the IoU and
    object-score heads'); ``all`` adds those heads' middle layers."""

    apply_to_memory_attention: bool = False
    """Adapt the video tracker's memory attention (``model.task: video``): the layers that let
    the current frame attend to the memories of earlier frames (self- and cross-attention
    ``q/k/v/o_proj``; ``fc1``/``fc2`` select its MLP's ``linear1``/``linear2``)."""

    apply_to_memory_encoder: bool = False
    """Adapt the video tracker's memory encoder (``model.task: video``), which turns a frame
    and its predicted mask into a memory: its only Linear layers are the fuser's MLP
    (``fc1``/``fc2`` select ``pointwise_conv1``/``pointwise_conv2``; ``all`` the same)."""

    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(rank), which keeps high ranks trainable.
    Method: lora."""

    use_dora: bool = False
    """DoRA: learn a magnitude per output feature besides the low-rank direction (slower).
    Method: lora."""

    task_adapters: Literal["shared", "per_task", "both"] = "shared"
    """With several datasets (``data.datasets``), which adapters train: ``shared``, one over
    the mixture; ``per_task``, one per dataset, named after it, on the one frozen base, each
    batch trained (and each dataset validated) through its dataset's adapter only; ``both``,
    the shared one plus one per dataset, each batch through the shared one and its dataset's
    together (PEFT adds active adapters' outputs). ``best/`` and ``last/`` hold the shared
    adapter in the folder itself and each dataset's in a subfolder of its name; ``validate``,
    ``predict`` and the app take a dataset by name (``--task NAME``) and load its adapters:
    the shared one and its own, where they exist. Other than ``shared``: needs
    ``data.datasets`` and ``method: lora``."""

    adalora_init_rank: int | None = Field(default=None, gt=0, le=MAX_RANK)
    """AdaLoRA's rank per layer at the start, before its allocation moves rank to the layers
    that matter (each layer ends between 0 and this; on average at ``rank``). None: 1.5 x
    ``rank``, rounded up. Its schedule follows the run's steps: ranks stay for the first 10%,
    are re-allocated every step until the last 20%, then fixed. Method: adalora."""

    @field_validator("target_modules")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one layer, e.g. [q_proj, v_proj] or [all]")
        return value

    def components(self) -> list[str]:
        """The components switched on, in pipeline order."""
        return [name for name in COMPONENTS if getattr(self, f"apply_to_{name}")]

    def foreign_key(self) -> str | None:
        """The first key set away from its default that ``method`` does not read, or None."""
        read = METHOD_KEYS[self.method]
        for name in dict.fromkeys(key for keys in METHOD_KEYS.values() for key in keys):
            if name not in read and getattr(self, name) != type(self).model_fields[name].get_default(
                    call_default_factory=True):
                return name
        return None


class DatasetEntry(Section):
    """One dataset of a run that trains on several (``data.datasets``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    """The dataset's name, unique in the run: its validation losses are logged as
    ``val_loss/NAME``, and with ``lora.task_adapters`` its adapter is named so (a subfolder
    of ``best/``). Letters, digits, ``_`` and ``-``, at most 64; not ``default`` (PEFT's name
    of the shared adapter)."""

    root: str
    """Its folder of splits (``train/``, optional ``valid/``), as ``data.root`` is for one."""

    weight: float = Field(default=1.0, gt=0)
    """Its share of the training batches: each batch comes from one dataset, drawn with
    probability weight / (sum of the weights); also its weight in the overall ``val_loss``."""

    prompts: dict[str, str] = Field(default_factory=dict)
    """Prompt text per category name of this dataset, over ``data.prompts``."""


DEFAULT_DATA_ROOT = "data"
MASK_PROMPT_DEFAULTS = {"interactive": 0.0, "video": 0.5}
"""``data.mask_prompt_probability`` when not set, by ``model.task``: SAM 2 trains single
images with no mask prompts and videos with half (its ``prob_to_use_pt_input_for_train``)."""
SHARED_ADAPTER = "default"
"""PEFT's name of a run's shared adapter (the only one unless ``lora.task_adapters`` says)."""


class DataConfig(Section):
    """The dataset and how it becomes (image, prompt) queries."""

    root: str = DEFAULT_DATA_ROOT
    """Folder holding the splits ``train/``, ``valid/``, ``test/``, each with its images and
    an annotation file (``annotation_file``). ``valid/`` and ``test/`` are optional. Not with
    ``datasets`` (each names its own root)."""

    datasets: list[DatasetEntry] = Field(default_factory=list)
    """Several datasets in one run (multi-task), instead of ``root``: a list of ``{name, root,
    weight, prompts}`` (``name`` unique; ``weight`` > 0, default 1: the dataset's chance of
    giving each training batch, in proportion to the others'; ``prompts`` over this section's).
    Every training batch comes from one dataset, drawn by weight in an order fixed by
    ``training.seed`` (each dataset read in its own shuffled passes); an epoch is as many
    batches as one pass over every dataset. Each evaluation logs ``val_loss/NAME`` on every
    dataset's ``valid/`` and, as ``val_loss`` (what ``best/`` keeps the best of), their mean
    weighted by ``weight``, over the datasets that have one (likewise ``mAP``, ``cgF1``).
    The other keys of this section apply to every dataset. Not with
    ``training.gradient_accumulation_steps`` above 1 yet. ``[]``: the one dataset of ``root``."""

    annotation_file: str = "_annotations.coco.json"
    """Name of the COCO annotation file inside each split folder (Roboflow's name)."""

    prompt_mode: Literal["category", "generic"] = "category"
    """``category``: each category is prompted by its own text (its name, or ``prompts``).
    ``generic``: every category is prompted by ``generic_prompt``, class-agnostic."""

    prompts: dict[str, str] = Field(default_factory=dict)
    """Prompt text per category name, e.g. ``{CRACKS: "concrete crack"}``. Categories not
    listed are prompted by their name."""

    generic_prompt: str = "object"
    """The one prompt used for every category when ``prompt_mode`` is ``generic``."""

    num_negatives: int = Field(default=2, ge=0)
    """Negative queries per training image: prompts of concepts absent from the image, whose
    target is empty. They teach the model to refuse; 0 disables them (not advised)."""

    negative_phrases: list[str] = Field(default_factory=list)
    """Extra phrases, outside the dataset's categories, drawn as negatives besides absent
    categories (e.g. ``[dog, car, person]``)."""

    max_objects_per_query: int = Field(default=100, gt=0)
    """Cap on instances in one query's target; crowded images keep the largest objects."""

    random_resize: bool = True
    """Training resize as in SAM3: a random square scale from ``min_resize_ratio`` x size up
    to the model's size (aspect kept), then padding to the model's size."""

    min_resize_ratio: float = Field(default=480 / 1008, gt=0.0, le=1.0)
    """Smallest training scale as a fraction of the model's size (SAM3: 480 of 1008)."""

    horizontal_flip: float = Field(default=0.5, ge=0.0, le=1.0)
    """Probability of a horizontal flip of a training image (boxes and masks follow)."""

    color_jitter: float = Field(default=0.0, ge=0.0, le=1.0)
    """Strength of random brightness/contrast/saturation changes in training; 0 disables."""

    skip_invalid: bool = False
    """Train anyway when validation finds errors, skipping (and listing) every bad item."""

    mask_prompt_probability: float | None = Field(default=None, ge=0.0, le=1.0)
    """``model.task: interactive`` and ``video``: the chance that an object's first prompt is
    its own ground-truth mask; otherwise a noisy box or one click inside it, half each (SAM 2).
    ``None``: SAM 2's, by task (``MASK_PROMPT_DEFAULTS``): 0 for single images, 0.5 for clips
    (``validate`` on video prompts with the first frame's masks, DAVIS's protocol)."""

    def mask_prompt_chance(self, task: Literal["interactive", "video"]) -> float:
        """``mask_prompt_probability``, or its default for ``task`` when not set."""
        given = self.mask_prompt_probability
        return MASK_PROMPT_DEFAULTS[task] if given is None else given

    center_click_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    """``model.task: interactive`` and ``video``: the chance that a first click is placed at
    the object's centre (its interior point farthest from the boundary, where ``validate``
    clicks first, as RITM and SAM evaluate) rather than uniformly inside its mask (SAM 2: 0).
    Above 0 the tracker also learns the prompt it is scored on, and its IoU head learns which
    of its three masks fits a central click."""

    clip_frames: int = Field(default=8, gt=0)
    """Video tracker training: consecutive annotated frames per training clip (SAM 2's
    ``num_frames``, 8 in its MOSE fine-tuning). A sequence with fewer annotated frames is left
    out of training, with a warning, as SAM 2's sampler refuses it (it never pads)."""

    max_objects_per_clip: int = Field(default=3, gt=0)
    """Video tracker training: most objects tracked in one clip, drawn at random among those
    visible on the clip's first frame (SAM 2's ``max_num_objects``, 3 in its MOSE
    fine-tuning)."""

    reverse_time_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    """Video tracker training: the chance that a clip is played backwards (its last frame
    first, where its objects are prompted). SAM 2's ``reverse_time_prob``: 0 unless set, as in
    its MOSE fine-tuning."""

    num_workers: int = Field(default=0, ge=0, le=256)
    """Data-loading worker processes, at most 256; 0 loads in the training process."""

    cache_features: Literal["off", "ram", "disk"] = "off"
    """Compute each training and validation image's vision-encoder features once and reuse
    them (the ViT is most of SAM3's compute): ``ram`` in CPU memory, ``disk`` in
    ``cache_features_dir``, where later runs on the same base reuse them. Only when nothing
    in the vision encoder trains (``lora.apply_to_vision_encoder: false``, as in the heads
    and demo presets, or ``training.method: full`` with the vision encoder's component
    learning rate at 0; refused otherwise), for either ``model.task``. Keyed by the transformed image, so with random
    augmentation each draw is its own entry, reused only when it comes again (about 17
    scales with ``random_resize``, x2 with ``horizontal_flip``; refused with
    ``color_jitter``): for reuse from the second epoch, give up those augmentations. About
    56 MB per image at 1008 px in bfloat16."""

    cache_features_bytes: int = Field(default=16 * 2**30, gt=0)
    """Budget of the feature cache in bytes (RAM or disk); once full, further images are
    encoded each time and the cached ones kept. Default 16 GiB."""

    cache_features_dir: str | None = None
    """Folder of the ``disk`` feature cache (a subfolder per base and precision);
    ``None``: ``feature-cache/`` in ``output.dir``."""


class TrainingConfig(Section):
    """How ``sam3-lora train`` optimises: steps, optimiser, schedule, precision, checkpoints."""

    method: Literal["lora", "full"] = "lora"
    """``lora``: train only LoRA weights where the ``lora`` section puts them; ``best/`` and
    ``last/`` hold adapters of a few MB. ``full``: train every weight of SAM3 and ignore the
    ``lora`` section; ``best/`` and ``last/`` hold whole models (``save_pretrained`` folders,
    usable as ``model.source``). ``full`` is how the bundled tiny base was made (configs/base.yaml);
    on the full-size model it needs several times the memory of LoRA."""

    batch_size: int = Field(default=1, gt=0)
    """Images per step and process. Each image carries all its queries (positives and
    negatives), which share one image encoding."""

    num_epochs: int = Field(default=10, gt=0)
    """Passes over the training split; ``max_steps`` wins when set."""

    max_steps: int | None = Field(default=None, gt=0)
    """Stop after this many optimiser steps, whatever ``num_epochs`` says."""

    learning_rate: float = Field(default=1e-4, ge=0.0)
    """Peak AdamW learning rate of the trained parameters (LoRA, or all with ``method=full``)."""

    weight_decay: float = Field(default=0.1, ge=0.0)
    """AdamW weight decay, not applied to biases and norms (SAM3 uses 0.1)."""

    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Seed for weights of random-init models, data order, augmentation and dropout: 0 to
    2^32 - 1 (the range NumPy's generator takes)."""

    gradient_accumulation_steps: int = Field(default=1, gt=0)
    """Batches whose gradients add up before one optimiser step: the effective batch is
    batch_size x this x the number of processes, at the memory cost of batch_size."""

    max_grad_norm: float = Field(default=0.1, ge=0.0)
    """Clip the gradient norm of the trained parameters to this (SAM3 uses 0.1); 0 disables."""

    lr_scheduler: Literal["constant", "linear", "cosine", "inverse_sqrt"] = "cosine"
    """Learning-rate schedule after warmup: flat, linear or cosine decay to 0 at the last
    step, or 1/sqrt(step) decay (SAM3's own schedule)."""

    warmup_steps: int = Field(default=0, ge=0)
    """Optimiser steps of linear warmup from 0 to the peak learning rate."""

    component_learning_rates: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    """Learning rate (at least 0) per SAM3 component, overriding ``learning_rate`` for the
    parameters trained inside it, e.g. ``{mask_decoder: 3.0e-4}``. Keys: the components of ``lora``'s ``apply_to_*``,
    and with ``method=full`` also the heads ``text_projection`` and ``dot_product_scoring``
    (detector) and ``iou_prediction_head`` and ``pred_obj_score_head`` (tracker; a head's rate
    overrides its mask decoder's). With ``method=full`` a rate of 0 freezes the component
    outright (no gradient is computed for it): ``{vision_encoder: 0}`` trains the heads alone,
    and lets ``data.cache_features`` skip the vision encoder; ``{vision_encoder: 0,
    prompt_encoder: 0, mask_decoder: 0, iou_prediction_head: 1.0e-3}`` with ``learning_rate:
    0`` trains the tracker's IoU prediction alone."""

    correction_rounds: int = Field(default=7, ge=0, le=64)
    """``model.task: interactive``: prediction rounds after the first, each adding one
    correction click drawn from the previous round's errors (SAM 2.1: 7). Every round is
    supervised; more rounds cost a prompt-encoder and mask-decoder pass each (the image is
    encoded once). A mask prompt gets no correction clicks (as in SAM 2). ``model.task:
    video``: the rounds of each corrected frame (``frames_to_correct``)."""

    frames_to_correct: int = Field(default=2, ge=1)
    """``model.task: video``: the most frames of a clip that get correction clicks after a
    click or box prompt; each clip's count is drawn from 1 to this, its first frame always
    among them and the rest at random (SAM 2's ``num_frames_to_correct_for_train: 2`` with
    ``rand_frames_to_correct_for_train`` in its MOSE fine-tuning). A corrected frame becomes a
    conditioning frame of the memory, as a user's click does."""

    correction_from_mask_probability: float = Field(default=0.1, ge=0.0, le=1.0)
    """``model.task: interactive`` and ``video``: the chance that a correction round ignores
    the prediction and clicks uniformly inside the ground-truth mask instead of in its errors
    (SAM 2's ``prob_to_sample_from_gt_for_train``, 0.1)."""

    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """Autocast precision of forward and backward: ``bf16`` (Ampere GPUs and newer, and
    CPUs), ``fp16`` (CUDA only; with loss scaling) or ``no`` (float32; TF32 matmuls on CUDA).
    ``auto``: the dtype of a half-precision ``model.dtype``, else bf16 on CUDA GPUs with bf16,
    fp16 on older ones, no on CPU. The resolved choice is printed when training starts and is
    the first record of ``metrics.jsonl`` (``precision``)."""

    activation_checkpointing: int = Field(default=0, ge=0)
    """Recompute layers in the backward pass instead of storing their activations: 0 off, 1
    every layer, n every n-th layer of each stack. The stacks are the ViT's blocks and the DETR
    encoder's and decoder's layers (these run per text query over every image token), each only
    where backward passes through it: where it or a module feeding it trains (with the ``heads``
    preset the frozen ViT runs without gradients and only the DETR layers are recomputed; with
    ViT LoRA, all three stacks). The DETR decoder's two box position MLPs are recomputed where
    LoRA sits in them (``target_modules: [all]``). The trainer prints how many layers. Saves
    most activation memory at ~30% more step time."""

    eval_every_steps: int | None = Field(default=None, gt=0)
    """Evaluate (validation loss; ``best/`` keeps the lowest) every this many optimiser
    steps; ``None``: at the ends of epochs, spaced by ``max_evaluations``."""

    max_evaluations: int | None = Field(default=10, gt=0)
    """With ``eval_every_steps: null``, evaluate at an epoch's end only once 1/this of the
    run's steps have passed since the last evaluation: about this many evaluations per run
    (and one after the last step), however short the epochs. A dataset of a few images
    otherwise ran an evaluation after each of its hundreds of tiny epochs. Epochs longer
    than that spacing are each evaluated, as before. ``None``: after every epoch."""

    save_every_steps: int | None = Field(default=None, gt=0)
    """Write a resumable checkpoint every this many optimiser steps, besides each evaluation
    and the end of training. ``None``: only at evaluations and the end."""

    save_total_limit: int | None = Field(default=2, gt=0)
    """Resumable step checkpoints kept in ``checkpoints/`` (oldest deleted first); ``None``
    keeps all. ``best/`` and ``last/`` are never deleted."""

    best_metric: Literal["val_loss", "mAP", "cgF1"] = "val_loss"
    """What ``best/`` keeps the best of: the validation loss (lower is better), or COCO mAP or
    SAM3's cgF1 on the validation split (higher is better; each evaluation then also runs the
    predictions and metrics of ``sam3-lora validate``, which costs more time)."""

    early_stopping_patience: int | None = Field(default=None, gt=0)
    """Stop after this many evaluations without a better ``best_metric``; ``None`` never."""

    log_every_steps: int = Field(default=10, gt=0)
    """Write training metrics (loss terms, learning rate, samples/s) every this many steps."""

    max_nonfinite_steps: int = Field(default=5, gt=0)
    """Consecutive steps with a NaN or infinite loss or model output (each skipped) before
    training stops."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers (through Accelerate); each must be installed."""

    @field_validator("component_learning_rates")
    @classmethod
    def _known_components(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(COMPONENTS) - set(HEADS))
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}; valid: {', '.join(COMPONENTS + HEADS)}")
        return value


class LossConfig(Section):
    """The training loss: SAM3's recipe (sam3/train). Each ``*_weight`` multiplies one term;
    0 removes the term (and skips computing it). Box and GIoU terms are normalised by the
    number of target boxes, averaged over processes when training is distributed."""

    class_weight: float = Field(default=20.0, ge=0.0)
    """IoU-aware classification of the object queries: BCE towards ``p^0.25 * IoU^0.75``
    (at least 0.01) for matched queries, towards 0 for the others. Zero for prompts with no
    target, as in SAM3: those train the presence score instead."""

    presence_weight: float = Field(default=20.0, ge=0.0)
    """Presence score (is the concept in the image at all?): sigmoid focal loss on the
    presence logit, target 1 when the prompt has any target. This is what teaches the model
    to refuse prompts of absent concepts."""

    bbox_weight: float = Field(default=5.0, ge=0.0)
    """L1 distance between matched predicted and target boxes (cx, cy, w, h in [0, 1])."""

    giou_weight: float = Field(default=2.0, ge=0.0)
    """1 - generalised IoU between matched predicted and target boxes."""

    mask_weight: float = Field(default=200.0, ge=0.0)
    """Sigmoid focal loss (``focal_alpha``, ``focal_gamma``) of matched masks, averaged over
    pixels at the model's mask resolution. Box-only objects get no mask loss."""

    dice_weight: float = Field(default=10.0, ge=0.0)
    """Dice loss of matched masks (box-only objects excluded)."""

    aux_layers: bool = True
    """Also apply the classification, presence and box losses to every intermediate DETR
    decoder layer (each matched on its own), as SAM3 and DETR do. Masks: last layer only."""

    one_to_many: bool = False
    """Add SAM3's one-to-many term: up to 4 queries per target (quality ``0.3 p + 0.7 IoU``
    above 0.4) get the classification, box and mask losses, on the last decoder layer. SAM3
    applies it to a separate set of training-only queries that transformers' model lacks;
    here it acts on the same queries as the one-to-one loss, which it partly contradicts.
    Off by default."""

    one_to_many_weight: float = Field(default=2.0, ge=0.0)
    """Factor on every one-to-many term (on top of its own weight); used when
    ``one_to_many`` is true."""

    cost_class: float = Field(default=2.0, ge=0.0)
    """Matching cost weight of the focal classification cost (Hungarian matcher)."""

    cost_bbox: float = Field(default=5.0, ge=0.0)
    """Matching cost weight of the L1 box distance."""

    cost_giou: float = Field(default=2.0, ge=0.0)
    """Matching cost weight of the (negative) generalised IoU."""

    cost_mask: float = Field(default=0.0, ge=0.0)
    """Matching cost weight of the masks' per-pixel binary cross-entropy (Mask2Former's
    matching; SAM3 matches on class and box only: 0). Trained from scratch, a small SAM3
    learns masks long before boxes, and matching on them keeps each query on one object
    (``configs/base.yaml``). The cost is Q x N x T masks of M x M pixels: for small models."""

    cost_dice: float = Field(default=0.0, ge=0.0)
    """Matching cost weight of the masks' dice loss; see ``cost_mask``."""

    focal_alpha: float = Field(default=0.25, ge=0.0, le=1.0)
    """Focal-loss alpha (weight of positives) of the mask loss and of the matcher's
    classification cost."""

    focal_gamma: float = Field(default=2.0, ge=0.0)
    """Focal-loss gamma (down-weighting of easy pixels/queries) of the mask loss and of the
    matcher's classification cost."""

    class_gamma: float = Field(default=2.0, ge=0.0)
    """Unmatched queries' classification loss is weighted by ``p^class_gamma``, so confident
    false positives count most and the many easy background queries hardly at all."""

    pos_weight: float = Field(default=10.0, ge=0.0)
    """Weight of matched (positive) queries in the classification loss, against the many
    unmatched ones."""

    presence_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    """Focal alpha of the presence loss (0.5: positives and negatives weigh the same)."""

    presence_gamma: float = Field(default=0.0, ge=0.0)
    """Focal gamma of the presence loss (0: plain BCE)."""

    scale_by_num_prompts: bool = True
    """Multiply the total loss by the square root of the number of (image, prompt) rows in
    the batch (this process's micro-batch, positives and negatives), as SAM3 does
    (``scale_by_find_batch_size``, on in Meta's training configs). Each term is normalised
    per row or per box, so this gives batches with more prompts a larger total; the logged
    terms stay unscaled, only ``loss`` (and the validation loss) carry the factor. With
    AdamW it mainly changes how hard ``training.max_grad_norm`` clips."""

    pad_num_queries: int | None = Field(default=200, gt=0)
    """Divide the classification loss by ``max(N, pad_num_queries)`` x rows instead of the
    real N object queries x rows, as SAM3 does (``pad_n_queries=200``): a model with fewer
    queries gets the classification scale of a 200-query one (20 queries: a tenth of the
    plain mean). No effect on models with at least this many queries (SAM3 has 200);
    ``None`` averages over the real queries. Kept for small models too: training the bundled
    20-query base, ``None`` learnt more slowly (validation mAP at step 1,000: 0.072 vs 0.118;
    0.049 vs 0.131 with ``cost_mask``; BENCHMARKS.md, "The bundled base")."""

    @field_validator("cost_giou")
    @classmethod
    def _some_cost(cls, value: float, info) -> float:
        if value == 0 and info.data.get("cost_class") == 0 and info.data.get("cost_bbox") == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou cannot all be 0")
        return value


class EvaluationConfig(Section):
    """What ``sam3-lora validate`` does: every category is prompted on every image (absent
    ones are the negative prompts cgF1 needs), then COCO mAP and SAM3's cgF1 are computed."""

    split: Literal["valid", "test"] = "valid"
    """Split that ``validate`` scores unless ``--split`` says otherwise."""

    min_score: float = Field(default=0.05, ge=0.0, le=1.0)
    """Detections scoring below this are neither saved nor scored. mAP ranks everything kept,
    so keep it low; score = query probability x presence probability."""

    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Detections at or above this count for cgF1 and the forgetting check (SAM3: 0.5)."""

    mask_nms_iou: float | None = Field(default=None, gt=0.0, le=1.0)
    """Suppress a detection whose mask overlaps a better one by more than this IoU; ``None``
    (SAM3's default) keeps all."""

    retain_prompts: list[str] = Field(default_factory=lambda: [
        "person", "car", "dog", "tree", "building", "bottle", "chair", "sky"])
    """Phrases outside your domain for the forgetting check: how far the adapted model's
    answers to them moved from the base model's (no labels needed). [] skips the check."""

    retain_images: int = Field(default=20, ge=0)
    """Images of the split the forgetting check prompts (the first ones, for speed)."""

    report_examples: int = Field(default=3, ge=0)
    """Examples per kind (best, worst, random units) in the report's image grid."""


# The score a detection needs to count for cgF1, and to be shown by ``predict``, the app and
# the inference API, unless told otherwise: the schema's default, so there is one 0.5.
DEFAULT_SCORE_THRESHOLD: float = EvaluationConfig.model_fields["score_threshold"].default


class OutputConfig(Section):
    """Where a run writes."""

    dir: str = "runs/sam3-lora"
    """The run folder: effective config, adapters (``best/``, ``last/``), metrics, logs."""


class Config(Section):
    """A whole sam3-lora config."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the effective config (every field, defaults included)."""
        Path(path).write_text(self.to_yaml())


# The original tool's command-line flags and the keys they set.
LEGACY_FLAGS = {
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "num_epochs": "training.num_epochs",
    "lora_rank": "lora.rank",
}


def preset_names() -> list[str]:
    """The bundled presets (``configs/*.yaml``), in the order the README presents them:
    the three LoRA sizes first, then the rest by name."""
    first = ["minimal", "balanced", "full"]
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    return [n for n in first if n in names] + [n for n in names if n not in first]


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config path, or the name of a bundled preset (``minimal``, ``demo``, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and preset.is_file():
        return preset
    raise ConfigError(f"{name_or_path}: no such config file; give a YAML path or a preset "
                      f"({', '.join(preset_names())})")


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Read a YAML config (or start from defaults), apply ``section.key=value`` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        file = resolve_config_path(path)
        where = str(file)
        raw = _read_yaml(file) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: top level must be a mapping of sections (model, lora, ...)")
    overridden = [_apply_override(raw, item) for item in overrides or []]
    return validate_config(raw, where, overridden)


def _read_yaml(file: Path) -> Any:
    """The YAML document in ``file``; every way it can be unreadable is a one-line ConfigError."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror or type(exc).__name__}); "
                          f"check the path and its permissions") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: {len(data):,} bytes is not a config (at most {MAX_CONFIG_BYTES:,}); "
                          f"give the YAML config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          f"save it as UTF-8") from None
    try:
        return _safe_load(text, str(file))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{file}:{line} is not valid YAML; fix the syntax there") from None


def _safe_load(text: str, where: str) -> Any:
    """``yaml.safe_load``, refusing values nested deeper than any config (``where`` names the
    source in the message). YAML syntax errors are left to the caller."""
    too_deep = ConfigError(f"{where}: nested too deeply to be a config (at most {MAX_NESTING} levels)")
    try:
        value = yaml.load(text, Loader=ConfigLoader)   # a SafeLoader: builds plain values only
    except RecursionError:   # the parser recurses once per level
        raise too_deep from None
    if _depth(value) > MAX_NESTING:
        raise too_deep
    return value


def _depth(value: Any) -> int:
    """How deep lists and mappings nest in ``value``, counted up to ``MAX_NESTING + 1``. Level
    by level over distinct containers, so that YAML aliases repeating one list many times
    (or a list holding itself) cost nothing."""
    level, depth = [value], 0
    while depth <= MAX_NESTING:
        containers = {id(node): node for node in level if isinstance(node, (list, dict))}
        if not containers:
            break
        depth += 1
        level = [child for node in containers.values() for child in (node.values() if isinstance(node, dict) else node)]
    return depth


def validate_config(raw: dict[str, Any], where: str = "config",
                    overridden: list[tuple[str, ...]] | None = None) -> Config:
    """Build a ``Config`` from a plain dict; errors name the key and suggest a fix.

    ``overridden``: the keys (as tuples of names) the command line set, so that their errors
    say they came from there rather than from ``where``."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where, overridden or [])) from None
    check_together(config, where)
    return config


def check_together(config: Config, where: str = "config") -> None:
    """Keys that are each valid but cannot go together."""
    check_method_keys(config.lora, where)
    check_datasets(config.data, config.training.gradient_accumulation_steps, where)
    check_task_adapters(config, where)
    if config.model.quantize != "none" and config.training.method == "full":
        raise ConfigError(f"{where}: model.quantize={config.model.quantize} cannot be trained with "
                          f"training.method=full (quantized weights take no gradients); set "
                          f"model.quantize=none, or training.method=lora to train LoRA on the quantized base")
    if config.model.tracker_width is not None and config.model.task == "concept":
        raise ConfigError(f"{where}: model.tracker_width={config.model.tracker_width} sets the tracker's width, and "
                          f"model.task=concept trains no tracker; drop model.tracker_width, or set "
                          f"model.task=interactive")
    if config.model.task != "concept" and config.model.quantize != "none":   # the trackers' loading has none yet
        raise ConfigError(f"{where}: model.quantize={config.model.quantize} is not available with "
                          f"model.task={config.model.task} yet; set model.quantize=none")
    if config.model.task == "video" and config.data.cache_features != "off":   # a clip's frames are encoded together
        raise ConfigError(f"{where}: data.cache_features={config.data.cache_features} is not available with "
                          f"model.task=video yet; set data.cache_features=off")


def check_datasets(data: DataConfig, accumulation: int = 1, where: str = "config") -> None:
    """Refuse ``data.datasets`` beside a ``data.root`` of its own (which one would train?),
    with gradient accumulation (``accumulation`` steps), and two datasets of one name (their
    logs and adapters would mix)."""
    if not data.datasets:
        return
    if data.root != DEFAULT_DATA_ROOT:
        raise ConfigError(f"{where}: data.root={_shown(data.root)[1:-1]} and data.datasets cannot go together (each "
                          f"dataset names its root); remove data.root (over a preset that sets it: data.root={DEFAULT_DATA_ROOT}, "
                          f"its default), or data.datasets to train on that one folder")
    if accumulation > 1:   # a dataset's pass ending mid-epoch would close Accelerate's accumulation early
        raise ConfigError(f"{where}: training.gradient_accumulation_steps={accumulation} is not available with "
                          f"data.datasets yet; set it to 1 and raise training.batch_size instead")
    names = [entry.name for entry in data.datasets]
    if SHARED_ADAPTER in names:
        raise ConfigError(f"{where}: data.datasets names a dataset {SHARED_ADAPTER}, PEFT's name of the shared "
                          f"adapter; rename it")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{where}: data.datasets names {repeated[0]} more than once; give each dataset its own name")


def check_task_adapters(config: Config, where: str = "config") -> None:
    """Adapters per dataset need datasets, and LoRA (the method whose adapters PEFT trains
    and activates together by name; others are not tested yet)."""
    choice = config.lora.task_adapters
    if choice == "shared":
        return
    if not config.data.datasets:
        raise ConfigError(f"{where}: lora.task_adapters={choice} trains an adapter per dataset of data.datasets, "
                          f"and there is none; list the datasets in data.datasets, or set lora.task_adapters=shared")
    if config.lora.method != "lora" or config.training.method == "full":
        what = f"lora.method={config.lora.method}" if config.lora.method != "lora" else "training.method=full"
        raise ConfigError(f"{where}: lora.task_adapters={choice} is not available with {what} yet; "
                          f"set lora.task_adapters=shared")


def check_method_keys(lora: LoRAConfig, where: str = "config") -> None:
    """Refuse a ``lora`` key that ``lora.method`` does not read (e.g. ``use_dora`` with loha):
    it would silently do nothing; and an AdaLoRA that starts below where it ends."""
    init_rank = lora.adalora_init_rank
    if lora.method == "adalora" and init_rank is not None and init_rank <= lora.rank:
        raise ConfigError(f"{where}: lora.adalora_init_rank={init_rank} is not above lora.rank={lora.rank}: AdaLoRA "
                          f"starts at the first and removes rank down to the second; raise lora.adalora_init_rank "
                          f"or lower lora.rank")
    key = lora.foreign_key()
    if key is not None:
        readers = [method for method, keys in METHOD_KEYS.items() if key in keys]
        raise ConfigError(f"{where}: lora.{key}={getattr(lora, key)} does not apply to lora.method={lora.method} "
                          f"(only to {', '.join(readers)}); remove lora.{key}, or choose one of those methods")


def _apply_override(raw: dict[str, Any], item: str) -> tuple[str, ...]:
    """Set ``section.key=value`` in ``raw``; returns the key as a tuple of names."""
    key, sep, value = item.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"override {_shown(item)}: write it as section.key=value, e.g. lora.rank=16")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {_shown(item)}: {_shown(part)} is not a section")
        node = child
    try:
        node[leaf] = _safe_load(value, f"override {_shown(item)}") if value.strip() else None
    except yaml.YAMLError:   # not YAML: the text itself
        node[leaf] = value
    return (*parents, leaf)


# Echoed inputs are cut short: a message is one line, whatever the input (a YAML "billion
# laughs" document expands to hundreds of MB when printed in full).
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 1, 60, 40, 60
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = 4
MAX_PROBLEMS_SHOWN = 3


def _shown(value: Any) -> str:
    """A short, one-line repr of a value from the user."""
    return _REPR.repr(value).replace("\n", "\\n")


def _describe(exc: ValidationError, where: str, overridden: list[tuple[str, ...]] = ()) -> str:
    """One line: each problem (the first few) with the dotted key, what is wrong, a suggestion,
    and where it came from (the file, or the command line for overridden keys)."""
    problems = []
    errors = exc.errors()
    for error in errors[:MAX_PROBLEMS_SHOWN]:
        loc = [str(part) for part in error["loc"]]
        key = _shown(".".join(loc))[1:-1]
        source = "command line" if any(tuple(loc[:len(o)]) == o for o in overridden) else where
        if error["type"] == "extra_forbidden":
            problems.append(f"{source}: {key}: unknown key{_suggest(loc)}")
        else:
            problems.append(f"{source}: {key}: {error['msg']} (got {_shown(error.get('input'))})")
    if len(errors) > MAX_PROBLEMS_SHOWN:
        problems.append(f"and {len(errors) - MAX_PROBLEMS_SHOWN} more")
    return "; ".join(problems)


def _is_number(annotation: Any) -> bool:
    """Whether a field's type is a number (``int``, ``float``, optional or not) and not bool."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        return bool not in members and any(_is_number(m) for m in members)
    return False


def _suggest(loc: list[str]) -> str:
    """'; did you mean X?' for a misspelt key, from the fields valid at that place."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    valid = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{close[0]}'?"
    more = ", ..." if len(valid) > 8 else ""
    return f"; valid keys here: {', '.join(valid[:8])}{more}"


# ---- documentation read from the schema -----------------------------------------------------

def explain(key: str | None = None, config: Config | None = None) -> str:
    """The documentation of one ``section.key``, of one section, or (None) of every key, as
    plain text for a terminal; with ``config``, each key also shows the value it has there
    where that differs from the default."""
    if key is None:
        return "\n\n".join(explain(name, config) for name in Config.model_fields)
    section_name, _, field_name = key.partition(".")
    section = Config.model_fields.get(section_name)
    if section is None:
        raise ConfigError(f"{_shown(key)[1:-1]}: no such section{_suggest([section_name])}")
    model = section.annotation
    values = getattr(config, section_name) if config is not None else None
    if not field_name:
        lines = [f"{section_name}: {_plain(_one_paragraph(model.__doc__))}"]
        return "\n".join(lines + [_explain_field(section_name, name, field, values)
                                   for name, field in model.model_fields.items()])
    field = model.model_fields.get(field_name)
    if field is None:
        raise ConfigError(f"{_shown(key)[1:-1]}: unknown key{_suggest([section_name, field_name])}")
    return _explain_field(section_name, field_name, field, values)


def _explain_field(section: str, name: str, field, values: Section | None = None) -> str:
    """``  section.name = default`` (and ``(this config: value)`` where ``values``, the
    section of a config, holds another), then the documentation as plain text."""
    default = field.get_default(call_default_factory=True)
    shown = _flow_yaml(default)
    if values is not None and getattr(values, name) != default:
        shown += f" (this config: {_flow_yaml(getattr(values, name))})"
    return f"  {section}.{name} = {shown}\n      {_plain(_one_paragraph(field.description))}"


def _flow_yaml(value: Any) -> str:
    """A value as one line of YAML, as a config would hold it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def _one_paragraph(text: str | None) -> str:
    return " ".join((text or "(undocumented)").split())


def _plain(text: str) -> str:
    """Documentation for a terminal: reStructuredText's ````code```` marks dropped (Markdown
    output keeps them, as code)."""
    return re.sub(r"``(.+?)``", r"\1", text)


def reference_markdown() -> str:
    """docs/config.md: every section and key with its default and documentation."""
    lines = ["# Configuration reference", "",
             "Every key of the config schema (`src/sam3_lora/config.py`), its default and what it does.",
             "Generated from the schema by `sam3-lora info --explain --markdown`; a test keeps it equal.",
             "Print one key with `sam3-lora info --explain section.key`.",
             "Numbers must be finite (no `.nan`, `.inf`) and decimal (`1e-4`, `1000`; not `0x10` or `010`), and",
             "`true`/`false` is not a number. Values are read as YAML 1.2 reads them: `no`, `off`, `yes`, `on`",
             "are words (`training.mixed_precision: no`); switches take them too.", ""]
    for section_name, section in Config.model_fields.items():
        model = section.annotation
        lines += [f"## `{section_name}`", "", _one_paragraph(model.__doc__), "",
                  "| key | default | what it does |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            shown = _flow_yaml(field.get_default(call_default_factory=True))
            text = _one_paragraph(field.description).replace("|", "\\|")
            lines.append(f"| `{name}` | `{shown}` | {text} |")
        lines.append("")
    return "\n".join(lines)
