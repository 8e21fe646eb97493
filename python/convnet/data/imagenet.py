"""An ImageNet-style folder of image files, decoded lazily with Pillow.

    root/train/<wnid>/*.JPEG     one folder per class; the sorted folder names are the classes
    root/val/<wnid>/*.JPEG       the same class folders (a subset is fine)

Any extension Pillow can open counts, in any case (.JPEG, .jpg, .png, ...); other files are
ignored. Each image is decoded to RGB and sized as in the AlexNet paper: the shorter side is
resized to `size` (256) with Pillow's bilinear filter -- antialiased when shrinking, since Pillow
widens the filter support with the scale factor -- then the centre size x size square is cut out.
JPEGs are first decoded at the smallest 1/2, 1/4 or 1/8 scale that still covers `size` (libjpeg's
DCT scaling, `Image.draft`), which makes large photos several times cheaper to decode.

Real folders hold bad entries, and none of them stops a scan or a run:
- found by the scan (a symlink loop, a dangling link, a folder or an empty file with an image
  extension, an unreadable class folder): left out of the split, listed with its reason in
  `skipped`, and summarised in one warning at the end of the scan; len() counts only the rest;
- found by decoding (truncated, corrupt, not an image, more than MAX_PIXELS pixels): reported once
  with warnings.warn naming its path and reason, remembered in `bad` and `skipped`, and `get`
  raises BadImageError for it; BatchLoader replaces such samples and lists their paths in
  `loader.skipped`, evaluate() leaves them out of its counts.
Decoding is bounded: at most MAX_PIXELS pixels after the JPEG draft (decompression bombs fail
before any pixel is decoded), and the resize reads only the centre square it keeps (a 1x5000 PNG
resized "shorter side to 256" would otherwise be a 256x1,280,000 image). 16-bit grey PNGs are
scaled to 8 bits (value / 257), not clipped to white.

The mean is the mean colour (3,) by default (mean_image=True: the mean (size, size, 3) image),
and the PCA of the colours; both come from a fixed sample of at most `stats_samples` training
images, chosen by a seeded generator, so they are the same on every run.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat
import warnings

import numpy as np

from . import BadImageError, Dataset, rgb_stats


def _image_extensions() -> set:
    """Lower-case extensions (with the dot) of the formats Pillow can open."""
    from PIL import Image
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


MAX_PIXELS = 1 << 26  # 67 M pixels (200 MB as RGB) a decode may take; ImageNet's largest is ~12 M

_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey PNGs open as one of these


def _to_rgb(im):
    """8-bit RGB of an opened image (forces the decode). 16-bit grey is scaled by 1/257 (65535 ->
    255), where Pillow's convert would clip every value above 255 to white."""
    from PIL import Image
    if im.mode in _WIDE_GREY:
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return im.convert("RGB")


def load_image(path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode `path`, resize its shorter side to `size`, cut the centre -> uint8 (size, size, 3).

    Raises ValueError for an image of more than `max_pixels` pixels (after the JPEG draft), and
    whatever Pillow raises for a bad file (OSError, SyntaxError, ValueError, ...).
    """
    from PIL import Image
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG only: decode at a reduced scale, still >= size
        w, h = im.size                 # from the header: nothing decoded yet
        if w * h > max_pixels or w < 1 or h < 1:
            raise ValueError(f"{w}x{h} image: {w * h} pixels, more than the {max_pixels} a decode may take")
        im = _to_rgb(im)               # also forces the full decode, so truncation shows here
    # "Shorter side to size, then the centre size x size": resampling only the centre's box of the
    # source gives the same pixels (the same filter centres and support) without the full resize.
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    im = im.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(im, dtype=np.uint8)


def _entries(folder, want, skipped):
    """Sorted names in `folder` for which want(entry) holds. Entries whose stat fails (a symlink
    loop, a dangling link) and a folder that cannot be listed go to `skipped` as (path, reason)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        skipped.append((folder, f"cannot list the folder: {e.strerror or e}"))
        return []
    names = []
    for e in entries:
        try:
            if want(e):
                names.append(e.name)
        except OSError as err:
            skipped.append((e.path, err.strerror or str(err)))
    return sorted(names)


def _class_dirs(folder, skipped):
    def is_class(e):
        if e.is_symlink() and not os.path.exists(e.path):
            os.stat(e.path)  # raises the reason (ELOOP, ENOENT) for a broken link
        return e.is_dir()
    return _entries(folder, is_class, skipped)


def _summarise(folder, skipped, kept):
    if skipped:
        shown = "; ".join(f"{p} ({why})" for p, why in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"{folder}: skipped {len(skipped)} bad entries, kept {kept} images: {shown}{more}",
                      RuntimeWarning, stacklevel=3)


class ImageFolder(Dataset):
    """One split of an image folder: `folder`/<class>/<file>, images decoded on demand.

    classes: the class names in label order (the train split's sorted folder names);
    size: side of the stored square images, image_shape = (size, size, 3).
    Attributes: paths (list of str), labels int32 (N,), bad {index: path} of files that failed to
    decode, skipped [(path, reason)] of every entry left out or failed (scan, then decode order).
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
        self.skipped: list = []
        index = {c: k for k, c in enumerate(self.class_names)}
        extensions = _image_extensions()

        def is_image(e):
            if os.path.splitext(e.name)[1].lower() not in extensions:
                return False               # not an image name (notes.txt): ignored, not skipped
            st = os.stat(e.path)           # follows links: OSError for a loop or a dangling one
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"not a regular file (mode {stat.filemode(st.st_mode)})")
            if st.st_size == 0:
                raise OSError("empty file")
            return True

        self.paths, labels = [], []
        for c in _class_dirs(self.folder, self.skipped):
            if c not in index:
                raise ValueError(f"{os.path.join(self.folder, c)}: not a class of the train split")
            files = _entries(os.path.join(self.folder, c), is_image, self.skipped)
            self.paths += [os.path.join(self.folder, c, f) for f in files]
            labels += [index[c]] * len(files)
        if not self.paths:
            raise FileNotFoundError(f"no images in {self.folder}/<class>/"
                                    + (f" ({len(self.skipped)} bad entries skipped)" if self.skipped else ""))
        self.labels = np.asarray(labels, dtype=np.int32)
        _summarise(self.folder, self.skipped, len(self.paths))

    def get(self, i: int):
        """(uint8 (size, size, 3), label). Raises BadImageError if the file cannot be decoded."""
        i = int(i)
        if i in self.bad:
            raise BadImageError(self.bad[i], i)
        path = self.paths[i]
        from PIL import Image
        try:
            image = load_image(path, self.size)
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as e:
            # What Pillow raises for truncated, corrupt, non-image or too large files (OSError
            # covers UnidentifiedImageError and "image file is truncated").
            self._mark_bad(i, e)
            raise BadImageError(path, i, str(e)) from e
        return image, int(self.labels[i])

    def _mark_bad(self, i: int, err: Exception):
        if i not in self.bad:
            self.bad[i] = self.paths[i]
            self.skipped.append((self.paths[i], str(err)))
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
    classes = _class_dirs(train_dir, [])  # ImageFolder(train_dir) lists the bad entries again
    if not classes:
        raise FileNotFoundError(f"ImageNet folder: no class folders in {train_dir}")
    train = ImageFolder(train_dir, classes, size, mean_image=mean_image,
                        stats_samples=stats_samples)
    val = ImageFolder(os.path.join(root, "val"), classes, size, stats_from=train)
    return train, val
