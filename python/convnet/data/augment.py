"""Augmentation and normalisation of NHWC image batches, vectorised with numpy.

The AlexNet paper's recipe, as `BatchLoader` applies it:

    train   random crop (227 of 256; 24..28 of 32 for the built-in set) + random horizontal flip,
            PCA colour lighting, mean subtraction, scale
    test    centre crop (or the 10 views: 4 corners + centre, and their mirror images), mean
            subtraction, scale

Images are uint8 or float arrays (N, H, W, C); crops come out (N, size, size, C). Per-pixel work
is whole-array numpy; a crop is one block copy per image. Random choices come from a numpy
Generator passed in, so a batch's augmentation is a function of that generator. Every function
returns a new array and leaves its input alone.
"""

from __future__ import annotations

import numpy as np


def crop(images, ys, xs, size: int, flips=None):
    """Crop image j at rows ys[j]:ys[j]+size, columns xs[j]:xs[j]+size; mirror it if flips[j].

    images: (N, H, W, C), or one image (H, W, C) used for every crop (e.g. a mean image);
    ys, xs: int (N,) top-left corners; flips: bool (N,) or None. Returns (N, size, size, C), the
    dtype of `images`.
    """
    ys = np.asarray(ys, dtype=np.intp)
    xs = np.asarray(xs, dtype=np.intp)
    h, w = images.shape[-3], images.shape[-2]
    if size > h or size > w or (ys < 0).any() or (xs < 0).any() \
            or (ys + size > h).any() or (xs + size > w).any():
        raise ValueError(f"crop: {size}x{size} at offsets up to ({ys.max()}, {xs.max()}) "
                         f"does not fit images of {h}x{w}")
    flips = np.zeros(len(ys), dtype=bool) if flips is None else np.asarray(flips, dtype=bool)
    out = np.empty((len(ys), size, size, images.shape[-1]), dtype=images.dtype)
    # One strided block copy per image. A single fancy-indexing gather does the same without the
    # Python loop, but measured 4x slower for 128 crops of 227 from 256 (and no faster at 32x32).
    for j, (y, x, f) in enumerate(zip(ys, xs, flips, strict=True)):
        src = images if images.ndim == 3 else images[j]
        window = src[y:y + size, x:x + size]
        out[j] = window[:, ::-1] if f else window
    return out


def random_crop_flip(images, size: int, rng: np.random.Generator, flip: bool = True):
    """Random size x size crop of each image, mirrored with probability 1/2 when `flip`.

    images (N, H, W, C) -> (crops (N, size, size, C), (ys, xs, flips)); the offsets and flips are
    returned so a mean image can be cropped the same way (`crop(mean, ys, xs, size, flips)`).
    Draws, in this order: ys, xs, then flips (only when `flip`).
    """
    n, h, w = images.shape[:3]
    ys = rng.integers(0, h - size + 1, n)
    xs = rng.integers(0, w - size + 1, n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    return crop(images, ys, xs, size, flips), (ys, xs, flips)


def center_offsets(h: int, w: int, size: int):
    """Top-left (y, x) of the centre size x size crop of an h x w image."""
    return (h - size) // 2, (w - size) // 2


def center_crop(images, size: int):
    """Centre size x size crop: (N, H, W, C) -> (N, size, size, C); (H, W, C) -> (size, size, C)."""
    y, x = center_offsets(images.shape[-3], images.shape[-2], size)
    return images[..., y:y + size, x:x + size, :].copy()


def ten_views(images, size: int):
    """The paper's 10 test views: (N, H, W, C) -> (10, N, size, size, C).

    Views 0..4 are the top-left, top-right, bottom-left, bottom-right and centre crops; view 5 + i
    is view i mirrored left-right. Average the network's softmax over the 10 views.
    """
    h, w = images.shape[1:3]
    cy, cx = center_offsets(h, w, size)
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (cy, cx)]
    views = [images[:, y:y + size, x:x + size, :] for y, x in corners]
    views += [v[:, :, ::-1, :] for v in views]
    return np.stack(views)


def lighting_offsets(n: int, eigvals, eigvecs, rng: np.random.Generator, std: float = 0.1,
                     pixel_range: float = 255.0):
    """The paper's PCA colour offsets for n images -> float32 (n, 3), in pixel units.

    offset_j = pixel_range * sum_i alpha_ji * eigvals[i] * eigvecs[:, i],  alpha_ji ~ N(0, std),
    one alpha per image and component per call. eigvals/eigvecs are those of `Dataset.pca`,
    computed on pixels scaled to [0, 1], hence `pixel_range` to return to [0, 255] units.
    """
    alpha = rng.normal(0.0, std, size=(n, 3))
    offsets = (alpha * np.asarray(eigvals)) @ np.asarray(eigvecs, dtype=np.float64).T
    return (pixel_range * offsets).astype(np.float32)


def lighting(images, eigvals, eigvecs, rng: np.random.Generator, std: float = 0.1,
             pixel_range: float = 255.0):
    """images (N, H, W, 3) in [0, pixel_range] units + per-image PCA colour offset -> float32.

    The result is not clipped: the offset is a small shift the network should become invariant to.
    """
    off = lighting_offsets(len(images), eigvals, eigvecs, rng, std, pixel_range)
    return images.astype(np.float32) + off[:, None, None, :]


def normalize(images, mean, scale: float, offsets=None):
    """(images - mean + offsets) * scale as float32, C-contiguous.

    images: (N, h, w, 3) uint8 or float, pixel units; mean: float (3,), (h, w, 3) or already cropped
    (N, h, w, 3); offsets: per-image colour shift (N, 3) (see `lighting_offsets`) or None.
    """
    x = np.subtract(images, np.asarray(mean, dtype=np.float32), dtype=np.float32)  # one pass
    if offsets is not None:
        x += np.asarray(offsets, dtype=np.float32)[:, None, None, :]
    x *= np.float32(scale)
    return x
