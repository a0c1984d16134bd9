"""Datasets: COCO reading and validation, concept queries, transforms, converters, synthesis."""
