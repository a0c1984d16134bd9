"""Datasets: COCO reading and validation, concept queries, transforms, converters, synthesis,
and model answers as COCO results (``results``)."""
