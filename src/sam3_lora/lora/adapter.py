"""Adapters on disk: PEFT's folder format plus a description of what they belong to.

An adapter folder holds PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``
(any PEFT user can load it) and our ``sam3_lora.json``:

    format         "sam3-lora-adapter/1"
    base_model     {"source": ..., "architecture": {...}}   what the adapter was trained on
    method         the adapter's method (``lora.method``: lora, loha, lokr, adalora, vera, ia3,
                   adapter; a bottleneck adapter's ``adapter_config.json`` is LoRA's)
    lora           the ``lora`` config section that selected the layers
    ranks          AdaLoRA only: adapted layer -> its rank after training's allocation
    prompts        the prompt vocabulary the training used
    sam3_lora_version

Loading checks the files' form, the base's architecture, the LoRA shapes (for the other
methods: that each tensor adapts a layer of the base) and that every value is finite before any tensor is copied, and fails with one line naming what is wrong
(for a misfit, both sides). Nothing is read with pickle.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from sam3_lora import __version__
from sam3_lora.config import MAX_RANK, MERGE_REFUSALS, METHOD_PEFT_TYPES, METHODS, LoRAConfig
from sam3_lora.errors import AdapterError
from sam3_lora.files import atomic_folder
from sam3_lora.lora.apply import adapter_ranks, config_method, peft_quietly
from sam3_lora.model.adapter_parameters import is_adapter_parameter, is_derived, split_adapter_name
from sam3_lora.model.folders import METADATA_FILE, PICKLE_SUFFIXES, pickle_refusal
from sam3_lora.model.tensor_files import read_tensors
from sam3_lora.values import is_finite

FORMAT = "sam3-lora-adapter/1"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
PEFT_TYPES = {peft_type: method for method, peft_type in METHOD_PEFT_TYPES.items() if peft_type == method.upper()}
"""The ``lora.method`` of each PEFT ``peft_type`` (``LOHA`` -> loha; ``LORA`` -> lora, or a
bottleneck adapter where ``sam3_lora.json`` says ``adapter``)."""
RANK_KEYS = {"LORA": ("r",), "LOHA": ("r",), "LOKR": ("r",), "VERA": ("r",), "ADALORA": ("init_r", "target_r"),
             "IA3": ()}
"""The ranks each method's ``adapter_config.json`` holds, each checked to be 1 to ``MAX_RANK``."""
VERA_PROJECTIONS = ("base_model.vera_A", "base_model.vera_B")
"""VeRA's shared random projections, saved once for the whole model (frozen buffers)."""


def architecture(config) -> dict:
    """The sizes that decide whether LoRA tensors fit a model (a few readable numbers)."""
    if getattr(config, "model_type", None) != "sam3":
        return {"model_type": getattr(config, "model_type", type(config).__name__)}
    vit = config.vision_config.backbone_config
    text = config.text_config
    return {
        "model_type": "sam3",
        "vit": f"{vit.num_hidden_layers}x{vit.hidden_size}",
        "text": f"{text.num_hidden_layers}x{text.hidden_size}",
        "detr": f"{config.detr_encoder_config.num_layers}+{config.detr_decoder_config.num_layers}"
                f"x{config.detr_decoder_config.hidden_size}",
        "queries": config.detr_decoder_config.num_queries,
    }


def _base_architecture(model: nn.Module) -> dict:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return architecture(config) if config is not None else {"model_type": type(base).__name__}


