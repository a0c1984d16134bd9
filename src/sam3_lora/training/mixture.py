"""Several datasets in one run (``data.datasets``): which dataset gives each training batch.

Each dataset is a ``Source``: its name, sampling weight, the task that reads it (its own
``data`` section: root, prompts) and its splits. An epoch is as many batches as one pass over
every dataset; each batch comes from one dataset, drawn by weight (``draws``), and each
dataset is read in its own passes, in order, as if it were trained alone: its k-th batch of
the run is batch ``k % B`` of its pass ``k // B`` (B its batches per pass), the loader its
task builds for ``epoch=pass``. Where every dataset stands is thus a function of (seed,
epoch, batches done) alone, which is what resuming mid-epoch needs. With one dataset every
draw is it, its pass is the epoch: the batches of a run without ``data.datasets``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from sam3_lora.config import Config
from sam3_lora.data.dataset import sample_generator
from sam3_lora.data.records import CocoSplit
from sam3_lora.errors import ConfigError
from sam3_lora.lora.weights import check_task
from sam3_lora.training.tasks import Task

MIXTURE_STREAM = 3   # the draws' random stream (dataset.py uses 0 and 1, collate.py 2)


@dataclass
class Source:
    """One dataset of the run. ``config``: the run's, its ``data`` this dataset's; ``task``
    (``training.tasks``) reads its splits; ``batches``: its micro-batches per pass and process;
    ``prompts``: those its splits ask (what its adapter records)."""

    name: str
    weight: float
    config: Config
    splits: dict[str, CocoSplit] = field(default_factory=dict)
    task: Task | None = None
    batches: int = 0
    prompts: list[str] = field(default_factory=list)


def dataset_configs(config: Config) -> list[tuple[str, float, Config]]:
    """(name, weight, config) of each dataset of ``config``: ``data.datasets``' entries, each
    config's ``data`` holding its root and prompts; or the one dataset of ``data.root``
    (named ``data``, weight 1)."""
    data = config.data
    if not data.datasets:
        return [("data", 1.0, config)]
    return [(entry.name, entry.weight,
             config.model_copy(update={"data": data.model_copy(update={
                 "root": entry.root, "datasets": [], "prompts": {**data.prompts, **entry.prompts}})}))
            for entry in data.datasets]


def task_config(config: Config, task: str | None) -> Config:
    """The config of dataset ``task`` of ``config.data.datasets`` (its ``data`` that dataset's,
    ``data.datasets`` kept for ``lora.weights.task_adapter_folders``): what ``validate --task``
    scores; one line naming the choices where ``task`` is missing or not one of them."""
    names = [entry.name for entry in config.data.datasets]
    if not names:
        raise ConfigError(f"task {str(task)[:64]!r}: the config has no data.datasets; choose no task, or give the "
                          f"config of the run that trained on several datasets", option="task")
    check_task(config, task)
    if task is None:
        raise ConfigError(f"data.datasets holds {', '.join(names)}: name one of them", option="task")
    _, _, chosen = next(item for item in dataset_configs(config) if item[0] == task)
    return chosen.model_copy(update={"data": chosen.data.model_copy(update={"datasets": config.data.datasets})})


def draws(weights: list[float], count: int, seed: int, epoch: int) -> list[int]:
    """The dataset (index into ``weights``) of each of an epoch's ``count`` batches: drawn
    with probability weight / sum, from (seed, epoch) alone."""
    if len(weights) == 1:
        return [0] * count
    generator = sample_generator(seed, epoch, 0, MIXTURE_STREAM)
    chosen = torch.multinomial(torch.tensor(weights, dtype=torch.float64), count, replacement=True,
                               generator=generator)
    return chosen.tolist()


# (weights, count, seed) -> per epoch e, how many batches each dataset gave before it. A run
# asks for each epoch in turn: cached, each epoch's draws are made once, not once per later epoch.
_READ_BEFORE: dict[tuple, list[list[int]]] = {}


def batches_read(weights: list[float], count: int, seed: int, epoch: int, done: int) -> list[int]:
    """How many batches each dataset gave before batch ``done`` of ``epoch`` (epochs of
    ``count`` batches each)."""
    before = _READ_BEFORE.setdefault((tuple(weights), count, seed), [[0] * len(weights)])
    while len(before) <= epoch:
        read = list(before[-1])
        for index in draws(weights, count, seed, len(before) - 1):
            read[index] += 1
        before.append(read)
    read = list(before[epoch])
    for index in draws(weights, count, seed, epoch)[:done]:
        read[index] += 1
    return read


def mixed_batches(sources: list[Source], seed: int, epoch: int, done: int,
                  open_pass: Callable[[Source, int, int], Iterable]) -> Iterator[tuple[Source, dict]]:
    """(source, batch) for the batches of ``epoch`` after the first ``done``.

    ``open_pass(source, pass_number, skip)``: the source's batches of that pass, from batch
    ``skip`` on (the trainer's prepared loader)."""
    weights = [source.weight for source in sources]
    count = sum(source.batches for source in sources)
    read = batches_read(weights, count, seed, epoch, done)
    opened: dict[int, tuple[int, Iterator]] = {}
    for index in draws(weights, count, seed, epoch)[done:]:
        source = sources[index]
        number, position = divmod(read[index], source.batches)
        if index not in opened or opened[index][0] != number:
            opened[index] = (number, iter(open_pass(source, number, position)))
        read[index] += 1
        yield source, next(opened[index][1])


def combine_metrics(found: dict[str, dict[str, float | None]], weights: dict[str, float]) -> dict[str, float | None]:
    """Each dataset's metrics as ``KEY/NAME``, and each ``KEY`` as their mean weighted by
    ``weights`` over the datasets where it is defined (None where it is nowhere; NaN where
    one of them is NaN: a diverged dataset is never hidden by the others).
    ``found``: dataset name -> its metrics."""
    combined: dict[str, float | None] = {}
    for key in dict.fromkeys(key for metrics in found.values() for key in metrics):
        defined = {name: metrics[key] for name, metrics in found.items() if metrics.get(key) is not None}
        total = sum(weights[name] for name in defined)
        combined[key] = sum(weights[name] * value for name, value in defined.items()) / total if defined else None
        combined.update({f"{key}/{name}": metrics.get(key) for name, metrics in found.items()})
    return combined
