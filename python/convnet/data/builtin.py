"""The built-in data set: synthetic 32x32 colour images of 10 shapes and textures.

It needs no download and no files: `builtin(seed)` draws every image from numpy's PCG64 generator,
so the same seed gives byte-identical arrays on any machine: pixels are computed in float64 with
+, -, *, /, sqrt and floor only, which IEEE 754 rounds the same everywhere (no sin/cos: rotations
are random unit vectors), then rounded to uint8. Generating the default 10,000 + 2,000 images
takes 1-2 s.

Each image is one object on a background:

    background  a random colour plus a random linear colour ramp (up to about +-40 levels),
                and Gaussian pixel noise of a random std in 4..16 levels over the whole image
    object      one of the classes below in a random colour that differs from the background by
                64..192 levels (mod 256) in every channel, darker or lighter, at
                a random position and scale (radius 6.5..11 px); shapes are rotated by a random
                angle, textures fill a random square or round patch and keep their direction
                within +-10 degrees (the direction is the class); texture period 4..7 px,
                random phase

    0 disk            1 ring              2 square outline    3 triangle          4 cross
    5 horiz. stripes  6 vert. stripes     7 diag. stripes     8 checkerboard      9 dots
    (both diagonals)

Because colour, position and phase are random, no pixel template separates the classes, so a
linear classifier does poorly, while a small convnet learns the local edge patterns easily.
Measured on seed 0 (10,000 train / 2,000 test images, inputs (pixel - mean image) / 64):

    linear softmax regression on raw pixels, NumPy, 30 epochs of SGD (momentum 0.9, batch 100,
    cosine decay), best over lr 1e-4..1e-2 x weight decay 0..0.1, also on z-scored pixels:
                                                            best test accuracy 22.7 %
    small convnet, PyTorch CPU: conv5x5 32 pad 2 - relu - maxpool 3/2 - conv5x5 64 pad 2 - relu -
    maxpool 3/2 - fc 256 - relu - dropout 0.5 - fc 10, default init, SGD lr 0.01 momentum 0.9
    weight decay 5e-4, batch 128, BatchLoader(train=True, crop=28) (random crops, flips,
    lighting 0.1), 10 epochs:                               test accuracy 98.5 % (94.6 % after
                                                            3 epochs; seed 1: 99.0 %; whole
                                                            32x32 images, no crop: 99.4 %)
"""

from __future__ import annotations

import numpy as np

from . import ArrayDataset

CLASS_NAMES = [
    "disk", "ring", "square outline", "triangle", "cross",
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dots",
]
SIZE = 32  # images are SIZE x SIZE x 3


def builtin(seed: int = 0, n_train: int = 10000, n_test: int = 2000):
    """The built-in data set -> (train, test), two ArrayDatasets of uint8 (N, 32, 32, 3) images.

    Both splits have every class equally often (up to one image when N is not a multiple of 10).
    Train and test come from independent streams of `seed`, so the test set does not change with
    `n_train`. `train.mean` is the mean image (32, 32, 3); the test split shares it.
    """
    train_x, train_y = generate(n_train, np.random.SeedSequence([seed, 0]))
    test_x, test_y = generate(n_test, np.random.SeedSequence([seed, 1]))
    train = ArrayDataset(train_x, train_y, CLASS_NAMES)
    return train, ArrayDataset(test_x, test_y, CLASS_NAMES, stats_from=train)


