"""LoRA (or another ``lora.method``) on chosen parts of SAM3 (or any torch model), with PEFT
as the engine.

``peft_config`` is the one place the ``lora`` section becomes a method's PEFT config;
``training_hooks`` is what a method adds to the training loop (AdaLoRA: its per-step rank
allocation), and ``adapter_ranks`` the ranks it ended with.

We compute the exact set of Linear layers to adapt from the ``lora`` config (components x
layer names) and hand PEFT that list, so a selection can never silently match nothing. (PEFT
stores a long list as the shortest name endings that match the same layers of this
architecture; the adapter's own ``sam3_lora.json`` keeps the selection as the user wrote it.)

Layer names (matched against the last part of a module's name):
    q_proj, k_proj, v_proj   attention projections, in every component
    out_proj                 attention output: CLIP's ``out_proj`` and SAM3's ``o_proj``
    fc1, fc2                 the two layers of each transformer MLP (the tracker's mask
                             decoder calls them ``proj_in`` and ``proj_out``)
    all                      every Linear layer of the chosen components, and the
                             convolutions of the tracker's prompt encoder, which has no Linear
The tracker (``model.task: interactive``) has three components: ``vision_encoder`` (the
detector's ViT), ``prompt_encoder`` and ``mask_decoder``; the video tracker (``video``) two
more, named as transformers names its modules: ``memory_attention`` (q/k/v/o_proj and its
MLP, ``fc1``/``fc2``) and ``memory_encoder`` (its fuser's MLP, ``fc1``/``fc2``; its other
layers are convolutions).
Names from Meta's original SAM3 code map to these: ``qkv`` -> q_proj, k_proj, v_proj;
``proj`` -> out_proj; ``linear1`` -> fc1; ``linear2`` -> fc2.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from transformers import Sam3Model, Sam3TrackerModel, Sam3TrackerVideoModel

from sam3_lora.config import (
    COMPONENTS,
    METHOD_KEYS,
    METHODS,
    SHARED_ADAPTER,
    Config,
    LoRAConfig,
    check_method_keys,
)
from sam3_lora.errors import ConfigError
from sam3_lora.model.adapter_parameters import is_adapter_parameter, is_derived, split_adapter_name
from sam3_lora.model.loading import load_sam3_config
from sam3_lora.model.roi_align import install_fallback
from sam3_lora.model.tracker import load_tracker_config
from sam3_lora.model.video import load_video_tracker_config

# Each accepted layer name -> the module-name endings it selects.
LAYER_NAMES = {
    "q_proj": ("q_proj",),
    "k_proj": ("k_proj",),
    "v_proj": ("v_proj",),
    "o_proj": ("o_proj", "out_proj"),
    "out_proj": ("out_proj", "o_proj"),
    # The tracker's MLPs (Sam3TrackerFeedForward) name their first and last layer proj_in
    # and proj_out; the detector has no layer of these names.
    # The video tracker's memory attention calls its MLP's layers linear1 / linear2 (as Meta's
    # code does), and its memory encoder's ConvNeXt block pointwise_conv1 / pointwise_conv2.
    "fc1": ("fc1", "proj_in", "linear1", "pointwise_conv1"),
    "fc2": ("fc2", "proj_out", "linear2", "pointwise_conv2"),
    # Meta's original SAM3 code names, mapped to transformers' equivalents.
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "proj": ("out_proj", "o_proj"),
    "linear1": ("fc1", "proj_in", "linear1", "pointwise_conv1"),
    "linear2": ("fc2", "proj_out", "linear2", "pointwise_conv2"),
}
ALL_LINEAR = "all"
CONV_COMPONENTS = ("prompt_encoder",)
"""Components without Linear layers, whose Conv2d layers ``all`` adapts instead (the
tracker's prompt encoder: point embeddings and a three-convolution mask embedder)."""
WHOLE_MODEL = "model"  # the one "component" of a model that has none of SAM3's
LINEAR_ONLY = ("adapter",)
"""Methods whose layer adapts Linear layers alone (the bottleneck adapter), which ``all``
therefore does not extend to convolutions."""


class ParameterCount(NamedTuple):
    """Parameter counts: ``total, trainable, percent = count_parameters(model)``, or as the
    original tool's dict, ``stats["trainable_parameters"]`` (see ``DICT_KEYS``)."""

    total: int
    trainable: int
    percent: float
    """Trainable share of all parameters, in percent."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, DICT_KEYS[key]) if key in DICT_KEYS else self._missing(key)
        return tuple.__getitem__(self, key)

    def keys(self) -> tuple[str, ...]:
        return tuple(DICT_KEYS)

    def _missing(self, key: str):
        raise KeyError(f"{key!r}; the counts are {', '.join(DICT_KEYS)}")


DICT_KEYS = {"total_parameters": "total", "trainable_parameters": "trainable", "trainable_percentage": "percent"}
"""The original tool's ``count_parameters`` dict keys and the fields they read."""


def count_parameters(model: nn.Module) -> ParameterCount:
    """Total and trainable parameters of ``model``, and the trainable percentage."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParameterCount(total, trainable, 100.0 * trainable / max(total, 1))


def model_components(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Root module names LoRA may enter: the chosen SAM3 components, or the whole model."""
    children = dict(model.named_children())
    if not any(name in children for name in COMPONENTS):
        return [WHOLE_MODEL]
    return [name for name in config.components() if name in children]


def _wanted_endings(target_modules: list[str]) -> set[str] | None:
    """Module-name endings selected by ``target_modules``; None means every Linear."""
    unknown = [name for name in target_modules if name != ALL_LINEAR and name not in LAYER_NAMES]
    if unknown:
        valid = ", ".join([*LAYER_NAMES, ALL_LINEAR])
        raise ConfigError(f"lora.target_modules: unknown layer name(s) {unknown}; valid names: {valid}")
    if ALL_LINEAR in target_modules:
        return None
    return {ending for name in target_modules for ending in LAYER_NAMES[name]}


def resolve_targets(model: nn.Module, config: LoRAConfig) -> dict[str, list[str]]:
    """Component -> full names of the Linear layers to adapt. Raises if nothing matches."""
    endings = _wanted_endings(config.target_modules)
    components = model_components(model, config)
    if not components:
        raise ConfigError("lora: no component is switched on; set at least one apply_to_* to true")
    targets: dict[str, list[str]] = {}
    for component in components:
        root = model if component == WHOLE_MODEL else model.get_submodule(component)
        prefix = "" if component == WHOLE_MODEL else f"{component}."
        convolutions = endings is None and component in CONV_COMPONENTS and config.method not in LINEAR_ONLY
        layers = (nn.Linear, nn.Conv2d) if convolutions else nn.Linear
        targets[component] = [
            prefix + name
            for name, module in root.named_modules()
            if isinstance(module, layers) and (endings is None or name.rsplit(".", 1)[-1] in endings)
        ]
    if not any(targets.values()):
        raise ConfigError(
            f"lora.target_modules={config.target_modules} match no Linear layer in "
            f"{', '.join(components)}; layer names there: {', '.join(_linear_names(model, components))}"
        )
    return targets


def _linear_names(model: nn.Module, components: list[str]) -> list[str]:
    roots = [model] if components == [WHOLE_MODEL] else [model.get_submodule(c) for c in components]
    return sorted({n.rsplit(".", 1)[-1] for r in roots for n, m in r.named_modules() if isinstance(m, nn.Linear)})


ADALORA_WARMUP = 0.1
"""AdaLoRA's schedule, as shares of the run's optimiser steps: ranks stay as they start for
the first 10% (``tinit``), are re-allocated every step until the last 20% (``tfinal``), in
which they stay fixed."""
ADALORA_FINAL = 0.2
PLANNED_STEPS = 100
"""The step count an AdaLoRA schedule assumes until a run fits it to its own
(``training_hooks``): where no run decides it (``preview``, the seed API)."""
FEEDFORWARD_ENDINGS = ("fc2", "proj_out")
"""The MLPs' second layers: IA3 scales their input (the MLP's hidden features), and the
output of every other layer it adapts (as in the IA3 paper)."""


def peft_config(config: LoRAConfig, target_names: list[str]):
    """PEFT's config of ``config.method`` for exactly ``target_names``: the one place the
    ``lora`` section becomes a method's settings."""
    import peft

    check_method_keys(config, "lora")   # a LoRAConfig built in Python skipped check_together
    targets = sorted(target_names)
    if config.method == "lora":
        return peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                               target_modules=targets, use_rslora=config.use_rslora, use_dora=config.use_dora,
                               bias="none")
    if config.method == "loha":
        return peft.LoHaConfig(r=config.rank, alpha=config.alpha, target_modules=targets)
    if config.method == "lokr":
        return peft.LoKrConfig(r=config.rank, alpha=config.alpha, target_modules=targets)
    if config.method == "adalora":
        return adalora_config(config, targets)
    if config.method == "vera":
        return peft.VeraConfig(r=config.rank, vera_dropout=config.dropout, target_modules=targets,
                               save_projection=True)
    if config.method == "adapter":
        from sam3_lora.lora.bottleneck import bottleneck_config

        return bottleneck_config(peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=targets,
                                                 bias="none"))
    feedforward = [name for name in targets if name.rsplit(".", 1)[-1] in FEEDFORWARD_ENDINGS]
    return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward)