def save_adapter(model: nn.Module, folder: str | Path, *, base_source: str = "unknown",
                 prompts: list[str] | None = None, adapter_name: str = "default") -> Path:
    """Write ``model``'s adapter (any ``lora.method``) to ``folder`` atomically; returns the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AdapterError(f"{folder}: is a file; give a folder path for the adapter")
    with atomic_folder(folder) as staging:
        write_adapter(model, staging, base_source=base_source, prompts=prompts, adapter_name=adapter_name)
    return folder


def write_adapter(model: nn.Module, folder: Path, *, base_source: str = "unknown",
                  prompts: list[str] | None = None, adapter_name: str = "default") -> None:
    """PEFT's adapter files plus ``sam3_lora.json``, into the existing folder ``folder``."""
    config = getattr(model, "sam3_lora_config", None)
    ranks = adapter_ranks(model, adapter_name)
    metadata = {
        "format": FORMAT,
        "base_model": {"source": base_source, "architecture": _base_architecture(model)},
        "method": config_method(model.peft_config[adapter_name]),
        "lora": config.model_dump(mode="json") if isinstance(config, LoRAConfig) else None,
        **({"ranks": ranks} if ranks is not None else {}),
        "prompts": sorted(set(prompts or [])),
        "sam3_lora_version": __version__,
    }
    with peft_quietly():
        model.save_pretrained(folder, selected_adapters=[adapter_name])
    if adapter_name != "default":   # PEFT writes a named adapter into a subfolder
        for path in (folder / adapter_name).iterdir():
            path.rename(folder / path.name)
        (folder / adapter_name).rmdir()
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(folder: str | Path) -> dict:
    """Check that ``folder`` is an adapter; return its ``sam3_lora.json`` ({} for plain PEFT),
    checked to be of the right form (each way it is not is a one-line ``AdapterError``)."""
    folder = Path(folder)
    if folder.suffix in PICKLE_SUFFIXES and folder.is_file():
        raise AdapterError(
            f"{folder}: pickle checkpoints are not read (they can run code); "
            f"use an adapter folder saved by sam3-lora or PEFT"
        )
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder; give the folder holding adapter_config.json")
    missing = [name for name in PEFT_FILES if not (folder / name).is_file()]
    if missing:
        refusal = pickle_refusal(folder)
        if refusal and "adapter_model.safetensors" in missing:
            raise AdapterError(f"{folder}: {refusal}; save the adapter as safetensors "
                               f"(PEFT's save_pretrained does by default)")
        raise AdapterError(f"{folder}: not an adapter folder (missing {', '.join(missing)})")
    metadata_path = folder / METADATA_FILE
    if not metadata_path.is_file():
        return {}
    metadata = _read_json(metadata_path)
    problem = _metadata_problem(metadata)
    if problem:
        raise AdapterError(f"{metadata_path}: {problem}; it is not an adapter description sam3-lora wrote "
                           f"(delete the file to load the adapter as plain PEFT)")
    return metadata