def generate(n: int, seed, chunk: int = 2000):
    """n images from `seed` (int or SeedSequence) -> (uint8 (n, 32, 32, 3), int32 (n,)).

    Images are drawn `chunk` at a time to bound memory (a few float64 (chunk, 32, 32) planes);
    the chunk size is part of the stream, so keep it fixed for reproducibility.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    k = len(CLASS_NAMES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int32)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        images[start:stop] = _render(labels[start:stop], rng)
    return images, labels


def _unit(x, y):
    """(x, y) scaled to unit length: a rotation (cos, sin) without calling cos/sin."""
    r = np.sqrt(x * x + y * y)
    return x / r, y / r


def _soft(sd):
    """Coverage in [0, 1] of a pixel whose centre is at signed distance sd (pixels, < 0 inside)."""
    return np.clip(0.5 - sd, 0.0, 1.0)


def _band(t, period):
    """Signed distance to the nearest stripe of a square wave with duty 0.5.

    t: coordinate in pixels; stripes of width period/2 centred on t = period * (m + 1/2).
    """
    f = t / period
    return (np.abs(f - np.floor(f) - 0.5) - 0.25) * period


def _render(labels, rng):
    """Images for `labels` (n,) -> uint8 (n, 32, 32, 3). All parameters are drawn per image."""
    n = len(labels)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5          # pixel centres, (32, 32)

    # Object placement. Shapes get any rotation; textures a small tilt of their class's direction.
    cx = rng.uniform(10, 22, n)[:, None, None]
    cy = rng.uniform(10, 22, n)[:, None, None]
    r = rng.uniform(6.5, 11.0, n)[:, None, None]     # shape radius / patch half-size, pixels
    c, s = _unit(*rng.normal(size=(2, n)))
    # Textures: rotate their class's direction (horizontal, vertical, either diagonal) by the tilt.
    tilt_c, tilt_s = _unit(np.ones(n), rng.uniform(-0.18, 0.18, n))   # |tilt| <= ~10 degrees
    diag_sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    d = np.sqrt(0.5)
    bc = np.select([labels == 5, labels == 6], [1.0, 0.0], d)
    bs = np.select([labels == 5, labels == 6], [0.0, 1.0], d * diag_sign)
    tex = labels >= 5
    c = np.where(tex, bc * tilt_c - bs * tilt_s, c)
    s = np.where(tex, bs * tilt_c + bc * tilt_s, s)
    c, s = c[:, None, None], s[:, None, None]
    dx, dy = xx - cx, yy - cy
    u = dx * c + dy * s                               # object coordinates, (n, 32, 32)
    v = -dx * s + dy * c

    period = rng.uniform(4.0, 7.0, n)[:, None, None]  # texture period, pixels
    ph_u = rng.uniform(0, 1, n)[:, None, None] * period
    ph_v = rng.uniform(0, 1, n)[:, None, None] * period
    width = rng.uniform(2.0, 3.5, n)[:, None, None]   # stroke width of ring / outline / cross arm
    round_patch = rng.random(n)[:, None, None] < 0.5

    cover = np.empty((n, SIZE, SIZE))
    for k in range(len(CLASS_NAMES)):
        m = labels == k
        if not m.any():
            continue
        uk, vk, rk, wk, pk = u[m], v[m], r[m], width[m], period[m]
        if k == 0:    # disk
            sd = np.sqrt(uk * uk + vk * vk) - rk
        elif k == 1:  # ring
            sd = np.abs(np.sqrt(uk * uk + vk * vk) - rk) - wk / 2
        elif k == 2:  # square outline (Chebyshev distance is exact along the edges)
            sd = np.abs(np.maximum(np.abs(uk), np.abs(vk)) - rk) - wk / 2
        elif k == 3:  # equilateral triangle, circumradius rk: max of three half-planes
            sin60 = np.sqrt(0.75)
            sd = np.maximum(np.maximum(-vk, sin60 * uk + 0.5 * vk),
                            -sin60 * uk + 0.5 * vk) - rk / 2
        elif k == 4:  # cross: union of two bars
            sd = np.minimum(np.maximum(np.abs(uk) - rk, np.abs(vk) - wk / 2),
                            np.maximum(np.abs(uk) - wk / 2, np.abs(vk) - rk))
        else:         # textures inside a square or round patch of half-size rk + 3
            if k in (5, 6, 7):      # stripes
                tex = _soft(_band(vk + ph_v[m], pk))
            elif k == 8:            # checkerboard: XOR of two stripe sets
                a, b = _soft(_band(uk + ph_u[m], pk)), _soft(_band(vk + ph_v[m], pk))
                tex = a + b - 2 * a * b
            else:                   # dots on a square lattice
                fu = (uk + ph_u[m]) / pk
                fv = (vk + ph_v[m]) / pk
                du = (fu - np.floor(fu) - 0.5) * pk
                dv = (fv - np.floor(fv) - 0.5) * pk
                tex = _soft(np.sqrt(du * du + dv * dv) - 0.22 * pk)
            pdx, pdy = dx[m], dy[m]
            patch_sd = np.where(round_patch[m], np.sqrt(pdx * pdx + pdy * pdy),
                                np.maximum(np.abs(pdx), np.abs(pdy))) - (rk + 3)
            cover[m] = _soft(patch_sd) * tex
            continue
        cover[m] = _soft(sd)

    # Colours: background colour + gradient; foreground >= 64 levels away in every channel.
    bg = rng.uniform(0, 255, (n, 1, 1, 3))
    fg = np.mod(bg + rng.uniform(64, 192, (n, 1, 1, 3)), 256.0)
    gx, gy = _unit(*rng.normal(size=(2, n)))
    ramp = ((xx - 16) * gx[:, None, None] + (yy - 16) * gy[:, None, None]) / 16  # in [-1.4, 1.4]
    bg = bg + ramp[..., None] * rng.uniform(-30, 30, (n, 1, 1, 3))
    cover = cover[..., None]
    img = bg * (1 - cover) + fg * cover
    img += rng.normal(size=img.shape) * rng.uniform(4, 16, (n, 1, 1, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
