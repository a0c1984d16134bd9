import math

import pytest
import torch

from sam3_lora.model.roi_align import roi_align


def reference_roi_align(features, box, out_size, aligned):
    """A scalar transcription of torchvision's CPU roi_align kernel (sampling_ratio=-1)."""
    channels, height, width = features.shape
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) - offset for v in box)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / out_size, roi_w / out_size
    grid_h, grid_w = max(math.ceil(roi_h / out_size), 1), max(math.ceil(roi_w / out_size), 1)

    def bilinear(y, x):
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return torch.zeros(channels, dtype=features.dtype)
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        return ((1 - ly) * (1 - lx) * features[:, y_low, x_low] + (1 - ly) * lx * features[:, y_low, x_high]
                + ly * (1 - lx) * features[:, y_high, x_low] + ly * lx * features[:, y_high, x_high])

    out = torch.zeros(channels, out_size, out_size, dtype=features.dtype)
    for i in range(out_size):
        for j in range(out_size):
            total = sum(
                bilinear(y1 + i * bin_h + (iy + 0.5) * bin_h / grid_h, x1 + j * bin_w + (ix + 0.5) * bin_w / grid_w)
                for iy in range(grid_h) for ix in range(grid_w)
            )
            out[:, i, j] = total / (grid_h * grid_w)
    return out


BOXES = [
    [0.0, 0.0, 11.0, 9.0],      # the whole map
    [2.3, 1.7, 5.9, 8.8],       # fractional corners
    [-3.0, -2.0, 4.0, 3.0],     # partly outside: clamped and zeroed samples
    [7.5, 6.1, 14.0, 12.0],     # past the bottom-right edge
    [4.0, 4.0, 4.2, 4.1],       # smaller than a pixel
]


@pytest.mark.parametrize("aligned", [False, True])
def test_matches_torchvision_kernel(aligned):
    torch.manual_seed(0)
    features = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    boxes = [torch.tensor(BOXES[:3], dtype=torch.float64), torch.tensor(BOXES[3:], dtype=torch.float64)]
    pooled = roi_align(features, boxes, 3, aligned=aligned)
    expected = torch.stack([reference_roi_align(features[0], b, 3, aligned) for b in BOXES[:3]]
                           + [reference_roi_align(features[1], b, 3, aligned) for b in BOXES[3:]])
    assert pooled.shape == (5, 3, 3, 3)
    torch.testing.assert_close(pooled, expected, atol=1e-12, rtol=0)
    indexed = torch.cat([torch.tensor([[0.0]] * 3 + [[1.0]] * 2, dtype=torch.float64),
                         torch.tensor(BOXES, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(roi_align(features, indexed, (3, 3), aligned=aligned), pooled)


def test_gradients_reach_features_and_boxes():
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    boxes = torch.tensor([[1.3, 2.2, 6.1, 7.4]], requires_grad=True)
    roi_align(features, [boxes], 2).sum().backward()
    assert features.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0


def test_agrees_with_torchvision_where_installed():
    ops = pytest.importorskip("torchvision.ops", reason="torchvision absent (CPU machine): kernel test above covers it")
    features = torch.randn(2, 4, 12, 10)
    boxes = [torch.tensor(BOXES[:3]), torch.tensor(BOXES[3:])]
    torch.testing.assert_close(roi_align(features, boxes, 7), ops.roi_align(features, boxes, 7), atol=1e-5, rtol=1e-5)


def test_the_fallback_installs_before_anything_else_imported_sam3():
    """In a fresh interpreter, install_fallback must reach the real modeling module, not
    transformers' lazy placeholder (which it would get without torchvision)."""
    import subprocess
    import sys

    code = ("from sam3_lora.model.roi_align import install_fallback; import importlib.util; "
            "installed = install_fallback(); import transformers.models.sam3.modeling_sam3 as m; "
            "print(installed == (importlib.util.find_spec('torchvision') is None), hasattr(m, 'torchvision'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["True", "True"]
