"""Bottleneck adapters (``lora.method: adapter``), as SAM-Adapter puts them in SAM's ViT: a
layer's output ``y`` (``(..., out)``) becomes ``y + scale * up(gelu(down(y)))``, ``down`` a
Linear ``out -> rank``, ``up`` a Linear ``rank -> out`` that starts at zero (so the adapted
model starts equal to its base), ``scale = alpha / rank``. On ``fc2`` / ``o_proj`` this is the
adapter after each block's MLP / attention.

No maintained library places these on transformers' SAM3 (PEFT 0.21 has no bottleneck
method), so ``BottleneckLinear`` is a layer for PEFT's custom LoRA modules
(``LoraConfig._register_custom_module``): an adapter of this method is, to PEFT, a LoRA config
whose Linear layers are ``BottleneckLinear``. Saving (safetensors, adapter tensors only),
loading, switching by name, ``disable_adapter`` and the float32 adapter weights therefore go
through PEFT's LoRA path like every other method. Its tensors are named ``lora_bottleneck_down``
and ``lora_bottleneck_up`` because that path keeps exactly the tensors named ``lora_...``.
PEFT does not save the custom mapping in ``adapter_config.json``: ``sam3_lora.json`` records
the method, and loading registers the mapping again (``bottleneck_config``).

``BottleneckLinear`` is PEFT's LoRA ``Linear`` with bottleneck adapters besides, so a LoRA
adapter loaded after a bottleneck adapter joins the same layers and both switch by name.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from sam3_lora.config import MERGE_REFUSALS


class BottleneckLinear(LoraLinear):
    """A Linear layer with bottleneck adapters on its output (and LoRA adapters, if any join).

    ``lora_bottleneck_down[name]``: Linear ``out_features -> r`` (PyTorch's default init);
    ``lora_bottleneck_up[name]``: Linear ``r -> out_features``, weight and bias zero;
    ``bottleneck_scale[name]``: ``lora_alpha / r``."""

    adapter_layer_names = (*LoraLinear.adapter_layer_names, "lora_bottleneck_down", "lora_bottleneck_up")
    other_param_names = (*LoraLinear.other_param_names, "bottleneck_scale")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, r: int = 0,
                 lora_alpha: float = 1, **kwargs) -> None:
        # LoRA's Linear.__init__, with the bottleneck dicts made before its first update_layer
        # (which adds this adapter to them); nn.Module.__init__ would empty them if run after.
        nn.Module.__init__(self)
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.lora_bottleneck_down = nn.ModuleDict()
        self.lora_bottleneck_up = nn.ModuleDict()
        self.bottleneck_scale: dict[str, float] = {}
        self.fan_in_fan_out = config.fan_in_fan_out
        self.is_target_conv_1d_layer = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig, **kwargs) -> None:
        """Add ``adapter_name``: a bottleneck of width ``r`` if ``config`` is a bottleneck
        adapter's, else a LoRA adapter (one loaded beside it)."""
        if not is_bottleneck(config):
            super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
            return
        if r <= 0:
            raise ValueError(f"the bottleneck width r must be positive, not {r}")
        features = self.out_features
        self.lora_bottleneck_down[adapter_name] = nn.Linear(features, r)
        up = nn.Linear(r, features)
        nn.init.zeros_(up.weight)   # the adapter adds nothing until it trains
        nn.init.zeros_(up.bias)
        self.lora_bottleneck_up[adapter_name] = up
        self.bottleneck_scale[adapter_name] = lora_alpha / r
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = super().forward(x, *args, **kwargs)   # the base, and any active LoRA adapter
        if self.disable_adapters or kwargs.get("adapter_names") is not None:
            # adapter_names (PEFT's adapter per sample) replace the active adapters; PEFT
            # accepts only LoRA adapters' names there, which LoRA's forward has applied
            return result
        for name in self.active_adapters:
            if name in self.lora_bottleneck_down:
                result = result + self._bottleneck(name, result)
        return result

    def _bottleneck(self, name: str, y: torch.Tensor) -> torch.Tensor:
        """``scale * up(gelu(down(y)))`` for ``y`` (``(..., out_features)``), computed in the
        adapter's dtype (float32 over a half base) and returned in ``y``'s."""
        down, up = self.lora_bottleneck_down[name], self.lora_bottleneck_up[name]
        hidden = nn.functional.gelu(down(y.to(down.weight.dtype)))
        return (up(hidden) * self.bottleneck_scale[name]).to(y.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """LoRA adapters merge as PEFT merges them; a bottleneck adapter is refused (PEFT's
        LoRA merge would skip it, silently dropping it from the merged model)."""
        if any(name in self.lora_bottleneck_down for name in check_adapters_to_merge(self, adapter_names)):
            raise ValueError(MERGE_REFUSALS["adapter"])
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)


def bottleneck_config(config: LoraConfig) -> LoraConfig:
    """``config`` (PEFT's LoRA config: ``r`` the bottleneck width, ``lora_alpha / r`` the
    scale, ``target_modules``) with ``BottleneckLinear`` registered for its Linear layers."""
    config._register_custom_module({nn.Linear: BottleneckLinear})
    return config


def is_bottleneck(config) -> bool:
    """Whether the PEFT config ``config`` is a bottleneck adapter's (``bottleneck_config``)."""
    return BottleneckLinear in (getattr(config, "_custom_modules", None) or {}).values()
