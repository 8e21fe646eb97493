"""Background batch loading: a Dataset in, float32 NHWC batches out.

`BatchLoader` shuffles (train), gathers a batch, crops/flips/lights it and normalises it in a
thread pool, `prefetch` batches ahead of the consumer, and yields them in order. numpy's copies
and Pillow's decoding release the GIL, so threads overlap the training step without the
pickling and start-up cost of processes.

Determinism: the order of epoch e is a permutation drawn from (seed, e), and batch b's crops, flips,
lighting and bad-image replacements from (seed, e, b), each with its own PCG64 stream. So the same
epoch gives the same batches whatever the number of workers, and a resumed run can replay an epoch.

Pixel scale: a batch is x = (pixel - mean + lighting offset) * scale, pixels in [0, 255], with
`scale = PIXEL_SCALE = 1/64`. Natural images have a per-channel std of about 50-70 grey levels,
so inputs come out with std of about 1, which trains with lr 0.01, momentum 0.9 and the usual
fan-in initialisations; scale=1.0 gives the raw mean-subtracted pixels of the paper and
cuda-convnet (which their std-0.01 Gaussian initialisation was tuned for).
"""

from __future__ import annotations

import collections
import concurrent.futures

import numpy as np

from . import BadImageError
from . import augment

from ..preprocess import PIXEL_SCALE  # noqa: E402  (one constant, shared with the graph's input scale)
MAX_REPLACEMENTS = 100  # bad images in a row before a batch gives up (a folder of bad files)


class BatchLoader:
    """Iterate a Dataset as (x float32 (n, crop, crop, 3) NHWC C-contiguous, y int32 (n,)) batches.

    dataset     a Dataset (see convnet.data)
    batch_size  images per batch; the last batch is smaller unless drop_last
    train       True: shuffle, random crop + flip + PCA lighting; False: dataset order, centre crop
    crop        side of the square crop, or None for the whole image (H, W of the dataset)
    flip        random horizontal mirror (train only)
    lighting    std of the PCA lighting coefficients alpha (paper: 0.1; 0 turns it off; train only)
    seed        seed of every random choice (with the epoch and batch index)
    workers     threads producing batches; 0 produces them in the consumer's thread
    drop_last   drop the last incomplete batch; default: `train`
    prefetch    batches submitted ahead of the one being consumed
    scale       inputs are (pixel - mean) * scale, see the module docstring
    shard       (index, count) or None: yield only rows [n*index//count, n*(index+1)//count) of each
                batch of n (a data-parallel rank's slice, convnet.distributed). Only those images
                are read and decoded, and their crops, flips, lighting and replacements are the ones
                the whole batch would draw (they are drawn for the whole batch, then sliced), so the
                concatenated shards equal the unsharded batch exactly.

    `set_epoch(e)` selects the epoch the next `iter()` produces (or use `loader.epoch(e)`).
    Images that fail to decode (BadImageError) are replaced by a random other image, chosen
    deterministically, and their paths collected in `skipped` (in the order first met).

    The iterator closes its threads when exhausted, on an exception, on `close()`, when used as a
    context manager, or when garbage-collected after the consumer breaks out of a for loop.
    """

    def __init__(self, dataset, batch_size: int, train: bool, crop: int | None = None,
                 flip: bool = True, lighting: float = 0.1, seed: int = 0, workers: int = 2,
                 drop_last: bool | None = None, prefetch: int = 4, scale: float = PIXEL_SCALE,
                 shard: tuple | None = None):
        h, w = dataset.image_shape[:2]
        if crop is not None and not 0 < crop <= min(h, w):
            raise ValueError(f"BatchLoader: crop {crop} does not fit images of {h}x{w}")
        if batch_size < 1 or workers < 0 or prefetch < 1:
            raise ValueError(f"BatchLoader: want batch_size >= 1, workers >= 0, prefetch >= 1; "
                             f"got {batch_size}, {workers}, {prefetch}")
        if shard is not None:
            index, count = (int(v) for v in shard)
            if not (count >= 1 and 0 <= index < count):
                raise ValueError(f"BatchLoader: shard (index, count) must have 0 <= index < count, got {shard}")
            shard = (index, count)
        self.shard = shard
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.crop = crop
        self.flip = bool(flip) and self.train
        self.lighting = float(lighting) if self.train else 0.0
        self.seed = int(seed)
        self.workers = int(workers)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.prefetch = int(prefetch)
        self.scale = float(scale)
        self.current_epoch = 0
        self.skipped: list[str] = []
        self._mean = None
        self._pca = None

    def __len__(self) -> int:
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int):
        self.current_epoch = int(epoch)

    def __iter__(self):
        return self.epoch(self.current_epoch)

    def epoch(self, epoch: int) -> "_EpochIterator":
        """An iterator over the batches of `epoch` (does not change `set_epoch`)."""
        # The statistics may take a while (an image folder decodes a sample); get them here, once,
        # rather than in every worker.
        if self._mean is None:
            self._mean = np.asarray(self.dataset.mean, dtype=np.float32)
        if self.lighting > 0 and self._pca is None:
            self._pca = self.dataset.pca
        return _EpochIterator(self, int(epoch))

    # -- one batch: a pure function of (epoch, batch index); runs in a worker thread ------------

    def order(self, epoch: int) -> np.ndarray:
        """Indices of the dataset in the order epoch `epoch` visits them, int64 (N,)."""
        if not self.train:
            return np.arange(len(self.dataset))
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0]))
        return rng.permutation(len(self.dataset))

    def shard_rows(self, n: int) -> tuple:
        """(lo, hi): the rows of a batch of n that this loader yields (all of them without a shard)."""
        if self.shard is None:
            return 0, n
        index, count = self.shard
        return n * index // count, n * (index + 1) // count

    def make_batch(self, order, epoch: int, b: int):
        """Batch b of the epoch whose order is `order` -> (x, y, paths of skipped images); with a
        shard, only its rows of the batch."""
        whole = order[b * self.batch_size:(b + 1) * self.batch_size]
        lo, hi = self.shard_rows(len(whole))
        images, labels, skipped = self._gather(whole[lo:hi], epoch, b, first=lo)
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 1, b]))
        return self._transform(images, rng, len(whole), lo), labels, skipped

    def _gather(self, idx, epoch: int, b: int, first: int = 0):
        """uint8 (n, H, W, 3), int32 (n,), skipped paths. Bad images are replaced, see class doc;
        idx are rows first, first + 1, ... of the batch (the replacement stream follows the row)."""
        ds = self.dataset
        try:
            images, labels = ds.get_batch(idx)
            return images, np.asarray(labels, dtype=np.int32), []
        except BadImageError:
            pass  # rare: redo this batch one image at a time, replacing the bad ones
        images = np.empty((len(idx),) + tuple(ds.image_shape), dtype=np.uint8)
        labels = np.empty(len(idx), dtype=np.int32)
        skipped = []
        for j, i in enumerate(idx):
            # The replacement stream depends on (seed, epoch, batch, position) only.
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 2, b, first + j]))
            for _ in range(MAX_REPLACEMENTS):
                try:
                    images[j], labels[j] = ds.get(int(i))
                    break
                except BadImageError as e:
                    skipped.append(e.path)
                    i = rng.integers(len(ds))
            else:
                raise RuntimeError(f"BatchLoader: {MAX_REPLACEMENTS} unreadable images in a row, "
                                   f"last: {skipped[-1]}")
        return images, labels, skipped

    def _transform(self, images, rng, n_whole: int | None = None, lo: int = 0):
        """uint8 (n, H, W, 3) -> float32 (n, crop, crop, 3): crop, flip, lighting, normalise.

        `images` are rows lo .. lo + n of a batch of n_whole (default: the whole batch). The random
        choices are drawn for all n_whole rows, in the order augment.random_crop_flip draws them,
        and sliced, so a shard gets exactly its rows of the whole batch's augmentation."""
        n, h, w = images.shape[:3]
        n_whole = n if n_whole is None else int(n_whole)
        rows = slice(lo, lo + n)
        mean = self._mean                       # (3,) or (H, W, 3)
        if self.train and self.crop is not None:
            ys = rng.integers(0, h - self.crop + 1, n_whole)[rows]
            xs = rng.integers(0, w - self.crop + 1, n_whole)[rows]
            flips = (rng.random(n_whole) < 0.5)[rows] if self.flip else np.zeros(n, dtype=bool)
            images = augment.crop(images, ys, xs, self.crop, flips)
            if mean.ndim == 3:                  # the mean image follows each crop and flip
                mean = augment.crop(mean, ys, xs, self.crop, flips)
        elif self.train and self.flip:          # whole images, mirrored
            flips = (rng.random(n_whole) < 0.5)[rows]
            images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
            if mean.ndim == 3:
                mean = np.where(flips[:, None, None, None], mean[:, ::-1], mean)
        elif self.crop is not None:             # test: centre crop
            images = augment.center_crop(images, self.crop)
            if mean.ndim == 3:
                mean = augment.center_crop(mean, self.crop)
        offsets = None
        if self.lighting > 0:
            offsets = augment.lighting_offsets(n_whole, *self._pca, rng, std=self.lighting)[rows]
        return np.ascontiguousarray(augment.normalize(images, mean, self.scale, offsets))


