"""Shipping a fine-tuned model.

- ``merged``  the adapter merged into its base (a plain transformers model), or the adapter alone
"""
