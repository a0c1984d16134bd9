"""Datasets: COCO reading and validation, concept queries, transforms, converters, synthesis,
and model answers as COCO results (``results``).

- ``prompts``  the tracker's training prompts (mask, noisy box, clicks, correction clicks), as SAM 2
- ``video``    clips: the DAVIS / YouTube-VOS layout, YouTube-VIS files, their checks, synthetic clips
"""
