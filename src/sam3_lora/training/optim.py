"""The optimiser's side of training: parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math

from torch import nn

from sam3_lora.config import COMPONENTS, HEADS


def rate_of(parameter_name: str, lr: float, component_lrs: dict[str, float]) -> float:
    """The learning rate of one parameter: its head's in ``component_lrs``, else its
    component's, else ``lr``."""
    own = _own_rate(parameter_name, component_lrs)
    return lr if own is None else own


def _own_rate(parameter_name: str, component_lrs: dict[str, float]) -> float | None:
    """The rate ``component_lrs`` gives a parameter's head or component, or None."""
    return next((component_lrs[part] for part in _parts_of(parameter_name) if part in component_lrs), None)


def _parts_of(parameter_name: str) -> list[str]:
    """The heads and components holding a parameter, the innermost (a head) first."""
    return [c for c in HEADS + COMPONENTS if f".{c}." in f".{parameter_name}"]


def param_groups(model: nn.Module, lr: float, weight_decay: float, component_lrs: dict[str, float]) -> list[dict]:
    """AdamW groups over trainable parameters: a learning rate per component (or head), and
    no weight decay on biases and norm weights (1-D tensors)."""
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        group_lr = rate_of(name, lr, component_lrs)
        decay = 0.0 if parameter.ndim < 2 else weight_decay
        groups.setdefault((group_lr, decay), []).append(parameter)
    return [{"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), params in groups.items()]


def freeze_zero_rate(model: nn.Module, component_lrs: dict[str, float]) -> None:
    """Full training: the components whose learning rate is 0 stop requiring gradients, so
    the backward pass skips them (and a frozen vision encoder can be cached)."""
    for name, parameter in model.named_parameters():
        if _own_rate(name, component_lrs) == 0:
            parameter.requires_grad_(False)


def lr_lambda(step: int, kind: str, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(total - warmup, 1)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    if kind == "inverse_sqrt":
        return 1.0 / math.sqrt((step - warmup) + 1)
    return 1.0
