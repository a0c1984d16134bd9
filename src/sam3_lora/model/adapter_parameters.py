"""The one rule for which of a model's parameters belong to an adapter, whatever its method.

PEFT names every tensor a method adds with that method's prefix (``PeftType`` -> its tuner's
``prefix``: ``lora_`` for LoRA and AdaLoRA, ``hada_`` for LoHa, ``lokr_`` for LoKr,
``vera_lambda_`` for VeRA, ``ia3_`` for IA3; bottleneck adapters are LoRA's custom layers:
``lora_bottleneck_down``/``_up``), as one part of the dotted name after the module it adapts:
``vision_encoder.layers.0.attn.q_proj.hada_w1_a.default``. AdaLoRA adds a
frozen ``ranknum`` beside its tensors. Precision, counts, saving and loading all ask here.
"""

from __future__ import annotations

from functools import cache

from sam3_lora.config import METHOD_PEFT_TYPES, METHODS

EXTRA_NAMES = ("ranknum",)
"""Adapter tensors named without their method's prefix (AdaLoRA's rank counter)."""


@cache
def adapter_prefixes() -> tuple[str, ...]:
    """The name prefixes of the tensors every ``lora.method`` adds, from PEFT itself."""
    import peft  # noqa: F401 - registering the tuners fills the mapping
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    from peft.utils import PeftType

    return tuple(dict.fromkeys(PEFT_TYPE_TO_PREFIX_MAPPING[PeftType[METHOD_PEFT_TYPES[method]]] for method in METHODS))


def split_adapter_name(name: str) -> tuple[str, str] | None:
    """``(module path, adapter part)`` of an adapter tensor's name, e.g.
    ``("x.q_proj", "lora_A.default.weight")`` for ``x.q_proj.lora_A.default.weight``; None for a
    base model's own tensor."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.startswith(adapter_prefixes()) or part in EXTRA_NAMES:
            return ".".join(parts[:index]), ".".join(parts[index:])
    return None


def is_adapter_parameter(name: str) -> bool:
    """Whether the parameter, module or state-dict key ``name`` belongs to an adapter."""
    return split_adapter_name(name) is not None


def is_derived(name: str) -> bool:
    """Whether the adapter tensor ``name`` follows from the adapter's config and is not saved
    (AdaLoRA's ``ranknum``)."""
    split = split_adapter_name(name)
    return split is not None and split[1].split(".", 1)[0] in EXTRA_NAMES