def config_method(peft_config) -> str:
    """The ``lora.method`` of PEFT's config of one adapter (``model.peft_config[name]``)."""
    from sam3_lora.lora.bottleneck import is_bottleneck

    if is_bottleneck(peft_config):
        return "adapter"
    peft_type = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
    return next(method for method in METHODS if method.upper() == peft_type)


def adalora_config(config: LoRAConfig, targets: list[str]):
    """AdaLoRA from ``init_r`` to an average of ``rank``, scheduled over ``PLANNED_STEPS``
    until ``training_hooks`` fits the schedule to the run."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(target_r=config.rank, init_r=adalora_init_rank(config), lora_alpha=config.alpha,
                         lora_dropout=config.dropout, target_modules=targets, deltaT=1,
                         **adalora_schedule(PLANNED_STEPS))


def adalora_init_rank(config: LoRAConfig) -> int:
    """The rank every layer starts at: ``lora.adalora_init_rank``, by default 1.5 x ``lora.rank``."""
    return config.adalora_init_rank or math.ceil(1.5 * config.rank)


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """AdaLoRA's phases over ``total_steps`` optimiser steps (``ADALORA_WARMUP``,
    ``ADALORA_FINAL``): ``{"total_step", "tinit", "tfinal"}``."""
    final = max(1, round(total_steps * ADALORA_FINAL))
    warmup = round(total_steps * ADALORA_WARMUP)
    if warmup >= total_steps - final:
        raise ConfigError(f"lora.method=adalora needs at least 2 optimiser steps to move its ranks, the run has "
                          f"{total_steps}; raise training.max_steps (or num_epochs), or choose another lora.method")
    return {"total_step": total_steps, "tinit": warmup, "tfinal": final}


def apply_lora_to_model(model: nn.Module, config: LoRAConfig | None = None, verbose: bool = True,
                        adapter_name: str = "default"):
    """Freeze ``model`` and add the adapter of ``config.method`` (LoRA by default) to the
    layers ``config`` selects; returns a PEFT model. (A training loop also runs the method's
    ``training_hooks``.)

    Works on SAM3 (component switches apply) and on any torch model (layer names are
    matched everywhere). Prints the per-component summary unless ``verbose`` is False.
    """
    from peft import get_peft_model

    config = config or LoRAConfig()
    targets = resolve_targets(model, config)
    names = [name for component_names in targets.values() for name in component_names]
    method_config = peft_config(config, names)
    try:
        with peft_quietly():
            peft_model = get_peft_model(model, method_config, adapter_name=adapter_name)
    except (ValueError, TypeError) as exc:   # PEFT's refusal of a layer the method cannot adapt
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"lora.method={config.method}: PEFT cannot adapt the selected layers ({text}); "
                          f"choose other lora.target_modules or another method") from None
    peft_model.sam3_lora_config = config
    if verbose:
        print(format_summary(lora_summary(peft_model), count_parameters(peft_model)))
    return peft_model


def task_adapter_names(config: LoRAConfig, tasks: list[str]) -> list[str]:
    """The adapters a run trains (``lora.task_adapters``), the shared one (``SHARED_ADAPTER``)
    first where there is one, then one per task (dataset) in ``tasks``' order."""
    shared = [SHARED_ADAPTER] if config.task_adapters in ("shared", "both") else []
    return shared + (list(tasks) if config.task_adapters != "shared" else [])


