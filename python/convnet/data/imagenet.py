"""An ImageNet-style folder of image files, decoded lazily with Pillow.

    root/train/<wnid>/*.JPEG     one folder per class; the sorted folder names are the classes
    root/val/<wnid>/*.JPEG       the same class folders (a subset is fine)

Any extension Pillow can open counts, in any case (.JPEG, .jpg, .png, ...); other files are
ignored. Each image is decoded to RGB and sized as in the AlexNet paper: the shorter side is
resized to `size` (256) with Pillow's bilinear filter -- antialiased when shrinking, since Pillow
widens the filter support with the scale factor -- then the centre size x size square is cut out.
JPEGs are first decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers `size` (libjpeg's
DCT scaling, `Image.draft`), which makes large photos several times cheaper to decode.

A file that fails to decode (truncated, corrupt, not an image) is reported once with
warnings.warn naming its path, remembered, and `get` raises BadImageError for it; BatchLoader
replaces such samples and lists their paths in `loader.skipped`.

The mean is the mean colour (3,) by default (mean_image=True: the mean (size, size, 3) image),
and the PCA of the colours; both come from a fixed sample of at most `stats_samples` training
images, chosen by a seeded generator, so they are the same on every run.
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings

import numpy as np

from . import BadImageError, Dataset, rgb_stats


def _image_extensions() -> set:
    """Lower-case extensions (with the dot) of the formats Pillow can open."""
    from PIL import Image
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def load_image(path, size: int) -> np.ndarray:
    """Decode `path`, resize its shorter side to `size`, cut the centre -> uint8 (size, size, 3).

    Raises whatever Pillow raises for a bad file (OSError, SyntaxError, ValueError, ...).
    """
    from PIL import Image
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG only: decode at a reduced scale, still >= size
        im = im.convert("RGB")         # also forces the full decode, so truncation shows here
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)


class ImageFolder(Dataset):
    """One split of an image folder: `folder`/<class>/<file>, images decoded on demand.

    classes: the class names in label order (the train split's sorted folder names);
    size: side of the stored square images, image_shape = (size, size, 3).
    Attributes: paths (list of str), labels int32 (N,), bad {index: path} of files that failed.
    """

    def __init__(self, folder, classes, size: int = 256, stats_from: Dataset | None = None,
                 mean_image: bool = False, stats_samples: int = 2000):
        super().__init__(stats_from)
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(f"image folder not found: {self.folder}")
        self.class_names = list(classes)
        self.image_shape = (size, size, 3)
        self.size = int(size)
        self.mean_image = mean_image
        self.stats_samples = int(stats_samples)
        self.bad: dict = {}
        index = {c: k for k, c in enumerate(self.class_names)}
        extensions = _image_extensions()
        self.paths, labels = [], []
        for c in sorted(e.name for e in os.scandir(self.folder) if e.is_dir()):
            if c not in index:
                raise ValueError(f"{os.path.join(self.folder, c)}: not a class of the train split")
            files = sorted(e.name for e in os.scandir(os.path.join(self.folder, c)) if e.is_file()
                           and os.path.splitext(e.name)[1].lower() in extensions)
            self.paths += [os.path.join(self.folder, c, f) for f in files]
            labels += [index[c]] * len(files)
        if not self.paths:
            raise FileNotFoundError(f"no images in {self.folder}/<class>/")
        self.labels = np.asarray(labels, dtype=np.int32)

    def get(self, i: int):
        """(uint8 (size, size, 3), label). Raises BadImageError if the file cannot be decoded."""
        i = int(i)
        if i in self.bad:
            raise BadImageError(self.bad[i], i)
        path = self.paths[i]
        from PIL import Image
        try:
            image = load_image(path, self.size)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            # What Pillow raises for truncated, corrupt or non-image files (OSError covers
            # UnidentifiedImageError and "image file is truncated").
            self._mark_bad(i, e)
            raise BadImageError(path, i, str(e)) from e
        return image, int(self.labels[i])

    def _mark_bad(self, i: int, err: Exception):
        if i not in self.bad:
            self.bad[i] = self.paths[i]
            warnings.warn(f"skipping unreadable image {self.paths[i]}: {err}", RuntimeWarning,
                          stacklevel=3)

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        for i in indices:  # known-bad files fail before any decoding work is done
            if int(i) in self.bad:
                raise BadImageError(self.bad[int(i)], int(i))
        return super().get_batch(indices)

    def _compute_stats(self):
        # A fixed sample (same on every run) keeps this to seconds on 1.2M images.
        n = min(self.stats_samples, len(self))
        rng = np.random.Generator(np.random.PCG64(0))
        sample = np.sort(rng.choice(len(self), n, replace=False))

        def load(i):
            try:
                return self.get(i)[0][None]
            except BadImageError:
                return None  # already warned; leave it out of the statistics

        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = (x for x in pool.map(load, sample) if x is not None)
            return rgb_stats(images, mean_image=self.mean_image)


def imagenet_folder(path, size: int = 256, mean_image: bool = False, stats_samples: int = 2000):
    """ImageNet-style folder -> (train, val) ImageFolders of uint8 (size, size, 3) images.

    path: folder holding train/ and val/, each with one sub-folder per class (wnid). Classes are
    the sorted sub-folders of train/. `train.mean` is the mean colour (3,) (or the mean image if
    `mean_image`) of a sample of `stats_samples` training images; val shares train's statistics.
    """
    root = os.path.expanduser(os.fspath(path))
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"ImageNet folder: {os.path.join(root, split)} not found "
                                    f"(expected {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/)")
    train_dir = os.path.join(root, "train")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"ImageNet folder: no class folders in {train_dir}")
    train = ImageFolder(train_dir, classes, size, mean_image=mean_image,
                        stats_samples=stats_samples)
    val = ImageFolder(os.path.join(root, "val"), classes, size, stats_from=train)
    return train, val
