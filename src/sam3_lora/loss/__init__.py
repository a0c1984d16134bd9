"""SAM3's training loss, DETR style (box conversions and IoUs are ``model.box_ops``).

- ``matcher``    Hungarian (one-to-one) and one-to-many assignments of queries to targets
- ``criterion``  ``Sam3Criterion``: the weighted loss terms of a batch
- ``tracker``    ``TrackerCriterion``: the tracker's loss (SAM 2's multi-step, multi-mask recipe)
"""
