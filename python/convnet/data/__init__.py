"""Data sets, augmentation and background batch loading for convnet.

Every data set is a pair of splits built by one constructor::

    train, test = builtin(seed=0)                     # synthetic shapes, 32x32, no files
    train, test = cifar10("~/data/cifar-10-batches-py")
    train, test = cifar100("~/data", label="fine")    # or label="coarse"
    train, test = mnist("~/data/fashion-mnist")        # MNIST / Fashion-MNIST IDX files
    train, val = imagenet_folder("~/data/imagenet", size=256)

or by name, the one data-name parser (names.py), which train(), evaluate() and the CLI use:

    train, test, name = open_data("cifar10:~/data/cifar-10-batches-py")

and every split follows the small `Dataset` protocol defined here:

    len(ds)                 number of images
    ds.num_classes          int
    ds.class_names          list[str], index = label
    ds.image_shape          (H, W, 3) of the stored images (uint8, HWC)
    ds.labels               int32 (N,), label of every image
    ds.get(i)               -> (uint8 (H, W, 3), int)
    ds.get_batch(indices)   -> (uint8 (n, H, W, 3), int32 (n,))
    ds.mean                 float32 mean image (H, W, 3) or mean colour (3,) of the TRAINING split,
                            in pixel units [0, 255]
    ds.pca                  (eigvals float32 (3,), eigvecs float32 (3, 3)) of the TRAINING split's
                            RGB covariance, pixel values scaled to [0, 1]; eigvecs[:, i] is the
                            i-th principal direction, eigenvalues in descending order

A test/val split returns its train split's `mean` and `pca`, so both are normalised alike.

`BatchLoader` turns a split into float32 NHWC batches (crop, flip, PCA lighting, mean subtraction,
scale by `PIXEL_SCALE`) in background threads; `augment` holds the array functions it uses.

Only numpy is needed to import this package; Pillow is imported when an image file is decoded.
"""

from __future__ import annotations

import threading

import numpy as np


class BadImageError(Exception):
    """`Dataset.get(i)` could not decode image i. `path` names the file; `index` is i.

    Loaders catch it and replace the sample (see `BatchLoader`); nothing else should.
    """

    def __init__(self, path, index: int, reason: str = ""):
        super().__init__(f"unreadable image {path}" + (f": {reason}" if reason else ""))
        self.path = str(path)
        self.index = int(index)


class Dataset:
    """Base class of one split. Subclasses set `class_names`, `image_shape`, `labels` and define
    `get`; training splits override `_compute_stats`.

    `stats_from`: the train split whose `mean`/`pca` this split reports (None for a train split).
    """

    class_names: list
    image_shape: tuple
    labels: np.ndarray  # int32 (N,)

    def __init__(self, stats_from: "Dataset | None" = None):
        self._stats_from = stats_from
        self._stats = None
        self._stats_lock = threading.Lock()  # two loader threads may ask for the stats at once

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, i: int):
        """Image i and its label: (uint8 (H, W, 3), int). May raise BadImageError."""
        raise NotImplementedError

    def get_batch(self, indices):
        """Images and labels of `indices`: (uint8 (n, H, W, 3), int32 (n,)).

        This default decodes one image at a time; in-memory sets gather in one step.
        """
        indices = np.asarray(indices, dtype=np.int64)
        images = np.empty((len(indices),) + tuple(self.image_shape), dtype=np.uint8)
        for j, i in enumerate(indices):
            images[j], _ = self.get(int(i))
        return images, self.labels[indices]

    @property
    def mean(self) -> np.ndarray:
        """float32 mean image (H, W, 3) or mean colour (3,) of the training split, in [0, 255]."""
        return self._get_stats()[0]

    @property
    def pca(self):
        """(eigvals (3,), eigvecs (3, 3)): PCA of the training split's RGB, pixels in [0, 1]."""
        return self._get_stats()[1:]

    def _get_stats(self):
        if self._stats_from is not None:
            return self._stats_from._get_stats()
        with self._stats_lock:
            if self._stats is None:
                self._stats = self._compute_stats()
            return self._stats

    def _compute_stats(self):
        """-> (mean, eigvals, eigvecs), see `rgb_stats`. Only a training split computes them."""
        raise NotImplementedError(f"{type(self).__name__} has no training statistics")

    def __repr__(self):
        return (f"{type(self).__name__}(n={len(self)}, image_shape={tuple(self.image_shape)}, "
                f"num_classes={self.num_classes})")