class _EpochIterator:
    """Yields the batches of one epoch in order, keeping `prefetch` of them in flight."""

    def __init__(self, loader: BatchLoader, epoch: int):
        self._pool = None         # set first, so close() works whatever happens below
        self._pending = collections.deque()
        self._n = self._next = 0  # batches in the epoch; the one to yield next
        self._loader = loader
        self._epoch = epoch
        self._order = loader.order(epoch)
        self._n = len(loader)
        self._submitted = 0       # batches handed to the pool
        if loader.workers > 0:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                loader.workers, thread_name_prefix="convnet-loader")
            self._fill()

    def _fill(self):
        while self._submitted < self._n and len(self._pending) < self._loader.prefetch:
            self._pending.append(self._pool.submit(
                self._loader.make_batch, self._order, self._epoch, self._submitted))
            self._submitted += 1

    def __iter__(self):
        return self

    def __len__(self):
        return self._n - self._next

    def __next__(self):
        if self._next >= self._n:
            self.close()
            raise StopIteration
        try:
            if self._pool is not None:
                x, y, skipped = self._pending.popleft().result()  # re-raises a worker's exception
                self._fill()
            else:
                x, y, skipped = self._loader.make_batch(self._order, self._epoch, self._next)
        except BaseException:
            self.close()
            raise
        self._next += 1
        for path in skipped:
            if path not in self._loader.skipped:
                self._loader.skipped.append(path)
        return x, y

    def close(self, wait: bool = True):
        """Cancel the batches not started, wait for the running ones, stop the threads."""
        pool, self._pool = self._pool, None
        self._next = self._n
        if pool is not None:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
            pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Garbage collection (e.g. after `break`) must not block on a running batch.
        self.close(wait=False)
