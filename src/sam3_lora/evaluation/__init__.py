"""Scoring: COCO results in, metrics and reports out.

- ``inputs``       ground truth and predictions checked and prepared once
- ``predictions``  checks of a COCO results file
- ``metrics``      COCO mAP (pycocotools) and the combined metrics table
- ``cgf1``         SAM3's cgF1 family
- ``report``       report.md with its figures
- ``interactive``  simulated clicks (RITM's protocol), NoC and mIoU@k
- ``video``        DAVIS's J, F and J&F of video object segmentation
"""
