"""The pieces a training recipe is built from (the recipe itself is ``recipes.train``).

- ``checkpoint``  resumable checkpoints: weights, optimiser, scheduler, RNG, progress
- ``optim``       parameter groups (no decay on biases and norms) and learning-rate schedules
- ``resources``   activation checkpointing, peak memory, accelerator FLOP/s for the MFU meter
- ``run_folder``  one run per ``output.dir``: refusing a used one, replacing it on request
- ``schedule``    when training evaluates (epoch ends spaced by ``max_evaluations``, or steps)
"""