def _read_json(path: Path):
    """The JSON value in ``path``; unreadable, non-UTF-8 or invalid JSON is an ``AdapterError``."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise AdapterError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: not UTF-8 text (byte at offset {exc.start}); the file is damaged") from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError) as exc:
        raise AdapterError(f"{path}: not valid JSON ({type(exc).__name__})") from None


def _metadata_problem(metadata) -> str | None:
    """What is wrong with the form of a ``sam3_lora.json`` value, or None."""
    if not isinstance(metadata, dict):
        return f"expected a JSON object, found {type(metadata).__name__}"
    if metadata.get("format") != FORMAT:   # another version's, or a model folder's
        return f"format {str(metadata.get('format'))[:40]!r}, this sam3-lora reads {FORMAT}"
    base = metadata.get("base_model", {})
    if not isinstance(base, dict):
        return f"base_model: expected an object with source and architecture, found {type(base).__name__}"
    if not isinstance(base.get("source", ""), str):
        return "base_model.source: expected text"
    arch = base.get("architecture", {})
    if not isinstance(arch, dict) or not all(isinstance(v, (str, int, float, bool)) for v in arch.values()):
        return "base_model.architecture: expected an object of sizes"
    prompts = metadata.get("prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        return "prompts: expected a list of texts"
    if metadata.get("method", "lora") not in METHODS:
        return f"method: {_short(metadata.get('method'))} is none of {', '.join(METHODS)}"
    ranks = metadata.get("ranks", {})
    if not isinstance(ranks, dict) or not all(_is_int(r) and 0 <= r <= MAX_RANK for r in ranks.values()):
        return f"ranks: expected an object of layer ranks from 0 to {MAX_RANK}"
    if metadata.get("lora") is not None:
        try:
            LoRAConfig.model_validate(metadata["lora"])
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in ("lora", *error["loc"]))
            return f"{where[:60]}: {error['msg'][:100]}"
    return None


def read_peft_config(folder: str | Path) -> dict:
    """PEFT's ``adapter_config.json``, checked where a bad value would make loading allocate
    without bound or change the base model: the config of one of ``lora.method``'s methods,
    ranks 1 to ``MAX_RANK``, finite alpha, no layer replication, plain initialisation."""
    path = Path(folder) / "adapter_config.json"
    config = _read_json(path)
    problem = _peft_config_problem(config)
    if problem:
        raise AdapterError(f"{path}: {problem}; it is not an adapter config sam3-lora can load")
    return config


def _peft_config_problem(config) -> str | None:
    if not isinstance(config, dict):
        return f"expected a JSON object, found {type(config).__name__}"
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type not in PEFT_TYPES:   # a list or dict is no key
        return f"peft_type is {_short(peft_type)}, none of {', '.join(PEFT_TYPES)}"
    ranks = [(key, config.get(key)) for key in RANK_KEYS[peft_type]]
    alphas = [(key, config[key]) for key in ("lora_alpha", "alpha") if key in config]
    for key, pairs in (("rank_pattern", ranks), ("alpha_pattern", alphas)):
        pattern = config.get(key) or {}
        if not isinstance(pattern, dict):
            return f"{key}: expected an object"
        if key == "rank_pattern" and peft_type == "ADALORA":   # layer -> which of init_r ranks it kept
            if not all(isinstance(kept, list) and len(kept) == config.get("init_r")
                       and all(isinstance(k, bool) for k in kept) for kept in pattern.values()):
                return "rank_pattern: expected, per layer, init_r true/false values"
            continue
        pairs += [(f"{key}.{name[:40]}", value) for name, value in pattern.items()]
    for key, rank in ranks:
        if not _is_int(rank) or not 1 <= rank <= MAX_RANK:
            return f"{key} is {_short(rank)}, not a rank from 1 to {MAX_RANK}"
    for key, alpha in alphas:
        if not is_finite(alpha):
            return f"{key} is {_short(alpha)}, not a finite number"
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        return "target_modules: expected layer names"
    if config.get("layer_replication"):
        return "layer_replication is set (it would change the base model)"
    for key in ("init_lora_weights", "use_dora", "use_rslora", "inference_mode"):
        if not isinstance(config.get(key, True), bool):
            return f"{key} is {_short(config.get(key))}, not true or false"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_lora_tensors(model: nn.Module, folder: str | Path, peft_config: dict,
                      method: str = "lora") -> dict[str, torch.Tensor]:
    """The adapter's tensors, each finite and adapting a layer of ``model``; LoRA's shaped for
    it (``lora_A`` (r, in), ``lora_B`` (out, r), both present, r as ``adapter_config.json``
    says), a bottleneck adapter's likewise (``method`` adapter: ``_bottleneck_tensor_problem``);
    checked before PEFT allocates or copies anything. (The other methods' shapes follow
    from their config; PEFT refuses a misfit, which ``load_adapter`` reports in one line.)"""
    path = Path(folder) / "adapter_model.safetensors"
    tensors = read_tensors(path, AdapterError)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if peft_config.get("peft_type") != "LORA":
        _check_adapted_layers(base, path, tensors)
        return tensors
    ranks: dict[str, dict[str, int]] = {}
    for key, tensor in tensors.items():
        module_path, found, rest = key.removeprefix("base_model.model.").partition(".lora_")
        if found and (rest.startswith(BOTTLENECK_PARTS) != (method == "adapter")):
            raise AdapterError(f"{path}: {key[:100]} is {'not ' if method == 'adapter' else ''}a bottleneck "
                               f"adapter's tensor, but {METADATA_FILE} says method {method}; the adapter's files "
                               f"do not belong together")
        if found and rest.startswith(BOTTLENECK_PARTS):
            problem = _bottleneck_tensor_problem(base, module_path, rest, tensor)
            if problem:
                raise AdapterError(f"{path}: {key[:100]}: {problem}; the adapter does not fit this base model")
            if rest.endswith(".weight"):   # the width, as LoRA's pair: down (r, out), up (out, r)
                which = "A" if rest.startswith("bottleneck_down.") else "B"
                ranks.setdefault(module_path, {})[which] = tensor.shape[0 if which == "A" else 1]
            continue
        if not found or not rest.startswith(("A.", "B.")):
            continue   # DoRA magnitudes, modules_to_save: PEFT checks those
        which = rest[0]
        problem = _lora_tensor_problem(base, module_path, which, tensor)
        if problem:
            raise AdapterError(f"{path}: {key[:100]}: {problem}; the adapter does not fit this base model")
        ranks.setdefault(module_path, {})[which] = tensor.shape[0 if which == "A" else 1]
    for module_path, rank in ranks.items():
        if set(rank) != {"A", "B"} or rank["A"] != rank["B"]:
            raise AdapterError(f"{path}: the LoRA pair of {module_path[:100]} is incomplete or of two ranks; "
                               f"the file is damaged")
        if not peft_config.get("rank_pattern") and rank["A"] != peft_config["r"]:
            raise AdapterError(f"{path}: {module_path[:100]} has rank {rank['A']} but adapter_config.json says "
                               f"r={peft_config['r']}; the adapter's files do not belong together")
    return tensors


def _check_adapted_layers(base: nn.Module, path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Raise unless every tensor is an adapter's, on a Linear or Conv2d layer of ``base``."""
    for key in tensors:
        if key.startswith(VERA_PROJECTIONS):
            continue
        split = split_adapter_name(key.removeprefix("base_model.model."))
        problem = "not an adapter tensor" if split is None else None
        if split is not None:
            try:
                layer = base.get_submodule(split[0])
            except AttributeError:
                layer, problem = None, "the model has no such layer"
            layer = getattr(layer, "base_layer", layer)
            if problem is None and not isinstance(layer, (nn.Linear, nn.Conv2d)):
                problem = f"adapts a {type(layer).__name__}, not a Linear layer"
        if problem:
            raise AdapterError(f"{path}: {key[:100]}: {problem}; the adapter does not fit this base model")


