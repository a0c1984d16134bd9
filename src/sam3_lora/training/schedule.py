"""When training evaluates: every ``training.eval_every_steps`` optimiser steps, or at the
ends of epochs spaced so that a run is evaluated about ``training.max_evaluations`` times.

Evaluating after every epoch ran 75 and 100 validations on the two smallest real datasets
(a few images per epoch: hundreds of tiny epochs), most of a run's time. Spacing the
epoch-end evaluations by the run's length keeps their number fixed, whatever the epoch's.
"""

from __future__ import annotations

from sam3_lora.config import TrainingConfig


def evaluation_spacing(total_steps: int, max_evaluations: int | None) -> float:
    """The fewest optimiser steps from one epoch-end evaluation (or the start) to the next:
    ``total_steps / max_evaluations``; 0 (every epoch end) without ``max_evaluations``."""
    return total_steps / max_evaluations if max_evaluations else 0.0


def epoch_end_evaluation_due(cfg: TrainingConfig, step: int, last_eval_step: int, total_steps: int) -> bool:
    """Whether to evaluate at the end of an epoch that ended at ``step``: only without
    ``eval_every_steps``, before the last step (which is always evaluated), not twice at one
    step (a run resumed from an epoch-end checkpoint), and ``evaluation_spacing`` steps after
    the previous evaluation (``last_eval_step``; 0 before the first)."""
    if cfg.eval_every_steps is not None or step >= total_steps or step == last_eval_step:
        return False
    return step - last_eval_step >= evaluation_spacing(total_steps, cfg.max_evaluations)


def describe_evaluation(cfg: TrainingConfig) -> str:
    """The evaluation schedule in words, as ``sam3-lora info`` prints it."""
    if cfg.eval_every_steps is not None:
        when = f"every {cfg.eval_every_steps} steps (training.eval_every_steps)"
    elif cfg.max_evaluations is None:
        when = "at the end of every epoch (training.max_evaluations: null)"
    else:
        when = f"at epoch ends, at most about {cfg.max_evaluations} times per run (training.max_evaluations),"
    return f"eval:    {when} and after the last step; best/ keeps the best {cfg.best_metric}"
