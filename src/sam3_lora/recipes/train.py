"""The training recipe: ``SAM3LoRATrainer(config).train()``, LoRA or (``method: full``) every weight.

One class, read top to bottom: ``setup`` (accelerator, model, data, optimiser), ``train``
(the loop), ``evaluate`` (validation loss), ``save_checkpoint``. It runs on Accelerate, so
the same code serves one CPU, one GPU, or many processes under ``accelerate launch`` or
``torchrun`` (DDP). Every key of the ``training`` section is read here. What a batch becomes
(model inputs, forward, loss) is the task's (``training.tasks``): SAM3's concept detector, or
with ``model.task: interactive`` its tracker with SAM 2's correction rounds, with ``video`` its
video tracker on clips (SAM 2's clip training); the rest is shared.
Several datasets (``data.datasets``) are one ``training.mixture.Source`` each: every batch
comes from one of them, drawn by weight, and trains the adapters ``lora.task_adapters`` gives it.

Run folder (``output.dir``)::

    config.yaml            the effective config, every key
    metrics.jsonl          one JSON line per log and per evaluation; at each (re)start first
                           {"step", "precision"}: what model.dtype and mixed_precision became
    tensorboard/           TensorBoard events (and other trackers through Accelerate)
    checkpoints/step-N/    resumable: weights + optimiser, scheduler, scaler, RNG, progress
    last/                  weights of the latest step
    best/                  weights with the best validation metric (= last/ without valid/)
    best/NAME/, last/NAME/ with ``lora.task_adapters`` per_task or both: dataset NAME's adapter
                           (the shared one, if any, in best/ and last/ themselves)

The weights are an adapter (``lora.adapter``), or with ``training.method: full`` a whole model
folder (``model.folders.write_model``) that ``model.source`` can name.

A run folder holds one run (``training.run_folder``): a new run refuses a folder holding an
earlier one unless it resumes it (``resume``) or replaces it (``overwrite=True``). Every
file is written by replacing it (``files.write_file``, ``atomic_folder``) or appended without
following a link (``files.open_for_append``): a symlink planted in the folder is never
written through.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
import warnings
from functools import partial
from importlib.util import find_spec
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from sam3_lora.config import SHARED_ADAPTER, Config, DataConfig, check_together, load_config
from sam3_lora.data.coco.split import check_split, load_coco_split
from sam3_lora.data.records import CocoSplit
from sam3_lora.data.scaffold import missing_train_fix
from sam3_lora.data.video.layout import VideoSplit
from sam3_lora.errors import ConfigError, Sam3LoraError
from sam3_lora.evaluation.runner import SplitRunner, score
from sam3_lora.files import atomic_folder, check_output, open_for_append, write_file
from sam3_lora.lora.adapter import load_lora_weights, write_adapter
from sam3_lora.lora.apply import (
    activate_adapters,
    adapter_ranks,
    apply_adapters,
    apply_lora_to_model,
    component_ranks,
    count_parameters,
    format_ranks,
    format_summary,
    lora_summary,
    task_adapter_names,
    training_hooks,
)
from sam3_lora.lora.weights import load_base
from sam3_lora.model.folders import load_model_weights, write_model
from sam3_lora.model.precision import default_device, enable_tf32, resolve_precision
from sam3_lora.training.checkpoint import (
    load_checkpoint,
    prune_checkpoints,
    restore_newest,
    resume_candidates,
    save_checkpoint,
    truncate_log,
)
from sam3_lora.training.features import FeatureCache, fingerprint, trunk_problem
from sam3_lora.training.mixture import Source, combine_metrics, dataset_configs, mixed_batches
from sam3_lora.training.optim import freeze_zero_rate, lr_lambda, param_groups
from sam3_lora.training.resources import (
    enable_activation_checkpointing,
    is_full_size,
    lora_preset,
    memory_advice,
    peak_memory_mb,
    peak_tflops,
)
from sam3_lora.training.run_folder import check_run_folder, remove_earlier_run
from sam3_lora.training.schedule import epoch_end_evaluation_due
from sam3_lora.training.tasks import Task, build_task, read_clip_split

PROGRESS_ADDED = {"last_eval_step": 0}
"""Progress keys newer than some checkpoints, with the value that resumes such a checkpoint
as the sam3-lora that wrote it did (``last_eval_step`` 0: no evaluation recorded, so the
epoch-end evaluation of the checkpoint's step is run again on resume)."""


class TrainingError(Sam3LoraError):
    """Training stopped for a reason the user can act on."""


class TrainingInterrupted(Sam3LoraError):
    """Ctrl-C or SIGTERM: a resumable checkpoint was written."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class SAM3LoRATrainer:
    """Fine-tunes SAM3 as ``config`` says; ``train()`` returns the summary.

    ``peft_model`` is the model being trained: PEFT-wrapped with LoRA, or with
    ``training.method: full`` the bare SAM3 with every weight trainable.

    ``resume``: a run folder or checkpoint to continue (``auto``: ``output.dir``'s newest).
    ``overwrite``: replace an earlier run in ``output.dir`` (its config, metrics, checkpoints,
    ``best/``, ``last/`` and tracker logs are deleted once the model has loaded); without it,
    and without resuming that run, a used ``output.dir`` is refused before anything loads.
    """

    def __init__(self, config: Config | str | Path, overrides: list[str] | None = None,
                 resume: str | Path | None = None, quiet: bool = False, overwrite: bool = False):
        self.config = config if isinstance(config, Config) else load_config(config, overrides)
        self.run_dir = Path(self.config.output.dir)
        self.resume = resume
        self.overwrite = overwrite
        self.quiet = quiet
        self.step = self.epoch = self.batches_done = 0
        self.best_value: float | None = None
        self.evals_without_improvement = 0
        self.stop_signal: int | None = None
        self.last_eval_step = 0   # the step of the latest evaluation; 0: none yet (step 0 is never evaluated)
        self.flops_per_batch: int | None = None

    # ---- setup -----------------------------------------------------------------

    def setup(self) -> SAM3LoRATrainer:
        # What the user can get wrong is checked before the model loads (minutes at full size).
        check_output(self.run_dir, folder=True, what="output.dir")
        checkpoints = self._find_checkpoints()
        self._check_task()
        check_run_folder(self.run_dir, continuing=self._continues_own_run(checkpoints), overwrite=self.overwrite)
        self._load_splits()
        self._setup_accelerator()
        self._setup_model()
        vision_features = partial(self.features.encode, self.peft_model) if self.features is not None else None
        for source in self.sources:   # each reads its own dataset; the first also runs every batch
            source.task = build_task(source.config, self.image_size, self.loaded.processor.text, vision_features)
        self.task: Task = self.sources[0].task
        self._setup_data()
        self._setup_optimizer()
        if checkpoints:
            self._restore(checkpoints)
        if self.accelerator.is_main_process:
            if self.overwrite:
                removed = remove_earlier_run(self.run_dir)
                if removed:
                    self._log_text(f"overwrite: removed the earlier run's {', '.join(removed)} from {self.run_dir}")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_file(self.run_dir / "config.yaml", self.config.to_yaml())
            if checkpoints:   # the steps after the checkpoint are replayed: log each once
                truncate_log(self.run_dir / "metrics.jsonl", self.step)
        self._start_trackers()
        # What `auto` became on this device: the first record of each (re)start.
        self._log_json({"step": self.step, "precision": self.precision.record()})
        return self

    def _check_task(self) -> None:
        """The tracker is scored by its loss while training (``validate`` scores it with clicks)."""
        cfg = self.config
        if cfg.model.task != "concept" and cfg.training.best_metric != "val_loss":
            raise ConfigError(f"training.best_metric={cfg.training.best_metric} is a detection metric; "
                              f"model.task={cfg.model.task} keeps the best val_loss: set training.best_metric=val_loss")

    def _continues_own_run(self, checkpoints: list[Path]) -> bool:
        """Whether ``checkpoints`` (to resume from) are those of the run in ``output.dir``."""
        return bool(checkpoints) and checkpoints[0].resolve().is_relative_to(self.run_dir.resolve())

    def _find_checkpoints(self) -> list[Path]:
        """The checkpoints ``resume`` names, newest first ([] without ``resume``)."""
        if not self.resume:
            return []
        auto = str(self.resume) == "auto"
        found = resume_candidates(self.run_dir if auto else self.resume)
        if not found and not auto:
            raise TrainingError(f"{self.resume}: no checkpoint there; give a run folder with checkpoints/",
                                option="resume")
        return found

    def _setup_accelerator(self) -> None:
        cfg = self.config.training
        self.precision = resolve_precision(self.config.model.dtype, cfg.mixed_precision, default_device(),
                                           full_training=cfg.method == "full")
        enable_tf32(self.precision)
        # One process may build several trainers (tests, the demo); Accelerate keeps its
        # settings in a singleton that must be cleared between them.
        AcceleratorState._reset_state()
        self.trackers = [t for t in cfg.report_to if _tracker_available(t)]
        self.accelerator = Accelerator(
            # cpu=True lets `torchrun`/`accelerate launch` run several CPU processes (gloo).
            cpu=not torch.cuda.is_available(),
            mixed_precision=self.precision.autocast,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=self.trackers or None,
            project_dir=str(self.run_dir),
            # LoRA on a component the batch does not use (the geometry encoder without box
            # prompts) leaves parameters without gradients, which DDP must be told about.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        set_seed(cfg.seed)

    def _start_trackers(self) -> None:
        """The trackers' logs, in ``tensorboard/`` (``sam3-lora/`` with several): started once
        the run folder is ready (an earlier run's logs removed with ``overwrite``)."""
        if self.trackers:
            self.accelerator.init_trackers("tensorboard" if self.trackers == ["tensorboard"] else "sam3-lora",
                                           config=_flat(self.config.model_dump(mode="json")))

    @property
    def criterion(self):
        """The task's loss module (tests replace it to inject failures)."""
        return self.task.criterion

    @criterion.setter
    def criterion(self, criterion) -> None:
        self.task.criterion = criterion

    def _setup_model(self) -> None:
        cfg = self.config
        check_together(cfg)   # a Config built in Python skipped load_config's checks
        self.loaded = load_base(cfg, cfg.model.source, self.precision.dtype, self.accelerator.device)
        self.image_size = self.loaded.processor.image_size
        self.full = cfg.training.method == "full"
        # The adapters (lora.task_adapters): the shared one, and/or one per dataset.
        self.adapter_names = task_adapter_names(cfg.lora, [source.name for source in self.sources])
        if self.full:
            model = self.loaded.model.requires_grad_(True)
            freeze_zero_rate(model, cfg.training.component_learning_rates)
        elif len(self.adapter_names) > 1:
            model = apply_adapters(self.loaded.model, cfg.lora, self.adapter_names)
        else:
            model = apply_lora_to_model(self.loaded.model, cfg.lora, verbose=False, adapter_name=self.adapter_names[0])
        self.checkpointed_blocks = enable_activation_checkpointing(model, cfg.training.activation_checkpointing)
        self.peft_model = model
        self.features = self._feature_cache(model)
        self.parameters = count_parameters(model)
        self._log_text(f"precision: {self.precision.describe()}")
        if cfg.training.activation_checkpointing:   # the ViT's blocks count only where the ViT trains
            self._log_text(f"activation checkpointing: {self.checkpointed_blocks} layers recomputed in backward")
        self._log_text(self._full_summary() if self.full else format_summary(lora_summary(model), self.parameters))

    def _full_summary(self) -> str:
        """What full training trains: every parameter, or all but the components at rate 0."""
        count = self.parameters
        if count.trainable == count.total:
            return f"full training: all {count.trainable:,} parameters"
        frozen = sorted(c for c, rate in self.config.training.component_learning_rates.items() if rate == 0)
        return f"full training: {count.trainable:,} of {count.total:,} parameters ({', '.join(frozen)} frozen: rate 0)"

    def _feature_cache(self, model) -> FeatureCache | None:
        """The vision features' cache ``data.cache_features`` asks for (None: off), refused in
        one line where the vision encoder's output is not a function of the image alone."""
        data = self.config.data
        if data.cache_features == "off":
            return None
        problem = trunk_problem(model, data)
        if problem:
            raise ConfigError(f"data.cache_features={data.cache_features}: {problem}; or set data.cache_features=off")
        folder = None
        if data.cache_features == "disk":
            root = Path(data.cache_features_dir) if data.cache_features_dir else self.run_dir / "feature-cache"
            check_output(root, folder=True, what="data.cache_features_dir")
            folder = root / fingerprint(model, str(self.precision.autocast))
        return FeatureCache(data.cache_features_bytes, folder)

    def _load_splits(self) -> None:
        """Read and check every dataset's train (and valid) annotations (``training.mixture``:
        one ``Source`` per dataset); no model or accelerator needed."""
        self.sources = [Source(name, weight, config) for name, weight, config in dataset_configs(self.config)]
        for index, source in enumerate(self.sources):
            source.splits = self._read_splits(source.config.data, _root_key(self.config, index), self.config.model.task)
            if self.config.model.task == "concept":
                self._warn_without_negatives(source)

    @staticmethod
    def _read_splits(data: DataConfig, key: str, task: str = "concept") -> dict[str, CocoSplit | VideoSplit]:
        """The checked train (and valid) splits of ``data.root``, which the config holds at ``key``:
        COCO splits, or for ``model.task: video`` DAVIS / YouTube-VOS layout splits."""
        root = Path(data.root)
        if not (root / "train").is_dir():
            raise ConfigError(f"{key}={root}: no train/ folder there; point {key} at the folder "
                              f"holding train/ (and valid/), or {missing_train_fix(root, data.annotation_file)}")
        splits = {}
        for name in ("train", "valid"):
            if (root / name).is_dir() and task == "video":
                splits[name] = read_clip_split(root / name, name, data.skip_invalid)
            elif (root / name).is_dir():
                splits[name] = check_split(load_coco_split(root / name, data.annotation_file, name=name),
                                           data.skip_invalid)
        return splits

    def _warn_without_negatives(self, source: Source) -> None:
        """Negative queries teach the model to refuse; a dataset with one prompt has none to
        draw, unless some of its images show nothing of it (their query is a negative)."""
        data, train = source.config.data, source.splits["train"]
        prompts = ({data.generic_prompt} if data.prompt_mode == "generic" else
                   {data.prompts.get(name, name) for name in train.categories.values()})
        shows_nothing = any(not any(o.category_id in train.categories for o in record.objects)
                            for record in train.images)
        if data.num_negatives and not data.negative_phrases and len(prompts) == 1 and not shows_nothing:
            warnings.warn(f"{data.root}: the training data has one prompt ({next(iter(prompts))[:40]}), so there "
                          f"are no negative queries and the model never learns to refuse other concepts; add "
                          f"data.negative_phrases (e.g. [person, car, tree]) to draw negatives from",
                          UserWarning, stacklevel=2)

    def _setup_data(self) -> None:
        """Prompts and the step count, which depend on the model's input size and the processes."""
        for source in self.sources:
            if "valid" not in source.splits:
                self._log_text(f"no validation split in {source.config.data.root}: "
                               + ("not evaluated" if self.config.data.datasets else
                                  "training without evaluation; last/ = best/"))
            # Micro-batches each process takes per pass over the dataset.
            source.batches = math.ceil(source.task.num_samples(source.splits["train"])
                                       / self.config.training.batch_size / self.accelerator.num_processes)
            source.prompts = source.task.prompts(source.splits)
        self.prompts = sorted({prompt for source in self.sources for prompt in source.prompts})
        # Micro-batches each process takes per epoch: one pass over every dataset.
        self.batches_per_epoch = sum(source.batches for source in self.sources)
        # Accelerate steps at the end of an epoch even mid-accumulation: round up.
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.config.training.gradient_accumulation_steps)
        cfg = self.config.training
        self.total_steps = cfg.max_steps or cfg.num_epochs * self.steps_per_epoch

    def _setup_optimizer(self) -> None:
        cfg = self.config.training
        groups = param_groups(self.peft_model, cfg.learning_rate, cfg.weight_decay, cfg.component_learning_rates)
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        # The scheduler is stepped by hand once per optimiser step: Accelerate's wrapper
        # would step it once per process, changing the schedule with the process count.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(lr_lambda, kind=cfg.lr_scheduler, warmup=cfg.warmup_steps, total=self.total_steps))
        self.model, self.optimizer = self.accelerator.prepare(self.task.wrap(self.peft_model), optimizer)
        # What the adapter's method does after each optimiser step (AdaLoRA: rank allocation).
        self.after_optimizer_step = training_hooks(self.peft_model, self.total_steps)

    def _restore(self, checkpoints: list[Path]) -> None:
        """Resume from the newest of ``checkpoints`` that is intact, saying which were not."""
        folder, progress, damaged = restore_newest(checkpoints, self._restore_from)
        for _, why in damaged:
            self._log_text(f"checkpoint damaged: {why}; resuming from {folder} instead")
        self.step, self.epoch, self.batches_done = progress["step"], progress["epoch"], progress["batches_done"]
        self.best_value = progress["best_value"]
        self.evals_without_improvement = progress["evals_without_improvement"]
        self.last_eval_step = progress["last_eval_step"]
        self._log_text(f"resumed from {folder} at step {self.step}")

    def _restore_from(self, folder: Path) -> dict:
        """Weights and training state of one checkpoint; raises ``Sam3LoraError`` if damaged."""
        if self.full:
            load_model_weights(self.peft_model, folder)
        for name in [] if self.full else self.adapter_names:
            load_lora_weights(self.peft_model, self._adapter_folder(folder, name), adapter_name=name)
        return load_checkpoint(folder, self.optimizer.optimizer, self.scheduler, self.accelerator.scaler,
                               progress_like=self._progress(), progress_check=self._progress_problem,
                               progress_added=PROGRESS_ADDED)

    def _progress_problem(self, progress: dict) -> str | None:
        """What in a checkpoint's progress this run cannot have reached, or None: counts of
        evaluations beyond the step count (one at most per step), a position in the epoch
        beyond its batches. (Every count is also at most ``checkpoint.MAX_COUNT``.)"""
        step = progress["step"]
        limits = {"evals_without_improvement": (step, "the step count"), "last_eval_step": (step, "the step"),
                  "batches_done": (self.batches_per_epoch, "the batches of an epoch of this training split")}
        for key, (limit, what) in limits.items():
            if progress[key] > limit:
                return f"progress.{key} is {progress[key]}, more than {what} ({limit})"
        return None

    # ---- the loop ----------------------------------------------------------------

    def train(self) -> dict:
        """Train until ``max_steps`` / ``num_epochs``, early stopping, or a signal."""
        if not hasattr(self, "accelerator"):
            self.setup()
        # load_sam3 returns the model in eval mode; dropout and checkpointing need train mode.
        self.model.train()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._report_device_memory(self.accelerator.device)
        started = time.perf_counter()
        progress = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                        disable=self.quiet or not self.accelerator.is_main_process)
        try:
            self._loop(progress, started)
        except torch.OutOfMemoryError:
            raise TrainingError(
                f"out of memory at step {self.step}: lower training.batch_size, set "
                f"training.activation_checkpointing=1, use the minimal preset, or a smaller model.image_size"
            ) from None
        finally:
            progress.close()
            for number, handler in previous.items():
                signal.signal(number, handler)
        if self.last_eval_step != self.step:
            self._evaluate_and_save(final=True)
        self._report_ranks()
        return self._summary(time.perf_counter() - started)

    def _loop(self, progress, started: float) -> None:
        """Epochs of micro-batches; an optimiser step at each accumulation boundary."""
        nonfinite, poisoned = 0, False
        while self.step < self.total_steps:
            for source, batch in self._train_batches():
                self._route(source)
                with self.accelerator.accumulate(self.model):
                    with self._flop_counter() as counter:
                        losses = self._forward_loss(batch)
                        if self._all_finite(losses["loss"]):
                            self.accelerator.backward(losses["loss"])
                        else:
                            poisoned = True   # skip the whole step, on every process
                    if counter is not None:
                        self.flops_per_batch = counter.get_total_flops()
                    self.batches_done += 1
                    if not self.accelerator.sync_gradients:
                        continue
                    if poisoned:
                        self.optimizer.zero_grad()
                        poisoned, nonfinite = False, nonfinite + 1
                        self._check_nonfinite(nonfinite)
                        continue
                    nonfinite = 0
                    self._optimizer_step()
                self.step += 1
                progress.update()
                self._after_step(losses, batch, source, started, progress)
                if self._maybe_evaluate_and_save():
                    return
                if self.stop_signal is not None:
                    self._interrupt()
                if self.step >= self.total_steps:
                    return
            self.epoch, self.batches_done = self.epoch + 1, 0
            due = epoch_end_evaluation_due(self.config.training, self.step, self.last_eval_step, self.total_steps)
            if due and self._evaluate_and_save():
                return

    def _report_ranks(self) -> None:
        """The ranks the adapter's method ended with, for a method that moves them (AdaLoRA),
        printed and logged; the adapter's ``sam3_lora.json`` holds them per layer."""
        ranks = adapter_ranks(self.peft_model)
        if ranks is not None:
            self._log_text(format_ranks(ranks))
            self._log_json({"step": self.step, "adapter_ranks": component_ranks(ranks)})

    def _report_device_memory(self, device: torch.device) -> None:
        """On CUDA, before the first step: the free memory, and what to change where the
        measured table says a step of this configuration needs more."""
        if device.type != "cuda":
            return
        free, total = (value / 2**30 for value in torch.cuda.mem_get_info(device))
        line = f"{device}: {free:.1f} GB free of {total:.1f} GB before the first step"
        cfg = self.config.training
        if not self.full and is_full_size(self.loaded.model.config):
            dtype = "float32" if self.precision.dtype == torch.float32 else "bfloat16"   # fp16: bf16's bytes
            advice = memory_advice(free, torch.cuda.memory_allocated(device) / 2**30, self.image_size,
                                   lora_preset(self.config.lora), dtype, cfg.activation_checkpointing == 1,
                                   cfg.batch_size)
            line = line if advice is None else f"{line}; {advice}"
        self._log_text(line)

    @contextlib.contextmanager
    def _flop_counter(self):
        """Counts the FLOPs of the first micro-batch (forward and backward, as run: LoRA,
        checkpoint recomputation and all) for the throughput and MFU meter."""
        if self.flops_per_batch is not None:
            yield None
            return
        with FlopCounterMode(display=False) as counter:
            yield counter

    def _optimizer_step(self) -> None:
        max_norm = self.config.training.max_grad_norm
        if max_norm > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        for hook in self.after_optimizer_step:   # before zero_grad: they may read the gradients
            hook(self.step)
        self.scheduler.step()
        self.optimizer.zero_grad()

    def _train_batches(self):
        """(source, batch) of the rest of this epoch: each batch from the dataset drawn for it."""
        return mixed_batches(self.sources, self.config.training.seed, self.epoch, self.batches_done,
                             self._pass_batches)

    def _pass_batches(self, source: Source, number: int, skip: int):
        """The batches of ``source``'s pass ``number`` after the first ``skip``, this process's share."""
        loader = source.task.loader(source.splits["train"], train=True, epoch=number)
        loader = self.accelerator.prepare_data_loader(loader, device_placement=True)
        return self.accelerator.skip_first_batches(loader, skip) if skip else loader

    def _route(self, source: Source) -> None:
        """Activate the adapters that ``source``'s batches train and are validated through: with
        ``lora.task_adapters`` other than shared, its own (and the shared one with ``both``)."""
        if len(self.adapter_names) > 1:
            activate_adapters(self.peft_model, self._adapters_of(source.name), trainable=self.adapter_names)

    def _adapters_of(self, task: str) -> list[str]:
        """The adapters of dataset ``task``: the shared one and its own, of those the run has."""
        return [name for name in self.adapter_names if name in (SHARED_ADAPTER, task)]

    def _forward_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """The task's loss of one batch; the forward under the run's autocast."""
        inputs = self.task.inputs(batch, self.accelerator.device)
        with self.accelerator.autocast():
            outputs = self.task.forward(self.model, inputs)
        return self.task.loss(outputs, inputs)

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (all must skip a step together)."""
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=loss.device)
        return self.accelerator.reduce(bad, reduction="sum").item() == 0

    def _check_nonfinite(self, count: int) -> None:
        self._log_json({"step": self.step, "nonfinite_steps": count})
        if count >= self.config.training.max_nonfinite_steps:
            hint = ("training.mixed_precision=fp16 overflows: use bf16 or no, or lower "
                    if self.config.training.mixed_precision == "fp16" else "lower ")
            raise TrainingError(
                f"the model's outputs or loss were NaN or infinite for {count} steps in a row at step "
                f"{self.step}: {hint}"
                f"training.learning_rate ({self.config.training.learning_rate:g}); the last good "
                f"checkpoint is in {self.run_dir / 'checkpoints'}"
            )

    def _after_step(self, losses: dict, batch: dict, source: Source, started: float, progress) -> None:
        cfg = self.config.training
        if self.step % cfg.log_every_steps and self.step != 1:
            return
        elapsed = max(time.perf_counter() - started, 1e-9)
        shown = {k: v.detach() for k, v in losses.items() if "_aux_" not in k}
        # The mean over processes: the loss of the global batch.
        shown = self.accelerator.reduce(shown, reduction="mean")
        record = {
            "step": self.step, "epoch": self.epoch,
            "lr": self.scheduler.get_last_lr()[0],
            **{k: round(v.item(), 6) for k, v in shown.items()},
            "samples_per_s": round(self.step * cfg.batch_size * cfg.gradient_accumulation_steps
                                   * self.accelerator.num_processes / elapsed, 3),
            **self.task.batch_record(batch),
            **({"dataset": source.name} if self.config.data.datasets else {}),   # the last batch's
            **self._throughput(elapsed),
            "peak_memory_mb": round(peak_memory_mb(self.accelerator.device), 1),
        }
        if self.features is not None:   # images whose vision features came from the cache, and its size
            record.update(feature_cache_hits=self.features.hits, feature_cache_misses=self.features.misses,
                          feature_cache_mb=round(self.features.stored_bytes / 2**20, 1))
        progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                             samples_s=record["samples_per_s"])
        self._log_json(record)

    def _throughput(self, elapsed: float) -> dict:
        """Achieved TFLOP/s per process, and MFU where the accelerator's peak is known.

        Estimated from the first batch's counted FLOPs: batches with more queries cost more.
        """
        batches = self.step * self.config.training.gradient_accumulation_steps
        tflops = self.flops_per_batch * batches / elapsed / 1e12
        record = {"tflops": round(tflops, 4)}
        peak = peak_tflops(self.accelerator.device)
        if peak:
            record["mfu"] = round(tflops / peak, 4)
        return record

    # ---- evaluation and checkpoints -------------------------------------------------

    def _maybe_evaluate_and_save(self) -> bool:
        cfg = self.config.training
        if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
            self.save_checkpoint()
        if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0 and self.step < self.total_steps:
            return self._evaluate_and_save()
        return False

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss, plus mAP and cgF1 when ``best_metric`` asks for them: of the one
        dataset, or with ``data.datasets`` of each (``val_loss/NAME``, ...) and their mean
        weighted by sampling weight (``val_loss``, ...)."""
        judged = [source for source in self.sources if "valid" in source.splits]
        if not judged:
            return {}
        self.model.eval()
        found = {source.name: self._evaluate_source(source) for source in judged}
        self.model.train()
        if not self.config.data.datasets:
            return found[judged[0].name]
        return combine_metrics(found, {source.name: source.weight for source in judged})

    def _evaluate_source(self, source: Source) -> dict[str, float | None]:
        """One dataset's validation metrics, through its adapters."""
        self._route(source)
        if self.config.training.best_metric == "val_loss":
            return {"val_loss": self._validation_loss(source)}
        return self._detection_metrics(source)

    def _validation_loss(self, source: Source) -> float:
        """Mean loss over the validation batches, sharded over and reduced across processes."""
        loader = source.task.loader(source.splits["valid"], train=False, epoch=0)
        totals = torch.zeros(2, device=self.accelerator.device)
        for batch in self.accelerator.prepare_data_loader(loader, device_placement=True):
            totals += torch.stack([self._forward_loss(batch)["loss"].detach().float(), totals.new_tensor(1.0)])
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1)).item()

    def _detection_metrics(self, source: Source) -> dict[str, float | None]:
        """Validation loss, mAP and cgF1 from one pass over the split, computed as
        ``sam3-lora validate`` does (each process scores the whole split)."""
        runner = SplitRunner(self.peft_model, self.loaded.processor, source.splits["valid"], source.config)
        found = runner.predict()
        metrics, _ = score(runner.ground_truth(), found.results, self.config.evaluation.score_threshold)
        return {"val_loss": found.val_loss, **{key: metrics[key] for key in ("mAP", "mAP50", "cgF1")}}

    def _evaluate_and_save(self, final: bool = False) -> bool:
        """Evaluate, update best/ and last/, write a checkpoint; True if training should stop."""
        metrics = self.evaluate()
        self.last_eval_step = self.step
        improved = False
        if metrics:
            value = _better_is_higher(self.config.training.best_metric, metrics)
            improved = value is not None and (self.best_value is None or value > self.best_value)
            if improved:
                self.best_value, self.evals_without_improvement = value, 0
            else:
                self.evals_without_improvement += 1
            self._log_json({"step": self.step, "epoch": self.epoch, **metrics, "best": improved})
        self.save_checkpoint(best=improved or not metrics)
        patience = self.config.training.early_stopping_patience
        if patience and self.evals_without_improvement >= patience and not final:
            self._log_text(f"early stopping at step {self.step}: {patience} evaluations without improvement")
            return True
        return False

    def save_checkpoint(self, best: bool = False) -> None:
        """Resumable checkpoint in checkpoints/step-N, weights in last/ (and best/)."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return
        folder = save_checkpoint(self.run_dir / "checkpoints" / f"step-{self.step:06d}", self.write_weights,
                                 self.optimizer.optimizer, self.scheduler, self.accelerator.scaler, self._progress())
        prune_checkpoints(self.run_dir, self.config.training.save_total_limit)
        for name in ("last", "best") if best else ("last",):
            with atomic_folder(self.run_dir / name) as staging:
                self.write_weights(staging)
        self.last_checkpoint = folder

    def _progress(self) -> dict:
        """Where training stands: what a checkpoint restores besides weights and optimiser."""
        return {"step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
                "best_value": self.best_value, "evals_without_improvement": self.evals_without_improvement,
                "last_eval_step": self.last_eval_step}

    def write_weights(self, folder: Path) -> None:
        """The trained weights into the existing ``folder``: the adapter, or the whole model.
        With adapters per dataset (``lora.task_adapters``), the shared one in ``folder`` and
        each dataset's in ``folder/NAME``, with that dataset's prompts."""
        if self.full:
            write_model(self.loaded.model, self.loaded.tokenizer, folder, base_source=self.config.model.source,
                        prompts=self.prompts)
            return
        for name in self.adapter_names:
            where, prompts = self._adapter_folder(folder, name), self.prompts
            if name != SHARED_ADAPTER:
                where.mkdir(exist_ok=True)
                prompts = next(source.prompts for source in self.sources if source.name == name)
            write_adapter(self.peft_model, where, base_source=self.config.model.source, prompts=prompts,
                          adapter_name=name)

    @staticmethod
    def _adapter_folder(folder: Path, name: str) -> Path:
        """Where adapter ``name`` is in a weights folder: the shared one in it, the others in
        the subfolder of their name (``lora.weights.task_adapter_folders`` reads them so)."""
        return folder if name == SHARED_ADAPTER else folder / name

    # ---- signals, logs, summary ----------------------------------------------------

    def _on_signal(self, number: int, frame) -> None:
        if self.stop_signal is not None:   # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_signal = number
        self._log_text(f"{signal.Signals(number).name}: finishing this step, then saving a checkpoint")

    def _interrupt(self) -> None:
        self.save_checkpoint()
        name = signal.Signals(self.stop_signal).name
        raise TrainingInterrupted(
            f"{name} at step {self.step}; checkpoint saved. Resume with: "
            f"sam3-lora train --config {self.run_dir / 'config.yaml'} --resume {self.run_dir}", self.stop_signal)

    def _log_json(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open_for_append(path) as file:
                file.write(json.dumps(record) + "\n")
        except OSError as exc:   # a full disk: say so in one line, the checkpoints are intact
            raise TrainingError(f"{path}: could not be written ({exc.strerror or type(exc).__name__}); free some "
                                f"space, then resume from {self.run_dir}", option="resume") from None
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if numbers and self.accelerator.trackers:
            self.accelerator.log(numbers, step=record["step"])

    def _log_text(self, text: str) -> None:
        if not self.quiet and self.accelerator.is_main_process:
            tqdm.write(text)

    def _best(self) -> float | None:
        """The best value of ``best_metric`` so far, as the metric reads (a loss positive)."""
        if self.best_value is None:
            return None
        return -self.best_value if self.config.training.best_metric == "val_loss" else self.best_value

    def _summary(self, seconds: float) -> dict:
        summary = {
            "steps": self.step, "epochs": round(self.step / self.steps_per_epoch, 2), "seconds": round(seconds, 1),
            "best_metric": self.config.training.best_metric, "best_value": self._best(),
            "run_dir": str(self.run_dir),
            "trainable_parameters": self.parameters.trainable,
            "peak_memory_mb": round(peak_memory_mb(self.accelerator.device), 1),
        }
        if not (self.run_dir / "best").exists() and (self.run_dir / "last").exists():
            with atomic_folder(self.run_dir / "best") as staging:
                shutil.copytree(self.run_dir / "last", staging, dirs_exist_ok=True)
        self.accelerator.end_training()
        self._log_text(
            f"done: {self.step} steps in {seconds:.0f} s, best {self.config.training.best_metric} "
            f"{'-' if self._best() is None else f'{self._best():.4f}'}, "
            f"{'models' if self.full else 'adapters'} in {self.run_dir}/best and /last")
        return summary


def _better_is_higher(metric: str, metrics: dict) -> float | None:
    """The best metric's value, signed so that higher is better (None: undefined, e.g. cgF1
    without negative prompts, which never counts as an improvement)."""
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):   # a NaN loss (diverged) is never the best
        return None
    return -value if metric == "val_loss" else value


def _root_key(config: Config, index: int) -> str:
    """The config key that holds the root of dataset ``index`` (``training.mixture``)."""
    datasets = config.data.datasets
    return f"data.datasets[{datasets[index].name}].root" if datasets else "data.root"


def _tracker_available(name: str) -> bool:
    module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[name]
    if find_spec(module) is None:
        raise ConfigError(f"training.report_to: {name} is not installed; pip install {module}, or remove it")
    return True


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested config -> flat {"a.b": value} of scalars, for trackers' hyper-parameter tables."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[f"{prefix}{key}"] = value
    return flat
