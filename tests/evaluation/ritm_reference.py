"""Transcription of RITM's click simulation and NoC metric, for parity tests only.

Source: SamsungLabs/ritm_interactive_segmentation at commit
b9b44603672e15aa0be878b54fd26e7e1c5d2311 (MIT, Copyright (c) 2021 Samsung Electronics Co.,
Ltd.): ``isegm/inference/clicker.py`` (Clicker, Click), ``isegm/inference/evaluation.py``
(evaluate_sample), ``isegm/inference/utils.py`` (get_iou, compute_noc_metric) and
``scripts/evaluate_model.py`` (the mIoU@k line of ``print_ious``).

Verbatim except:
- ``cv2.distanceTransform(m, cv2.DIST_L2, 0)`` (OpenCV is not installed here) is
  ``scipy.ndimage.distance_transform_edt(m).astype(np.float32)``: both are the exact
  Euclidean distance of each non-zero pixel to the nearest zero pixel (mask size 0 = precise);
- ``np.bool`` / ``np.int`` (removed from NumPy) are ``bool`` / ``int``;
- ``evaluate_sample`` takes a ``predict(clicker)`` callable instead of a predictor object, and
  drops torch.no_grad, the image and the callback; ``pred_probs`` is the predicted mask.
"""
# ruff: noqa
from copy import deepcopy

import numpy as np
from scipy import ndimage


def _distance_transform(mask):
    return ndimage.distance_transform_edt(mask).astype(np.float32)


class Clicker(object):
    def __init__(self, gt_mask=None, init_clicks=None, ignore_label=-1, click_indx_offset=0):
        self.click_indx_offset = click_indx_offset
        if gt_mask is not None:
            self.gt_mask = gt_mask == 1
            self.not_ignore_mask = gt_mask != ignore_label
        else:
            self.gt_mask = None

        self.reset_clicks()

        if init_clicks is not None:
            for click in init_clicks:
                self.add_click(click)

    def make_next_click(self, pred_mask):
        assert self.gt_mask is not None
        click = self._get_next_click(pred_mask)
        self.add_click(click)

    def get_clicks(self, clicks_limit=None):
        return self.clicks_list[:clicks_limit]

    def _get_next_click(self, pred_mask, padding=True):
        fn_mask = np.logical_and(np.logical_and(self.gt_mask, np.logical_not(pred_mask)), self.not_ignore_mask)
        fp_mask = np.logical_and(np.logical_and(np.logical_not(self.gt_mask), pred_mask), self.not_ignore_mask)

        if padding:
            fn_mask = np.pad(fn_mask, ((1, 1), (1, 1)), 'constant')
            fp_mask = np.pad(fp_mask, ((1, 1), (1, 1)), 'constant')

        fn_mask_dt = _distance_transform(fn_mask.astype(np.uint8))
        fp_mask_dt = _distance_transform(fp_mask.astype(np.uint8))

        if padding:
            fn_mask_dt = fn_mask_dt[1:-1, 1:-1]
            fp_mask_dt = fp_mask_dt[1:-1, 1:-1]

        fn_mask_dt = fn_mask_dt * self.not_clicked_map
        fp_mask_dt = fp_mask_dt * self.not_clicked_map

        fn_max_dist = np.max(fn_mask_dt)
        fp_max_dist = np.max(fp_mask_dt)

        is_positive = fn_max_dist > fp_max_dist
        if is_positive:
            coords_y, coords_x = np.where(fn_mask_dt == fn_max_dist)  # coords is [y, x]
        else:
            coords_y, coords_x = np.where(fp_mask_dt == fp_max_dist)  # coords is [y, x]

        return Click(is_positive=is_positive, coords=(coords_y[0], coords_x[0]))

    def add_click(self, click):
        coords = click.coords

        click.indx = self.click_indx_offset + self.num_pos_clicks + self.num_neg_clicks
        if click.is_positive:
            self.num_pos_clicks += 1
        else:
            self.num_neg_clicks += 1

        self.clicks_list.append(click)
        if self.gt_mask is not None:
            self.not_clicked_map[coords[0], coords[1]] = False

    def reset_clicks(self):
        if self.gt_mask is not None:
            self.not_clicked_map = np.ones_like(self.gt_mask, dtype=bool)

        self.num_pos_clicks = 0
        self.num_neg_clicks = 0

        self.clicks_list = []

    def __len__(self):
        return len(self.clicks_list)


class Click:
    def __init__(self, is_positive, coords, indx=None):
        self.is_positive = is_positive
        self.coords = coords
        self.indx = indx

    @property
    def coords_and_indx(self):
        return (*self.coords, self.indx)

    def copy(self, **kwargs):
        self_copy = deepcopy(self)
        for k, v in kwargs.items():
            setattr(self_copy, k, v)
        return self_copy


def get_iou(gt_mask, pred_mask, ignore_label=-1):
    ignore_gt_mask_inv = gt_mask != ignore_label
    obj_gt_mask = gt_mask == 1

    intersection = np.logical_and(np.logical_and(pred_mask, obj_gt_mask), ignore_gt_mask_inv).sum()
    union = np.logical_and(np.logical_or(pred_mask, obj_gt_mask), ignore_gt_mask_inv).sum()

    return intersection / union


def evaluate_sample(gt_mask, predict, max_iou_thr,
                    pred_thr=0.49, min_clicks=1, max_clicks=20):
    clicker = Clicker(gt_mask=gt_mask)
    pred_mask = np.zeros_like(gt_mask)
    ious_list = []

    for click_indx in range(max_clicks):
        clicker.make_next_click(pred_mask)
        pred_probs = predict(clicker)
        pred_mask = pred_probs > pred_thr

        iou = get_iou(gt_mask, pred_mask)
        ious_list.append(iou)

        if iou >= max_iou_thr and click_indx + 1 >= min_clicks:
            break

    return clicker.clicks_list, np.array(ious_list, dtype=np.float32), pred_probs


def compute_noc_metric(all_ious, iou_thrs, max_clicks=20):
    def _get_noc(iou_arr, iou_thr):
        vals = iou_arr >= iou_thr
        return np.argmax(vals) + 1 if np.any(vals) else max_clicks

    noc_list = []
    over_max_list = []
    for iou_thr in iou_thrs:
        scores_arr = np.array([_get_noc(iou_arr, iou_thr)
                               for iou_arr in all_ious], dtype=int)

        score = scores_arr.mean()
        over_max = (scores_arr == max_clicks).sum()

        noc_list.append(score)
        over_max_list.append(over_max)

    return noc_list, over_max_list


def mean_ious(all_ious):
    """scripts/evaluate_model.py, ``print_ious``: mIoU@k over the clicks every object has."""
    min_num_clicks = min(len(x) for x in all_ious)
    return np.array([x[:min_num_clicks] for x in all_ious]).mean(axis=0)
