"""MNIST and Fashion-MNIST from their IDX files (nothing is downloaded).

    <path>/train-images-idx3-ubyte[.gz]   uint8 (60000, 28, 28)
    <path>/train-labels-idx1-ubyte[.gz]   uint8 (60000,)
    <path>/t10k-images-idx3-ubyte[.gz]    uint8 (10000, 28, 28)
    <path>/t10k-labels-idx1-ubyte[.gz]    uint8 (10000,)

The files may be gzipped or not, and may sit in <path> itself or where torchvision keeps them
(<path>/raw, <path>/MNIST/raw, <path>/FashionMNIST/raw); "train-images.idx3-ubyte" (a dot for the
dash, as some mirrors name them) is found too.

IDX format (LeCun's): a big-endian header -- two zero bytes, a type byte (0x08 = uint8), the number
of dimensions d, then d uint32 sizes -- followed by the values in row-major order. Every header is
checked against what MNIST is (type, rank, sizes, the file's length, label range) and a mismatch
raises ValueError naming the file.

Images are grey; convnet's data sets are RGB (H, W, 3), so the grey plane is repeated into the
three channels. Each image is padded by `pad` (2) black pixels on every side, to 32x32, as LeNet-5
read MNIST: the default net's 28x28 training crops then shift the digit by up to 2 pixels (the
usual translation augmentation), and its centre crop is exactly the original image.

Class names: the digits "0".."9", or Fashion-MNIST's ten names when the folder's path contains
"fashion" (the files themselves do not say which set they hold), or `class_names` if given.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from . import ArrayDataset

__all__ = ["mnist", "read_idx", "DIGITS", "FASHION_CLASSES"]

DIGITS = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = {"train": "train", "test": "t10k"}
SUBFOLDERS = ("", "raw", os.path.join("MNIST", "raw"), os.path.join("FashionMNIST", "raw"))


def read_idx(path) -> np.ndarray:
    """An IDX file of uint8 values (gzipped or not) -> uint8 array of the shape its header gives.

    Raises ValueError naming the file for a bad header, a type other than uint8, or a length that
    does not match the header."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a corrupt gzip stream raises BadGzipFile (OSError) or EOFError
        raise ValueError(f"{path}: cannot be read as an IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (the first two bytes must be zero, got {raw[:4]!r})")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: IDX type 0x{dtype_code:02x}, want 0x08 (unsigned bytes)")
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    want = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != want:
        raise ValueError(f"{path}: the header says shape {shape} ({want} bytes with the header), "
                         f"the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: str, split: str, kind: str) -> str:
    """The file of `split` ("train"/"test") and `kind` ("images"/"labels") under root."""
    stem = SPLITS[split]
    rank = 3 if kind == "images" else 1
    names = [f"{stem}-{kind}-idx{rank}-ubyte", f"{stem}-{kind}.idx{rank}-ubyte"]
    for sub in SUBFOLDERS:
        for name in names:
            for ext in ("", ".gz"):  # an unpacked file wins over its archive
                p = os.path.join(root, sub, name + ext)
                if os.path.isfile(p):
                    return p
    raise FileNotFoundError(f"MNIST: no {names[0]}[.gz] in {root} (looked in "
                            + ", ".join(os.path.join(root, s) for s in SUBFOLDERS) + ")")


def _split(root: str, split: str, pad: int):
    """-> (uint8 (n, 28 + 2 pad, 28 + 2 pad, 3), uint8 (n,)) of one split, checked."""
    images_path, labels_path = _find(root, split, "images"), _find(root, split, "labels")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: want images (n, rows, cols), the header says shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: want labels (n,), the header says shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images in {images_path} but {len(labels)} labels "
                         f"in {labels_path}")
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    if pad:
        images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(images[..., None], 3, axis=3), labels


def mnist(path, pad: int = 2, class_names=None):
    """MNIST or Fashion-MNIST IDX files -> (train, test) ArrayDatasets of uint8 (28+2pad, 28+2pad, 3).

    path: the folder holding the four files (see the module docstring for the names and places).
    pad: black pixels added on each side (2: 32x32 images, see above). class_names: ten names, by
    default the digits, or Fashion-MNIST's names when `path` contains "fashion".
    The train split's mean is its mean image; the test split shares the train split's statistics.
    """
    root = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"MNIST folder not found: {root}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"mnist: pad must be a whole number >= 0, got {pad!r}")
    if class_names is None:
        class_names = FASHION_CLASSES if "fashion" in os.path.abspath(root).lower() else DIGITS
    class_names = list(class_names)
    if len(class_names) != 10:
        raise ValueError(f"mnist: want 10 class names, got {len(class_names)}")
    train_images, train_labels = _split(root, "train", pad)
    test_images, test_labels = _split(root, "test", pad)
    if test_images.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"MNIST {root}: train images are {train_images.shape[1:3]} (padded), "
                         f"test images {test_images.shape[1:3]}; both splits must have one size")
    train = ArrayDataset(train_images, train_labels, class_names)
    test = ArrayDataset(test_images, test_labels, class_names, stats_from=train)
    return train, test
