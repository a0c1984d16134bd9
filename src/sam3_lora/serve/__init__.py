"""Using a fine-tuned model: prediction, overlays, the browser app.

- ``inference``  ``SAM3LoRAInference``: text and box prompts on images
- ``overlay``    overlay PNGs of predictions
- ``app``, ``app_ui``  the Gradio app: one model in memory, adapters by name
"""