BOTTLENECK_PARTS = ("bottleneck_down.", "bottleneck_up.")
"""A bottleneck adapter's tensors, after ``lora_`` (lora/bottleneck.py)."""


def _bottleneck_tensor_problem(base: nn.Module, module_path: str, part: str, tensor: torch.Tensor) -> str | None:
    """What is wrong with one bottleneck tensor (``part``: ``bottleneck_down.weight`` (r, out),
    ``bottleneck_down.bias`` (r,), ``bottleneck_up.weight`` (out, r) or ``bottleneck_up.bias``
    (out,)) for the Linear layer at ``module_path``."""
    try:
        layer = base.get_submodule(module_path)
    except AttributeError:
        return "the model has no such layer"
    layer = getattr(layer, "base_layer", layer)   # a layer PEFT already wraps
    if not isinstance(layer, nn.Linear):
        return f"adapts a {type(layer).__name__}, not a Linear layer"
    out = layer.out_features
    width = None   # r: any size from 1 to MAX_RANK
    expected = {"bottleneck_down.weight": (width, out), "bottleneck_down.bias": (width,),
                "bottleneck_up.weight": (out, width), "bottleneck_up.bias": (out,)}.get(part)
    if expected is None:
        return "not a tensor of a bottleneck adapter (down and up: weight and bias)"
    fits = tensor.dim() == len(expected) and all(
        1 <= size <= MAX_RANK if want is width else size == want for size, want in zip(tensor.shape, expected))
    return None if fits else f"shape {tuple(tensor.shape)} does not fit the layer ({out} out)"


