"""The pieces a training recipe is built from (the recipe itself is ``recipes.train``).

- ``checkpoint``  resumable checkpoints: weights, optimiser, scheduler, RNG, progress
"""