def apply_adapters(model: nn.Module, config: LoRAConfig, names: list[str]):
    """``apply_lora_to_model`` with one adapter per name in ``names``, each on the same layers
    (freshly initialised, from the global RNG in this order), all trainable; the first active.
    (Each batch then activates its own: ``activate_adapters``.)"""
    targets = [name for component_names in resolve_targets(model, config).values() for name in component_names]
    peft_model = apply_lora_to_model(model, config, verbose=False, adapter_name=names[0])
    with peft_quietly():
        for name in names[1:]:
            peft_model.add_adapter(name, peft_config(config, targets))
    peft_model.set_requires_grad(names, requires_grad=True)
    return peft_model


def activate_adapters(model: nn.Module, names: list[str], trainable: list[str] | None = None) -> None:
    """Make ``names`` ``model``'s active adapters: PEFT adds their outputs on every layer they
    share. PEFT also freezes the others; ``trainable`` (all of a run's adapters) keeps their
    ``requires_grad`` as the optimiser and DDP were built with (an inactive adapter simply
    gets no gradient). Without ``trainable`` (inference) every adapter stays frozen."""
    model.base_model.set_adapter(names if len(names) > 1 else names[0], inference_mode=not trainable)
    if trainable:
        model.set_requires_grad(trainable, requires_grad=True)


