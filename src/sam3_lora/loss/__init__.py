"""SAM3's training loss, DETR style.

- ``box_ops``    box conversions, IoU and generalised IoU
- ``matcher``    Hungarian (one-to-one) and one-to-many assignments of queries to targets
- ``criterion``  ``Sam3Criterion``: the weighted loss terms of a batch
"""
