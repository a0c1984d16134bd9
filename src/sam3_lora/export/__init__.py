"""Shipping a fine-tuned model.

- ``merged``  the adapter merged into its base (a plain transformers model), or the adapter alone
- ``onnx``    three ONNX graphs, tokenizer and settings for onnxruntime (``serve.onnx_engine`` runs them)
- ``quantize`` INT8 of an ONNX export (onnxruntime's dynamic quantization)
- ``onnx_folder`` the ONNX export folder's file names and ``sam3_onnx.json``
"""