def _lora_tensor_problem(base: nn.Module, module_path: str, which: str, tensor: torch.Tensor) -> str | None:
    """What is wrong with one ``lora_A``/``lora_B`` tensor for the layer at ``module_path``."""
    try:
        layer = base.get_submodule(module_path)
    except AttributeError:
        return "the model has no such layer"
    layer = getattr(layer, "base_layer", layer)   # a layer PEFT already wraps
    if isinstance(layer, nn.Linear):
        expected_dims, inputs, outputs, tail_a, tail_b = 2, layer.in_features, layer.out_features, (), ()
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1:
        # PEFT's LoRA on a convolution: A is the layer's own kernel with r outputs, B a 1x1.
        expected_dims, inputs, outputs = 4, layer.in_channels, layer.out_channels
        tail_a, tail_b = tuple(layer.kernel_size), (1, 1)
    else:
        return f"adapts a {type(layer).__name__}, not a Linear or Conv2d layer"
    if tensor.dim() != expected_dims:
        return f"expected {expected_dims} dimensions, found shape {tuple(tensor.shape)}"
    rank = tensor.shape[0] if which == "A" else tensor.shape[1]
    expected = (rank, inputs, *tail_a) if which == "A" else (outputs, rank, *tail_b)
    if tuple(tensor.shape) != expected or not 1 <= rank <= MAX_RANK:
        return f"shape {tuple(tensor.shape)} does not fit the layer ({inputs} in, {outputs} out)"
    return None


@contextlib.contextmanager
def _peft_errors(folder: str | Path):
    """What PEFT raises on an adapter that passed our checks, as one ``AdapterError`` line."""
    try:
        with peft_quietly():
            yield
    except AdapterError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, OSError,
            ImportError, NotImplementedError) as exc:   # PEFT's own checks, none meant for our users
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise AdapterError(f"{folder}: PEFT cannot load this adapter ({type(exc).__name__}: {text})") from None


def check_base(model: nn.Module, folder: str | Path, metadata: dict) -> None:
    """Raise if the adapter in ``folder`` was made for another base architecture."""
    saved = metadata.get("base_model", {}).get("architecture")
    current = _base_architecture(model)
    if saved and saved != current:
        raise AdapterError(
            f"{folder}: adapter was trained on base {_short(metadata['base_model'].get('source'))} "
            f"{_short(_describe(saved))}, but the model is {_describe(current)}; load the base it was trained on"
        )


def check_lora_shape(model: nn.Module, folder: str | Path, method: str = "lora", adapter_name: str = "default") -> None:
    """Raise if ``model``'s own LoRA (its adapter ``adapter_name``) differs in method, rank or
    layers from the adapter (of ``method``) in ``folder``."""
    peft_config = getattr(model, "peft_config", {}).get(adapter_name)
    if peft_config is None:
        return
    if config_method(peft_config) != method:   # a bottleneck adapter's PEFT type is LoRA's
        raise AdapterError(f"{folder}: adapter has method={method} but the model's adapter has "
                           f"method={config_method(peft_config)}; apply the adapter's method or load it onto the "
                           f"bare base")
    saved_config = read_peft_config(folder)
    for key in ("peft_type", "r", "init_r", "target_modules", "use_dora"):
        mine, theirs = peft_config.to_dict().get(key), saved_config.get(key)
        if isinstance(mine, (list, set)) or isinstance(theirs, (list, set)):
            mine, theirs = sorted(mine or []), sorted(theirs or [])
        mine = getattr(mine, "value", mine)   # PeftType.LOHA -> "LOHA"
        if mine != theirs:
            raise AdapterError(
                f"{folder}: adapter has {key}={_short(theirs)} but the model's LoRA has "
                f"{key}={_short(mine)}; apply LoRA with the adapter's settings or load it onto the bare base"
            )