class ArrayDataset(Dataset):
    """A split held in memory: images uint8 (N, H, W, 3), labels int (N,).

    Its mean is the mean IMAGE (H, W, 3), computed over all of `images` (for a train split).
    """

    def __init__(self, images, labels, class_names, stats_from: Dataset | None = None):
        super().__init__(stats_from)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        if images.ndim != 4 or images.shape[3] != 3 or len(images) != len(labels):
            raise ValueError(f"ArrayDataset: want images (N, H, W, 3) and labels (N,), "
                             f"got {images.shape} and {labels.shape}")
        self.images = images
        self.labels = labels
        self.class_names = list(class_names)
        self.image_shape = images.shape[1:]

    def get(self, i: int):
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return self.images[indices], self.labels[indices]

    def _compute_stats(self):
        return rgb_stats(self.images[k:k + 1024] for k in range(0, len(self.images), 1024))


def rgb_stats(batches, mean_image: bool = True):
    """Mean and RGB principal components of the images in an iterable of uint8 (n, H, W, 3) batches.

    Returns (mean, eigvals, eigvecs): mean float32 (H, W, 3) if `mean_image` else (3,), in pixel
    units [0, 255]; eigvals float32 (3,) descending and eigvecs float32 (3, 3) (column i = i-th
    component, sign fixed so its largest entry is positive) of the covariance of all pixels'
    RGB values scaled to [0, 1] -- the scale on which the AlexNet paper's lighting std of 0.1 gives
    offsets of a few grey levels. Sums are accumulated in float64 so the result does not depend on
    how the images are batched (beyond rounding).
    """
    count = 0            # images
    image_sum = None     # float64 (H, W, 3)
    outer_sum = np.zeros((3, 3))  # sum over pixels of x x^T, x in [0, 1]
    for batch in batches:
        batch = np.asarray(batch)
        x = batch.astype(np.float64)
        image_sum = x.sum(axis=0) if image_sum is None else image_sum + x.sum(axis=0)
        pixels = x.reshape(-1, 3) / 255.0
        outer_sum += pixels.T @ pixels
        count += len(batch)
    if not count:
        raise ValueError("rgb_stats: no images")
    mean_img = image_sum / count
    mean_rgb = mean_img.reshape(-1, 3).mean(axis=0)
    n_pixels = count * mean_img.shape[0] * mean_img.shape[1]
    mu = mean_rgb / 255.0
    cov = outer_sum / n_pixels - np.outer(mu, mu)
    eigvals, eigvecs = np.linalg.eigh(cov)           # ascending
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    eigvecs = eigvecs * np.sign(eigvecs[np.abs(eigvecs).argmax(axis=0), range(3)])
    mean = mean_img if mean_image else mean_rgb
    return (mean.astype(np.float32), np.maximum(eigvals, 0).astype(np.float32),
            eigvecs.astype(np.float32))


# The submodules import Dataset/ArrayDataset/BadImageError from here, so they come after them.
from . import augment  # noqa: E402
from .builtin import builtin  # noqa: E402
from .cifar import cifar10, cifar100  # noqa: E402
from .imagenet import ImageFolder, imagenet_folder  # noqa: E402
from .mnist import mnist  # noqa: E402
from .loader import PIXEL_SCALE, BatchLoader  # noqa: E402
from .names import folder_image_size, open_data  # noqa: E402

__all__ = [
    "Dataset", "ArrayDataset", "ImageFolder", "BadImageError", "rgb_stats",
    "builtin", "cifar10", "cifar100", "mnist", "imagenet_folder",
    "BatchLoader", "PIXEL_SCALE", "augment", "open_data", "folder_image_size",
]
