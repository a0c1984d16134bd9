"""Reading COCO splits: every field checked, every problem reported with its file and id.

- ``split``    ``load_coco_split`` / ``check_split``: a split folder -> records and problems
- ``fields``, ``images``, ``objects``  the checks of each part of the file
"""