def load_adapter(model: nn.Module, folder: str | Path, *, adapter_name: str = "default",
                 is_trainable: bool = False):
    """Attach the adapter in ``folder`` to a bare base model; returns the PEFT model.

    A model that already carries adapters gets this one added under ``adapter_name`` (PEFT's
    named adapters), so one base in memory can switch between several. Every file is checked
    first (form, shapes, finite values): a bad adapter is one ``AdapterError`` line.
    """
    from peft import PeftModel

    metadata = read_metadata(folder)
    check_base(model, folder, metadata)
    peft_config = read_peft_config(folder)
    method = metadata.get("method", "lora")
    tensors = read_lora_tensors(model, folder, peft_config, method)
    if isinstance(model, PeftModel):
        check_same_method(model, folder, peft_config, method)
    with _peft_errors(folder):
        # PEFT builds the config from adapter_config.json, which lacks a bottleneck adapter's
        # custom layer: this one has it, for PEFT to add the adapter with before loading it
        config = _bottleneck_config(folder, is_trainable) if method == "adapter" else None
        if isinstance(model, PeftModel):
            if config is not None:
                _check_free_of_lora(model, folder, tensors)
                model.add_adapter(adapter_name, config)
                model.set_requires_grad(adapter_name, requires_grad=is_trainable)
            model.load_adapter(str(folder), adapter_name=adapter_name, is_trainable=is_trainable)
            return model
        peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name,
                                               is_trainable=is_trainable, config=config)
    if metadata.get("lora"):
        peft_model.sam3_lora_config = LoRAConfig.model_validate(metadata["lora"])
    return peft_model


def _bottleneck_config(folder: str | Path, is_trainable: bool):
    """PEFT's config of the bottleneck adapter in ``folder``, its custom layer registered."""
    from peft import LoraConfig

    from sam3_lora.lora.bottleneck import bottleneck_config

    config = bottleneck_config(LoraConfig.from_pretrained(str(folder)))
    config.inference_mode = not is_trainable
    return config


