"""Data names, the one parser: "builtin", "cifar10:<path>", "cifar100:<path>", "mnist:<path>",
"imagenet:<path>" (an image folder, or a set made from one by `convnet prepare`, data/prepare.py).

train(), evaluate() and the CLI all open data through `open_data`, and a checkpoint stores the
name it returns (with the path made absolute), so `eval --checkpoint` finds the data from any folder.

Image folders have no size of their own: `open_data` resizes their images (shorter side, then the
centre square, see imagenet.py) to `image_size`, by default `folder_image_size(input_size)` of the
net that will read them: 256 for the AlexNets (227 or 224 crops, the paper's practice), and
input x 8/7 for a smaller net (28 -> 32, the built-in set's crop ratio), so a random crop covers
about 3/4 of each side of the image rather than a 28x28 corner of a 256x256 picture.
"""
from __future__ import annotations

import math
import os

__all__ = ["open_data", "folder_image_size", "KNOWN"]

KNOWN = ("'builtin', 'cifar10:<path>', 'cifar100:<path>', 'mnist:<path>', 'imagenet:<path>', "
         "or a (train, test) pair of datasets")
FOLDER_SIZE_ALEXNET = 256   # the paper: shorter side 256, then 224/227 crops


def folder_image_size(input_size: int | None) -> int:
    """The side an image folder is resized to for a net whose input side is `input_size`."""
    if input_size is None or input_size >= 224:
        return max(FOLDER_SIZE_ALEXNET, input_size or 0)
    return math.ceil(input_size * 8 / 7)


def open_data(data, input_size: int | None = None, image_size: int | None = None):
    """-> (train split, test split, name) for a data name or a (train, test) pair (name None).

    input_size: the input side of the net that reads the data (sizes image folders, see above);
    image_size: the folder's image side, overriding that. Raises ValueError for an unknown or
    malformed name, FileNotFoundError naming the absolute path for a missing folder."""
    from . import builtin, cifar10, cifar100, imagenet_folder, mnist
    from .prepare import is_prepared, open_prepared
    if data is None:
        data = "builtin"
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], None
    if not isinstance(data, str):
        raise ValueError(f"data: want a name like {KNOWN}; got {data!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise ValueError(f"image_size must be a whole number >= 1, got {image_size!r}")
    kind, _, path = data.partition(":")
    kind = kind.lower()
    if image_size is not None and kind != "imagenet":
        raise ValueError(f"image_size={image_size}: only image folders (imagenet:<path>) are resized; "
                         f"{data!r} has images of a fixed size")
    if kind == "builtin":
        try:
            seed = int(path) if path else 0
        except ValueError:
            raise ValueError(f"data {data!r}: want 'builtin' or 'builtin:<seed>'") from None
        train, test = builtin(seed)
        return train, test, data
    if kind in ("cifar10", "cifar100", "mnist", "imagenet"):
        if not path:
            raise ValueError(f"data {data!r}: give the folder, e.g. '{kind}:/data/{kind}'")
        full = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(full):
            raise FileNotFoundError(f"data folder not found: {full} (from data={data!r})")
        if kind == "imagenet" and is_prepared(full):   # a set written by `convnet prepare`
            train, test = open_prepared(full, image_size=image_size or folder_image_size(input_size))
        elif kind == "imagenet":
            train, test = imagenet_folder(full, size=image_size or folder_image_size(input_size))
        else:
            train, test = {"cifar10": cifar10, "cifar100": cifar100, "mnist": mnist}[kind](full)
        return train, test, f"{kind}:{full}"
    raise ValueError(f"unknown data {data!r}; known: {KNOWN}")
