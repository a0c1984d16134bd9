"""SAM3 itself: where the model comes from and how it is called.

- ``loading``      ``load_sam3``: presets, the bundled base, local folders, the hub
- ``forward``      the one place that runs SAM3: images encoded once, Q (image, prompt) queries,
                   auxiliary (per-decoder-layer) outputs
- ``processing``   images and prompts -> model inputs
- ``tokenizer``    the offline byte-level tokenizer of the presets
- ``roi_align``    pure-torch ``roi_align`` for box prompts where torchvision is absent
- ``postprocess``  query x presence scores, thresholds, masks at image size
"""

from sam3_lora.model.loading import LoadedSam3, load_sam3

__all__ = ["LoadedSam3", "load_sam3"]
