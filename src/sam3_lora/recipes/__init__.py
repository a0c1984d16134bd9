"""Recipes: whole jobs built from the library stages, each a function or class the CLI calls.

- ``train``     ``SAM3LoRATrainer``: LoRA (or full) fine-tuning, checkpoints, evaluation
- ``validate``  ``validate``: score a model on a split, write metrics, predictions, a report
- ``demo``      ``run_demo``: the whole loop on the bundled tiny base
"""
