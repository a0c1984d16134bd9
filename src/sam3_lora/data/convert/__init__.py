"""Converters from common label formats into the train/valid/test COCO layout.

- ``yolo``     Ultralytics / Roboflow YOLO detection or segmentation folders
- ``labelme``  one LabelMe JSON beside each image
- ``coco``     one COCO file plus its images, as one split or split by ratios; re-splitting
- ``common``   what they share: pending images, annotation builders, writing the layout
"""
