"""Test-time preprocessing, in one place: the crop(s) of the net's input size, minus the training
mean (cropped the same way), times the input scale. evaluate(), Net.preprocess/predict and the CLI's
`predict` all call `test_input`; the training loader (data/loader.py) makes the same inputs from
the same PIXEL_SCALE.

Images are (N, H, W, C) NHWC in pixel units: uint8 0..255, or float in [0, 255]."""
from __future__ import annotations

import numpy as np

__all__ = ["PIXEL_SCALE", "test_input", "check_pixel_range"]

# Inputs are (pixel - mean) * 1/64: natural images have a per-channel std of about 50-70 grey levels,
# so the net sees inputs of std ~1 (see data/loader.py).
PIXEL_SCALE = 1.0 / 64.0


def check_pixel_range(images, what: str = "predict"):
    """Refuse images outside the documented ranges: uint8, or float/int in pixel units [0, 255].
    Float images whose maximum is <= 1 look like [0, 1] images (torchvision's ToTensor): refused, as
    the net would see a nearly black picture and answer with confident garbage."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{what}: images must be uint8 or float pixel values, got dtype {x.dtype}")
    if x.size == 0:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what}: images contain NaN or Inf")
    if lo < 0 or hi > 255:
        raise ValueError(f"{what}: pixel values must be in [0, 255], got [{lo:g}, {hi:g}] "
                         f"(already normalised inputs? pass preprocess=False)")
    if x.dtype.kind == "f" and hi <= 1.0:
        raise ValueError(f"{what}: float images in [0, 1] (max {hi:g}); the net expects pixel units "
                         f"0..255: multiply by 255 (or pass uint8 images)")


def _offsets(h: int, w: int, size: int, views: int):
    cy, cx = (h - size) // 2, (w - size) // 2
    if views == 1:
        return [(cy, cx)]
    return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (cy, cx)]


def test_input(images, mean, size: int, scale: float, views: int = 1) -> np.ndarray:
    """images (N, H, W, C) pixel units -> float32 (views, N, size, size, C) C-contiguous.

    views=1: the centre crop; views=10: the paper's 4 corners + centre, then the same 5 mirrored.
    mean: None, a per-channel (C,) mean or a mean image (H', W', C) cropped like the images (its own
    centre crop when its size differs from the images')."""
    if views not in (1, 10):
        raise ValueError(f"views must be 1 or 10, got {views}")
    x = np.asarray(images)
    n, h, w, c = x.shape
    out = np.empty((views, n, size, size, c), dtype=np.float32)
    m = None if mean is None else np.asarray(mean, dtype=np.float32)
    for v, (y0, x0) in enumerate(_offsets(h, w, size, views) * (2 if views == 10 else 1)):
        out[v] = x[:, y0:y0 + size, x0:x0 + size, :]
        if m is not None:
            if m.ndim == 3:
                same = m.shape[:2] == (h, w)  # else: the mean image's own centre crop
                my, mx = (y0, x0) if same else ((m.shape[0] - size) // 2, (m.shape[1] - size) // 2)
                out[v] -= m[my:my + size, mx:mx + size, :]
            else:
                out[v] -= m
        if v >= 5:
            out[v] = out[v][:, :, ::-1, :]
    out *= np.float32(scale)
    return out