def _check_free_of_lora(model: nn.Module, folder: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Raise if a layer the bottleneck adapter in ``folder`` adapts already carries PEFT's plain
    LoRA layer: PEFT would add the new adapter to it as LoRA, not as a bottleneck. (A LoRA
    adapter joins a bottleneck adapter's layers, so that order works.)"""
    from peft.tuners.lora import LoraLayer

    from sam3_lora.lora.bottleneck import BottleneckLinear

    base = model.get_base_model()
    for key in tensors:
        path = split_adapter_name(key.removeprefix("base_model.model."))[0]
        layer = base.get_submodule(path)
        if isinstance(layer, LoraLayer) and not isinstance(layer, BottleneckLinear):
            raise AdapterError(f"{folder}: {path[:100]} already carries a LoRA adapter, and PEFT adds a bottleneck "
                               f"adapter only to a layer that has none yet; load this adapter first, then the LoRA "
                               f"adapters")


def check_same_method(model: nn.Module, folder: str | Path, peft_config: dict, method: str = "lora") -> None:
    """Raise if the adapter in ``folder`` (of ``method``) is of another PEFT type than the
    adapters ``model`` carries (PEFT switches by name only between adapters of one type; LoRA
    and bottleneck adapters share LoRA's)."""
    mine = sorted({config_method(config) for config in model.peft_config.values()})
    if all(METHOD_PEFT_TYPES[other] != peft_config["peft_type"] for other in mine):
        raise AdapterError(f"{folder}: a {method} adapter cannot join this model's {' and '.join(mine)} adapters "
                           f"(PEFT switches between adapters of one method); load it onto its own base model")


def check_mergeable(folder: str | Path, metadata: dict | None = None) -> None:
    """Raise (one ``AdapterError`` line) if the adapter in ``folder`` is of a method that
    cannot merge into its base (``MERGE_REFUSALS``): before an export loads the base to merge.
    ``metadata``: its ``sam3_lora.json``, if already read."""
    method = (read_metadata(folder) if metadata is None else metadata).get("method", "lora")
    if method in MERGE_REFUSALS:
        raise AdapterError(f"{folder}: {MERGE_REFUSALS[method]}; use the adapter folder unmerged (predict, "
                           f"evaluate, serve and the app load it onto its base)")


def save_lora_weights(model: nn.Module, path: str | Path, **metadata) -> Path:
    """Seed API: save the LoRA adapter of ``model`` to the folder ``path``."""
    return save_adapter(model, path, **metadata)


def load_lora_weights(model: nn.Module, path: str | Path, adapter_name: str = "default") -> nn.Module:
    """Seed API: load LoRA weights from ``path`` into ``model``, which already has LoRA
    applied with the same settings (``apply_lora_to_model``), into its adapter ``adapter_name``.
    Returns ``model``."""
    from peft import set_peft_model_state_dict

    metadata = read_metadata(path)
    check_base(model, path, metadata)
    if not hasattr(model, "peft_config"):
        raise AdapterError(f"{path}: the model has no LoRA yet; use load_adapter(model, path) for a bare base")
    check_lora_shape(model, path, metadata.get("method", "lora"), adapter_name)
    saved_config = read_peft_config(path)
    tensors = read_lora_tensors(model, path, saved_config, metadata.get("method", "lora"))
    with _peft_errors(path):
        result = set_peft_model_state_dict(model, _unpruned(tensors, saved_config, path), adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if is_adapter_parameter(k) and not is_derived(k)
               and split_adapter_name(k)[1].split(".")[1:2] == [adapter_name]]   # not the model's other adapters
    if missing:
        raise AdapterError(f"{path}: adapter lacks {len(missing)} LoRA tensors the model has (first: {missing[0]})")
    if saved_config.get("rank_pattern") and saved_config["peft_type"] == "ADALORA":
        # AdaLoRA goes on masking to these ranks (a resumed run's allocation restarts its
        # importance estimates: they are not in the checkpoint)
        model.peft_config[adapter_name].rank_pattern = saved_config["rank_pattern"]
    return model


def _unpruned(tensors: dict[str, torch.Tensor], peft_config: dict, path: str | Path) -> dict[str, torch.Tensor]:
    """An AdaLoRA adapter's tensors at their ``init_r`` ranks, as training holds them: PEFT
    saves only the ranks the allocation kept (``rank_pattern``); the dropped ones are zero
    (masked). Other adapters' tensors as they are."""
    if peft_config["peft_type"] != "ADALORA" or not peft_config.get("rank_pattern"):
        return tensors
    kept = {layer.removesuffix(".lora_E"): torch.tensor(mask) for layer, mask in peft_config["rank_pattern"].items()}
    full = {}
    for key, tensor in tensors.items():
        layer, _, part = key.removeprefix("base_model.model.").rpartition(".")
        mask = kept.get(layer)
        if mask is None or part not in ("lora_A", "lora_B", "lora_E"):
            full[key] = tensor
            continue
        dim = 1 if part == "lora_B" else 0
        if tensor.shape[dim] != int(mask.sum()):
            raise AdapterError(f"{path}: {key[:100]} holds {tensor.shape[dim]} ranks but rank_pattern keeps "
                               f"{int(mask.sum())}; the adapter's files do not belong together")
        shape = list(tensor.shape)
        shape[dim] = len(mask)
        full[key] = tensor.new_zeros(shape).index_copy_(dim, mask.nonzero().squeeze(1), tensor)
    return full


def _describe(arch: dict) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in arch.items() if k != "model_type") + ")" \
        if arch.get("model_type") == "sam3" else f"({arch.get('model_type')})"


def _short(value) -> str:
    text = str(value)
    if len(text) < 80:
        return text
    return f"[{len(value)} modules]" if isinstance(value, (list, set, tuple)) else text[:77] + "..."
