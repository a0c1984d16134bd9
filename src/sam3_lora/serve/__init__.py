"""Using a fine-tuned model: prediction, overlays, the browser app.

- ``inference``  ``SAM3LoRAInference``: text and box prompts on images
- ``onnx_engine`` ``SAM3OnnxInference``: the same on an ONNX export, onnxruntime and numpy, no torch
- ``prompts``    prompt and image checks both engines share (torch-free)
- ``image_files`` which images a predict request names, where its outputs go, unreadable ones skipped
- ``overlay``    overlay PNGs of predictions
- ``app``, ``app_ui``  the Gradio app: one model in memory, adapters by name
"""