def _rank_allocation(model: nn.Module) -> Callable[[int], None] | None:
    """The adapter's per-step rank allocation (AdaLoRA's ``update_and_allocate``), or None
    for methods whose ranks are fixed."""
    allocate = getattr(getattr(model, "base_model", None), "update_and_allocate", None)
    return allocate if callable(allocate) else None


def training_hooks(model: nn.Module, total_steps: int) -> list[Callable[[int], None]]:
    """What the adapter's method does after each optimiser step of a run of ``total_steps``,
    given the step (0-based), before the gradients are cleared: AdaLoRA's rank allocation
    (which reads them), its schedule fitted to the run. Empty for the other methods, and for
    a model without adapter (full training)."""
    allocate = _rank_allocation(model)
    if allocate is None:
        return []
    schedule = adalora_schedule(total_steps)
    for config in model.peft_config.values():   # the allocator reads this very object
        for key, value in schedule.items():
            setattr(config, key, value)

    def allocate_ranks(step: int) -> None:
        # AdaLoRA scores each tensor by |weight x gradient|; a layer that no batch of this step
        # reached has no gradient (None), which PEFT's allocator cannot read: it scores 0.
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and parameter.grad is None and is_adapter_parameter(name):
                parameter.grad = torch.zeros_like(parameter)
        allocate(step)

    return [allocate_ranks]


def adapter_ranks(model: nn.Module, adapter_name: str = "default") -> dict[str, int] | None:
    """Adapted layer -> its rank now, for a method that moves ranks during training (AdaLoRA:
    the ranks its allocation kept); None for the others, whose rank is ``lora.rank``."""
    if _rank_allocation(model) is None:
        return None
    # AdaLoRA's rank_pattern: "[base_model.model.]<layer>.lora_E[.<adapter>]" -> which of its
    # init_r ranks are kept
    pattern = {split_adapter_name(key.removeprefix("base_model.model."))[0]: int(sum(kept))
               for key, kept in (model.peft_config[adapter_name].rank_pattern or {}).items()}
    ranks = {}
    for name, module in model.named_modules():
        if adapter_name in getattr(module, "r", {}):
            path = name.removeprefix("base_model.model.")
            ranks[path] = pattern.get(path, int(module.r[adapter_name]))
    return ranks


def component_ranks(ranks: dict[str, int]) -> dict[str, dict[str, float]]:
    """Component -> {"layers", "total", "mean", "min", "max"} of the per-layer ``ranks``."""
    grouped: dict[str, list[int]] = defaultdict(list)
    for path, rank in ranks.items():
        first = path.split(".", 1)[0]
        grouped[first if first in COMPONENTS else WHOLE_MODEL].append(rank)
    return {component: {"layers": len(values), "total": sum(values), "mean": round(sum(values) / len(values), 2),
                        "min": min(values), "max": max(values)} for component, values in grouped.items()}


def format_ranks(ranks: dict[str, int]) -> str:
    """One line: each component's rank after allocation, e.g. 'ranks: vision_encoder 40 over
    4 layers (mean 10.0, 3 to 12)'."""
    parts = [f"{component} {info['total']} over {info['layers']} layers (mean {info['mean']:g}, "
             f"{info['min']} to {info['max']})" for component, info in component_ranks(ranks).items()]
    return "ranks: " + "; ".join(parts)


