"""evaluate() (1 and 10 views) and top-k prediction. Data names are parsed by data.open_data.

    >>> convnet.evaluate(net, "builtin", views=10)
    {'top1_err': ..., 'top5_err': ..., 'loss': ..., 'top1_acc': ..., 'n': ..., 'views': 10}

Images are preprocessed by `preprocess.test_input`, the one test-time path (also Net.predict's).
A row whose logits are not all finite is never counted as a hit (NaN compares false, so a naive
rank would call it correct)."""
from __future__ import annotations

import collections
import concurrent.futures
import sys
import time

import numpy as np

from .net import Net, softmax
from .preprocess import test_input

__all__ = ["evaluate", "check_fit", "predict_topk"]

PROGRESS_SECONDS = 5.0  # evaluate(progress=True): a "validating i/n images" line at most this often


def check_fit(net: Net, ds, what: str, input_shape=None):
    """ValueError unless the data set's images and classes fit the net (or a net of `input_shape`
    (H, W, C), checked before a net is built)."""
    H, W, C = input_shape or net.input_shape
    h, w, c = tuple(ds.image_shape)
    if h < H or w < W or c != C:
        raise ValueError(f"{what}: the model takes images of {H}x{W}x{C} (N, H, W, C) = (N, {H}, {W}, {C}) "
                         f"but the data set's images are {h}x{w}x{c} {tuple(ds.image_shape)}: use "
                         f"--input-size {min(h, w)} (input_size=) or larger images")
    if net is not None and ds.num_classes > net.num_classes:
        raise ValueError(f"{what}: the data set has {ds.num_classes} classes, the model only {net.num_classes}")


def _prefetch_map(fn, items, workers):
    """fn over items, in order, `workers` threads, a few items ahead (bounded memory)."""
    if workers <= 0:
        for it in items:
            yield fn(it)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        it = iter(items)
        for _ in range(workers + 2):
            try:
                pending.append(pool.submit(fn, next(it)))
            except StopIteration:
                break
        while pending:
            out = pending.popleft().result()
            try:
                pending.append(pool.submit(fn, next(it)))
            except StopIteration:
                pass
            yield out


def view_probs(net: Net, x):
    """(softmax averaged over the views (n, classes), rows whose logits were finite in every view (n,))
    of test_input's views x (views, n, H, W, C)."""
    probs, finite = 0.0, np.ones(x.shape[1], dtype=bool)
    for view in x:
        logits = net.forward(view).numpy()
        finite &= np.isfinite(logits).all(axis=1)
        probs = probs + softmax(logits)
    return probs / len(x), finite


def _errors(probs, labels, finite):
    """(summed loss, top-1 hits, top-5 hits) of probs (n, classes); rows not `finite` never hit."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    p_label = probs[np.arange(n), labels][:, None]
    rank = (probs > p_label).sum(axis=1)
    loss = -np.log(np.maximum(p_label[:, 0], 1e-30))
    return loss.sum(), int(((rank < 1) & finite).sum()), int(((rank < 5) & finite).sum())


def evaluate(net: Net, data=None, views: int = 1, batch_size: int = 128, workers: int = 2,
             limit: int | None = None, progress: bool = False, image_size: int | None = None) -> dict:
    """Top-1 and top-5 error of `net` on a split: the centre crop (views=1) or the paper's 10 views
    (views=10: 4 corners + centre and their mirror images, softmax averaged).

    data: a Dataset split, a (train, test) pair or a data name (the test split is used; an image
    folder is resized to `image_size`, default data.folder_image_size of the net's input). Images are
    preprocessed like the test loader: crop of the net's input size, minus the training mean
    (`net.mean` if set, else the split's), times net.input_scale. progress: a line on stderr now and
    then. Returns {"top1_err", "top5_err", "loss", "top1_acc", "n", "views", "skipped"}; a row with a
    NaN/Inf logit counts as an error (and makes the loss NaN). Images that cannot be decoded
    (BadImageError) are left out: "n" counts the images evaluated, "skipped" lists the others' paths.
    """
    if views not in (1, 10):
        raise ValueError(f"evaluate: views must be 1 or 10, got {views}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an integer >= 1, got {batch_size!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"evaluate: limit must be >= 1 or None, got {limit!r}")
    if data is None or isinstance(data, (str, tuple, list)):
        from .data import open_data
        _, ds, _ = open_data(data, input_size=net.input_shape[0], image_size=image_size)
    else:
        ds = data
    check_fit(net, ds, "evaluate")
    size = net.input_shape[0]
    mean = net.mean if net.mean is not None else ds.mean
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise ValueError("evaluate: the split has no images")
    chunks = [np.arange(k, min(k + batch_size, n)) for k in range(0, n, batch_size)]

    def prepare(idx):
        from .data import BadImageError
        try:
            images, labels = ds.get_batch(idx)
            bad = []
        except BadImageError:  # rare: one image at a time, leaving out the unreadable ones
            good, bad = [], []
            for i in idx:
                try:
                    good.append(ds.get(int(i)))
                except BadImageError as e:
                    bad.append(e.path)
            if not good:
                return None, None, bad
            images = np.stack([g[0] for g in good])
            labels = np.asarray([g[1] for g in good], dtype=np.int32)
        return test_input(images, mean, size, net.input_scale, views), labels, bad

    loss = top1 = top5 = 0.0
    done, last, skipped = 0, time.time(), []
    for x, labels, bad in _prefetch_map(prepare, chunks, workers):
        skipped += bad
        if x is None:
            continue
        probs, finite = view_probs(net, x)
        l, h1, h5 = _errors(probs, labels, finite)
        loss, top1, top5 = loss + l, top1 + h1, top5 + h5
        done += len(labels)
        if progress and time.time() - last >= PROGRESS_SECONDS:
            last = time.time()
            print(f"  validating {done}/{n} images ({views} view(s))", file=sys.stderr, flush=True)
    if done == 0:
        raise ValueError(f"evaluate: none of the {n} images could be read (first: {skipped[0]})")
    if skipped and progress:
        print(f"  evaluate: skipped {len(skipped)} unreadable images (first: {skipped[0]})", file=sys.stderr)
    return {"top1_err": 1.0 - top1 / done, "top5_err": 1.0 - top5 / done, "loss": loss / done,
            "top1_acc": top1 / done, "n": done, "views": views, "skipped": skipped}


def predict_topk(net: Net, images, k: int = 5, class_names=None):
    """[(index, name, probability) * k] per image, best first. images (N, H, W, C) pixel units."""
    probs = net.predict(images)
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = list(class_names) if class_names else None
    return [[(int(c), names[c] if names and c < len(names) else str(int(c)), float(p[c])) for c in row]
            for row, p in zip(order, probs)]
