"""`convnet prepare`: an ImageNet-style folder pre-resized once into a compact file set, and its reader.

    convnet prepare ~/data/imagenet ~/data/imagenet-256        # then --data imagenet:~/data/imagenet-256

Decoding a full-size photo costs far more than training needs: AlexNet reads 256-pixel images
(the paper, cuda-convnet and FFCV all resize the shorter side to 256 once, ahead of training).
`prepare` does that with a process pool and a progress bar, and writes per split:

    <out>/prepared.json        format, version, size, class names, counts, skipped files (path, reason)
    <out>/<split>.jpegs        the images, shorter side `size`, re-encoded as JPEG, one after another
    <out>/<split>.offsets.npy  int64 (n + 1,): image i is bytes [offsets[i], offsets[i+1]) of .jpegs
    <out>/<split>.labels.npy   int32 (n,)

for split in train, val. The folder scan is the image folder's own (imagenet.py), so prepare sees
the same files and classes as `imagenet:<folder>`. A file that cannot be decoded is skipped and
named with the reason (on stderr and in prepared.json); the output order is the scan's order
whatever the number of workers. The files are written under temporary names and renamed when
complete, prepared.json last, so an interrupted run never leaves a set that looks finished.

Decoding uses `simplejpeg` (libjpeg-turbo) where it is installed (`pip install simplejpeg`), Pillow
otherwise; the resize is Pillow's antialiased bilinear filter, as imagenet.py's. `PreparedImages`
reads a split back: images are memory-mapped, decoded on demand (the JPEG decoders release the GIL,
so BatchLoader's threads decode in parallel), and cut to the centre square of side `image_size`
(resized first when that is not the prepared size), the same images an image folder would give.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing
import os
import sys

import numpy as np

from . import BadImageError, Dataset, rgb_stats

__all__ = ["prepare", "is_prepared", "open_prepared", "PreparedImages", "decoder_name"]

MANIFEST = "prepared.json"
FORMAT = "convnet-prepared"
VERSION = 1
SPLITS = ("train", "val")

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes instead
    simplejpeg = None


def decoder_name() -> str:
    """The JPEG decoder this process uses: 'simplejpeg' or 'Pillow'."""
    return "simplejpeg" if simplejpeg is not None else "Pillow"


def _decode(data: bytes, min_side: int) -> np.ndarray:
    """JPEG (or any Pillow format) bytes -> uint8 (H, W, 3), decoded at the smallest DCT scale
    whose shorter side is still >= min_side (JPEG only; other formats at full size)."""
    if simplejpeg is not None and simplejpeg.is_jpeg(data):
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        scale = min_side / min(h, w)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=int(np.ceil(h * scale)),
                                      min_width=int(np.ceil(w * scale)))
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (min_side, min_side))
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _shorter_side_to(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 with its shorter side `size` (Pillow bilinear, antialiased)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    from PIL import Image
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), dtype=np.uint8)


def _encode(image: np.ndarray, quality: int) -> bytes:
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB")
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _prepare_one(job):
    """(path, size, quality) -> (JPEG bytes, None) or (None, reason): run in a worker process."""
    path, size, quality = job
    try:
        with open(path, "rb") as f:
            data = f.read()
        image = _shorter_side_to(_decode(data, size), size)
        return _encode(image, quality), None
    except Exception as e:  # noqa: BLE001 - any decoder failure means: skip this file, say why
        return None, f"{type(e).__name__}: {e}"


def _write_split(out, split, paths, labels, size, quality, workers, progress):
    """Resize and write one split; -> (count written, [(path, reason)] skipped)."""
    from tqdm import tqdm
    jobs = [(p, size, quality) for p in paths]
    tmp = {k: os.path.join(out, f".{split}.{k}.part") for k in ("jpegs", "offsets", "labels")}
    offsets, kept, skipped = [0], [], []
    pool = None
    if workers > 0:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_prepare_one, jobs, chunksize=16)
    else:
        results = map(_prepare_one, jobs)
    try:
        with open(tmp["jpegs"], "wb") as f:
            for k, (data, reason) in enumerate(tqdm(results, total=len(jobs), desc=f"prepare {split}",
                                                   unit="img", disable=not progress, file=sys.stderr)):
                if data is None:
                    skipped.append((paths[k], reason))
                    print(f"convnet prepare: skipping {paths[k]}: {reason}", file=sys.stderr)
                    continue
                f.write(data)
                offsets.append(offsets[-1] + len(data))
                kept.append(labels[k])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not kept:
        raise ValueError(f"convnet prepare: no image of {split}/ could be decoded ({len(skipped)} skipped)")
    with open(tmp["offsets"], "wb") as f:
        np.save(f, np.asarray(offsets, dtype=np.int64))
    with open(tmp["labels"], "wb") as f:
        np.save(f, np.asarray(kept, dtype=np.int32))
    names = {"jpegs": f"{split}.jpegs", "offsets": f"{split}.offsets.npy", "labels": f"{split}.labels.npy"}
    for k, name in names.items():
        os.replace(tmp[k], os.path.join(out, name))
    return len(kept), skipped


def prepare(src, out, size: int = 256, workers: int | None = None, quality: int = 90,
            progress: bool = True) -> dict:
    """Resize the ImageNet-style folder `src` (train/<class>/*, val/<class>/*) to a prepared set in `out`.

    size: the shorter side of every stored image (256: the AlexNet practice); quality: JPEG
    quality of the stored images; workers: processes (default: all cores; 0: this process).
    `out` must not exist or be empty. Returns the manifest (also written to <out>/prepared.json).
    """
    from .imagenet import imagenet_folder
    for name, v, low in (("size", size, 1), ("quality", quality, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"convnet prepare: {name} must be a whole number >= {low}, got {v!r}")
    if quality > 100:
        raise ValueError(f"convnet prepare: quality must be <= 100, got {quality}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"convnet prepare: workers must be >= 0, got {workers}")
    src = os.path.abspath(os.path.expanduser(os.fspath(src)))
    out = os.path.abspath(os.path.expanduser(os.fspath(out)))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"convnet prepare: {out} exists and is not an empty folder; "
                              f"choose a new output folder")
    if os.path.commonpath([src, out]) == src:
        raise ValueError(f"convnet prepare: the output {out} is inside the source folder {src}")
    train, val = imagenet_folder(src, size=size)  # the scan only; nothing is decoded here
    os.makedirs(out, exist_ok=True)
    manifest = dict(format=FORMAT, version=VERSION, size=size, quality=quality, source=src,
                    classes=list(train.class_names), decoder=decoder_name(), splits={})
    for split, ds in zip(SPLITS, (train, val)):
        n, skipped = _write_split(out, split, list(ds.paths), ds.labels, size, quality, workers, progress)
        manifest["splits"][split] = dict(n=n, skipped=[list(s) for s in skipped])
    tmp = os.path.join(out, f".{MANIFEST}.part")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, MANIFEST))
    return manifest


def is_prepared(path) -> bool:
    """True if `path` is a folder written by `prepare` (it holds prepared.json)."""
    return os.path.isfile(os.path.join(os.path.expanduser(os.fspath(path)), MANIFEST))


def _manifest(root: str) -> dict:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable prepared-set manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} version {VERSION} manifest "
                         f"(format {m.get('format') if isinstance(m, dict) else None!r})")
    return m


class PreparedImages(Dataset):
    """One split of a prepared set: uint8 (image_size, image_size, 3) centre squares, decoded on demand.

    root: the folder `prepare` wrote; split: "train" or "val"; image_size: the side of the images
    `get` returns (default: the prepared size). The mean is the mean colour (3,) (or the mean
    image if `mean_image`) and the PCA of a fixed seeded sample of `stats_samples` images.
    """

    def __init__(self, root, split: str, image_size: int | None = None, stats_from: Dataset | None = None,
                 mean_image: bool = False, stats_samples: int = 2000):
        super().__init__(stats_from)
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        m = _manifest(self.root)
        if split not in m["splits"]:
            raise ValueError(f"{self.root}: no split {split!r} (has {sorted(m['splits'])})")
        self.split = split
        self.prepared_size = int(m["size"])
        self.size = int(image_size or self.prepared_size)
        if self.size < 1:
            raise ValueError(f"PreparedImages: image_size must be >= 1, got {image_size!r}")
        self.class_names = list(m["classes"])
        self.image_shape = (self.size, self.size, 3)
        self.mean_image = mean_image
        self.stats_samples = int(stats_samples)
        self.skipped = [tuple(s) for s in m["splits"][split]["skipped"]]
        base = os.path.join(self.root, split)
        self.offsets = np.load(base + ".offsets.npy")
        self.labels = np.load(base + ".labels.npy")
        n = int(m["splits"][split]["n"])
        nbytes = os.path.getsize(base + ".jpegs")
        if len(self.labels) != n or len(self.offsets) != n + 1 or int(self.offsets[-1]) != nbytes:
            raise ValueError(f"{base}.*: the files do not match the manifest ({n} images; "
                             f"{len(self.labels)} labels, {len(self.offsets) - 1} offsets, "
                             f"{nbytes} bytes of images where the offsets say {int(self.offsets[-1])})")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"{base}.labels.npy: labels outside 0..{len(self.class_names) - 1}")
        self._jpegs = np.memmap(base + ".jpegs", dtype=np.uint8, mode="r") if nbytes else np.zeros(0, np.uint8)

    def get(self, i: int):
        """(uint8 (size, size, 3), label). Raises BadImageError if the stored image cannot be decoded."""
        i = int(i)
        data = self._jpegs[self.offsets[i]:self.offsets[i + 1]].tobytes()
        try:
            image = _shorter_side_to(_decode(data, self.size), self.size)
        except Exception as e:  # noqa: BLE001 - a damaged set: the loader replaces the sample
            raise BadImageError(f"{self.root}/{self.split}.jpegs[{i}]", i, str(e)) from e
        h, w = image.shape[:2]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return image[top:top + self.size, left:left + self.size], int(self.labels[i])

    def _compute_stats(self):
        n = min(self.stats_samples, len(self))
        sample = np.sort(np.random.Generator(np.random.PCG64(0)).choice(len(self), n, replace=False))
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = (x[0][None] for x in pool.map(self.get, sample))
            return rgb_stats(images, mean_image=self.mean_image)


def open_prepared(path, image_size: int | None = None, mean_image: bool = False, stats_samples: int = 2000):
    """A prepared set -> (train, val) PreparedImages of uint8 (image_size, image_size, 3)."""
    train = PreparedImages(path, "train", image_size, mean_image=mean_image, stats_samples=stats_samples)
    val = PreparedImages(path, "val", image_size, stats_from=train)
    return train, val