@contextlib.contextmanager
def peft_quietly():
    """Around PEFT calls that wrap a model: PEFT 0.21 reads ``is_gradient_checkpointing``,
    which transformers 5 deprecated, and the FutureWarning says nothing to our users. AdaLoRA
    adapters, whose allocation gave some layers rank 0, make PEFT warn of unsharded
    DeepSpeed/FSDP saves and of ``rank_pattern`` keys it matches as LoRA's (AdaLoRA's own
    loading applies them: the reload is bit-exact): neither is true of them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Adapter .* LoRA tensor\(s\) have invalid shape")
        warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
        yield


def lora_summary(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Component -> (modules adapted, trainable adapter parameters), from the model itself."""
    modules: dict[str, set[str]] = defaultdict(set)
    params: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        split = split_adapter_name(name.removeprefix("base_model.model."))
        if split is None or not parameter.requires_grad:
            continue
        path = split[0]
        component = path.split(".", 1)[0] if path.split(".", 1)[0] in COMPONENTS else WHOLE_MODEL
        modules[component].add(path)
        params[component] += parameter.numel()
    order = [*COMPONENTS, WHOLE_MODEL]
    return {c: (len(modules[c]), params[c]) for c in sorted(modules, key=order.index)}


def format_summary(summary: dict[str, tuple[int, int]], count: ParameterCount) -> str:
    """The per-component table printed when LoRA is applied."""
    lines = [f"{'component':<18}{'modules':>9}{'trainable':>14}"]
    lines += [f"{name:<18}{mods:>9}{params:>14,}" for name, (mods, params) in summary.items()]
    lines.append(
        f"{'total':<18}{sum(m for m, _ in summary.values()):>9}{count.trainable:>14,}"
        f"  of {count.total:,} parameters ({count.percent:.3f}% trainable)"
    )
    return "\n".join(lines)


def describe_method(config: LoRAConfig) -> str:
    """The method and the keys it reads, e.g. 'method loha, rank 8, alpha 16', or for AdaLoRA
    'method adalora, rank 12 -> 8 on average, alpha 16'."""
    values = {"rank": f"rank {config.rank}", "alpha": f"alpha {config.alpha:g}",
              "dropout": f"dropout {config.dropout:g}" if config.dropout else None}
    if config.method == "adalora":
        values["rank"] = f"rank {adalora_init_rank(config)} -> {config.rank} on average"
    shown = [values[key] for key in METHOD_KEYS[config.method] if values.get(key)]
    flags = [key for key in ("use_rslora", "use_dora") if getattr(config, key)]
    return ", ".join([f"method {config.method}", *shown, *flags])


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors of a PEFT model, keyed as PEFT saves them; of a model with
    several adapters (``lora.task_adapters``), every adapter's, keyed as the model holds them
    (with the adapter's name: PEFT's saved keys leave it out)."""
    from peft import get_peft_model_state_dict

    names = list(model.peft_config)
    if len(names) == 1:
        return get_peft_model_state_dict(model, adapter_name=names[0])
    return {k: v for k, v in model.state_dict().items() if is_adapter_parameter(k) and not is_derived(k)}


def preview(config: Config) -> str:
    """Where ``config`` puts LoRA and how much trains, from the architecture alone: built on
    PyTorch's meta device (shapes without weights), so it is instant even at 840M."""
    base = config.model
    if base.task == "interactive":
        model_class = Sam3TrackerModel
        model_config = load_tracker_config(base.source, base.revision, base.image_size, width=base.tracker_width)
    elif base.task == "video":
        model_class = Sam3TrackerVideoModel
        model_config = load_video_tracker_config(base.source, base.revision, base.image_size, width=base.tracker_width)
    else:
        model_class = Sam3Model
        model_config = load_sam3_config(base.source, base.revision, base.image_size)
    task = "" if config.model.task == "concept" else f", task {config.model.task}: {model_class.__name__}"
    install_fallback()
    with torch.device("meta"):
        model = apply_lora_to_model(model_class(model_config), config.lora, verbose=False)
    size = model_config.vision_config.backbone_config.image_size
    return "\n".join([
        f"model:   {config.model.source} ({size} px{task})",
        f"lora:    {describe_method(config.lora)}, layers {', '.join(config.lora.target_modules)}",
        format_summary(lora_summary(model), count_parameters(model)),
    ])
