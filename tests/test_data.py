"""Tests of convnet.data: the built-in set, CIFAR and image-folder readers, augmentation, loader.

Everything runs on small arrays and files made in tmp_path; nothing is downloaded.
"""

import gc
import hashlib
import os
import pickle
import threading
import time

import numpy as np
import pytest

from convnet.data import (ArrayDataset, BadImageError, BatchLoader, augment, builtin, cifar10,
                          cifar100, imagenet_folder)


# --- built-in set ------------------------------------------------------------------------------

def test_builtin_deterministic():
    a_train, a_test = builtin(seed=3, n_train=200, n_test=50)
    b_train, b_test = builtin(seed=3, n_train=200, n_test=50)
    assert a_train.images.tobytes() == b_train.images.tobytes()
    assert a_test.images.tobytes() == b_test.images.tobytes()
    assert np.array_equal(a_train.labels, b_train.labels)
    c_train, _ = builtin(seed=4, n_train=200, n_test=50)
    assert not np.array_equal(a_train.images, c_train.images)
    # The test split does not depend on the size of the train split.
    _, d_test = builtin(seed=3, n_train=100, n_test=50)
    assert np.array_equal(a_test.images, d_test.images)


def test_builtin_fingerprint():
    # Same seed -> same bytes on any machine: a change here means the generator's stream changed.
    train, test = builtin(seed=0, n_train=40, n_test=10)
    digest = hashlib.sha256(train.images.tobytes() + train.labels.tobytes()
                            + test.images.tobytes() + test.labels.tobytes()).hexdigest()
    assert digest == BUILTIN_SHA256


BUILTIN_SHA256 = "b6405593365a00d4713cc06eb5011085bd3f653c99b76b88c0692b58d5068d5e"


def test_builtin_shapes_and_balance():
    train, test = builtin()                     # the default sizes
    assert (len(train), len(test)) == (10000, 2000)
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (32, 32, 3)
        assert ds.image_shape == (32, 32, 3)
        assert ds.labels.dtype == np.int32
        assert ds.num_classes >= 10 and len(ds.class_names) == ds.num_classes
        assert all(isinstance(c, str) and c for c in ds.class_names)
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        assert counts.min() == counts.max() == len(ds) // ds.num_classes
        image, label = ds.get(5)
        assert image.shape == (32, 32, 3) and label == ds.labels[5]
        x, y = ds.get_batch([5, 0, 7])
        assert x.shape == (3, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
        assert np.array_equal(x[0], image)
    # Images are not flat: the object and the noise are there.
    assert train.images.reshape(len(train), -1).std(axis=1).min() > 5


def test_builtin_stats():
    train, test = builtin(n_train=300, n_test=30)
    assert train.mean.shape == (32, 32, 3) and train.mean.dtype == np.float32
    np.testing.assert_allclose(train.mean, train.images.mean(axis=0), rtol=1e-5)
    assert test.mean is train.mean                        # the test split shares train's stats
    eigvals, eigvecs = train.pca
    assert eigvals.shape == (3,) and eigvecs.shape == (3, 3)
    assert np.all(np.diff(eigvals) <= 0) and eigvals[-1] >= 0
    np.testing.assert_allclose(eigvecs.T @ eigvecs, np.eye(3), atol=1e-5)
    pixels = train.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(eigvals, np.linalg.eigvalsh(np.cov(pixels.T, bias=True))[::-1],
                               rtol=1e-4)


# --- CIFAR -------------------------------------------------------------------------------------

def _dump(path, d):
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)             # bytes keys, protocol 2, like the real files


def _fake_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _check_rows(images, rows):
    """images[n, h, w, c] == rows[n, c*1024 + h*32 + w] for every element."""
    n, h, w, c = np.meshgrid(np.arange(len(rows)), np.arange(32), np.arange(32), np.arange(3),
                             indexing="ij")
    assert np.array_equal(images, rows[n, c * 1024 + h * 32 + w])


def make_cifar10(root, rows_per_batch=3):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for i in range(1, 6):
        rows = _fake_rows(rng, rows_per_batch)
        labels = list(rng.integers(0, 10, rows_per_batch))
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                           b"data": rows, b"filenames": [b"x.png"] * len(rows)})
        batches.append((rows, labels))
    test_rows = _fake_rows(rng, 2)
    test_rows[1] = 0
    test_rows[1, 1 * 1024 + 5 * 32 + 7] = 200      # G plane, row 5, column 7
    _dump(folder / "test_batch", {b"labels": [3, 9], b"data": test_rows})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000})
    return folder, batches, test_rows


def test_cifar10(tmp_path):
    folder, batches, test_rows = make_cifar10(tmp_path)
    for path in (folder, tmp_path):                    # the folder itself, or the one above it
        train, test = cifar10(path)
        assert len(train) == 15 and len(test) == 2
        assert train.class_names[0] == "airplane" and train.num_classes == 10
        _check_rows(train.images, np.concatenate([rows for rows, _ in batches]))
        assert train.labels.tolist() == sum((labels for _, labels in batches), [])
        image, label = test.get(1)
        assert label == 9 and image[5, 7, 1] == 200 and image.sum() == 200
        assert train.images.flags.c_contiguous
        assert test.mean is train.mean and train.mean.shape == (32, 32, 3)


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    rows = _fake_rows(rng, 4)
    _dump(folder / "train", {b"data": rows, b"fine_labels": [5, 99, 0, 42],
                             b"coarse_labels": [1, 19, 0, 7]})
    _dump(folder / "test", {b"data": rows[:2], b"fine_labels": [1, 2], b"coarse_labels": [3, 4]})
    _dump(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    fine_train, fine_test = cifar100(tmp_path, label="fine")
    assert fine_train.num_classes == 100 and fine_train.labels.tolist() == [5, 99, 0, 42]
    assert fine_test.labels.tolist() == [1, 2] and fine_train.class_names[99] == "fine99"
    _check_rows(fine_train.images, rows)
    coarse_train, coarse_test = cifar100(folder, label="coarse")
    assert coarse_train.num_classes == 20 and coarse_train.labels.tolist() == [1, 19, 0, 7]
    assert coarse_test.labels.tolist() == [3, 4] and coarse_train.class_names[19] == "coarse19"
    with pytest.raises(ValueError):
        cifar100(folder, label="medium")


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cifar100(tmp_path / "nowhere")
    folder, _, _ = make_cifar10(tmp_path)
    os.remove(folder / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="missing: data_batch_4"):
        cifar10(tmp_path)


def test_cifar_refuses_code(tmp_path):
    folder, _, _ = make_cifar10(tmp_path)
    _dump(folder / "test_batch", {b"data": os.system})  # a pickle that would call a function
    with pytest.raises(pickle.UnpicklingError):
        cifar10(folder)


# --- ImageNet-style folder ---------------------------------------------------------------------

def _save(path, array):
    from PIL import Image
    Image.fromarray(array).save(path)


def _banded(h, w, vertical):
    """A red image with green bands on the long sides, each a quarter of the long side."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 255
    if vertical:       # tall: bands at top and bottom
        a[:h // 4], a[h - h // 4:] = (0, 255, 0), (0, 255, 0)
    else:              # wide: bands left and right
        a[:, :w // 4], a[:, w - w // 4:] = (0, 255, 0), (0, 255, 0)
    return a


@pytest.fixture
def image_tree(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n02", "n01", "n03"):
            (root / split / wnid).mkdir(parents=True)
    t = root / "train"
    _save(t / "n01" / "wide.PNG", _banded(50, 100, vertical=False))   # 100 wide, 50 high
    _save(t / "n01" / "b.JPEG", rng.integers(0, 256, (90, 70, 3), dtype=np.uint8))
    _save(t / "n02" / "tall.png", _banded(160, 80, vertical=True))
    _save(t / "n02" / "d.jpg", rng.integers(0, 256, (40, 120, 3), dtype=np.uint8))
    _save(t / "n03" / "e.jpeg", rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    # A truncated JPEG, and a file that is no image at all.
    _save(t / "n03" / "whole.jpg", rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
    data = (t / "n03" / "whole.jpg").read_bytes()
    (t / "n03" / "whole.jpg").unlink()
    (t / "n03" / "cut.JPG").write_bytes(data[:len(data) // 2])
    (t / "n01" / "junk.jpg").write_bytes(b"this is not a JPEG")
    (t / "n01" / "notes.txt").write_text("not an image: ignored")
    _save(root / "val" / "n01" / "v1.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    _save(root / "val" / "n03" / "v2.jpg", rng.integers(0, 256, (70, 64, 3), dtype=np.uint8))
    return root


def test_image_folder_layout(image_tree):
    train, val = imagenet_folder(image_tree, size=64)
    assert train.class_names == ["n01", "n02", "n03"]
    names = [os.path.relpath(p, image_tree / "train") for p in train.paths]
    assert names == ["n01/b.JPEG", "n01/junk.jpg", "n01/wide.PNG", "n02/d.jpg", "n02/tall.png",
                     "n03/cut.JPG", "n03/e.jpeg"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert val.labels.tolist() == [0, 2] and val.class_names == train.class_names
    assert train.image_shape == (64, 64, 3)


def test_image_folder_resize_and_crop(image_tree):
    train, _ = imagenet_folder(image_tree, size=64)
    for name in ("n01/wide.PNG", "n02/tall.png"):
        image, _ = train.get(train.paths.index(str(image_tree / "train" / name)))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        # Shorter side -> 64 and the centre 64x64 kept: the green quarter-bands on the long
        # sides are cut away, leaving red (up to a pixel of filtering at the border).
        inner = image[1:-1, 1:-1].astype(int)
        assert (inner[..., 0] > 240).all() and (inner[..., 1] < 15).all()
    image, _ = train.get(train.paths.index(str(image_tree / "train" / "n03/e.jpeg")))
    assert image.shape == (64, 64, 3)


def test_image_folder_bad_files(image_tree):
    train, _ = imagenet_folder(image_tree, size=64)
    bad = [train.paths.index(str(image_tree / "train" / name))
           for name in ("n03/cut.JPG", "n01/junk.jpg")]
    for i in bad:
        with pytest.warns(RuntimeWarning, match=os.path.basename(train.paths[i])):
            with pytest.raises(BadImageError) as err:
                train.get(i)
        assert err.value.path == train.paths[i]
    assert sorted(train.bad) == sorted(bad)
    with pytest.raises(BadImageError):
        train.get(bad[0])                     # remembered: fails again, without a new warning


def test_image_folder_loader_skips_bad(image_tree):
    train, val = imagenet_folder(image_tree, size=64)
    with pytest.warns(RuntimeWarning):
        assert train.mean.shape == (3,) and val.mean is train.mean
    loader = BatchLoader(train, batch_size=3, train=True, crop=56, workers=2, drop_last=False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [3, 3, 1]
    assert all(x.shape[1:] == (56, 56, 3) and x.dtype == np.float32 for x, _ in batches)
    assert sorted(loader.skipped) == sorted(str(image_tree / "train" / n)
                                            for n in ("n01/junk.jpg", "n03/cut.JPG"))
    # The replacements are deterministic too.
    again = list(BatchLoader(train, batch_size=3, train=True, crop=56, workers=0, drop_last=False))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(batches, again, strict=True))
    batches = list(BatchLoader(val, batch_size=2, train=False, crop=64))
    assert len(batches) == 1 and batches[0][1].tolist() == [0, 2]


def test_image_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        imagenet_folder(tmp_path / "nowhere")


# --- augmentation ------------------------------------------------------------------------------

def test_crop_and_flip_match_slicing():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 10, 12, 3), dtype=np.uint8)
    ys, xs = np.array([0, 3, 1, 2, 3]), np.array([0, 5, 2, 0, 5])
    flips = np.array([False, True, True, False, True])
    out = augment.crop(images, ys, xs, 7, flips)
    for j in range(5):
        want = images[j, ys[j]:ys[j] + 7, xs[j]:xs[j] + 7]
        assert np.array_equal(out[j], want[:, ::-1] if flips[j] else want)
    mean = rng.random((10, 12, 3)).astype(np.float32)     # one image cropped 5 ways
    mean_crops = augment.crop(mean, ys, xs, 7, flips)
    assert np.array_equal(mean_crops[1], mean[3:10, 5:12][:, ::-1])
    with pytest.raises(ValueError):
        augment.crop(images, ys + 1, xs, 7)                 # runs off the bottom

    a, (ys1, xs1, f1) = augment.random_crop_flip(images, 8, np.random.default_rng(7))
    b, _ = augment.random_crop_flip(images, 8, np.random.default_rng(7))
    assert np.array_equal(a, b) and a.shape == (5, 8, 8, 3)
    assert np.array_equal(a, augment.crop(images, ys1, xs1, 8, f1))
    assert ys1.max() <= 2 and xs1.max() <= 4
    assert np.array_equal(augment.center_crop(images, 8), images[:, 1:9, 2:10])


def test_ten_views():
    images = np.random.default_rng(1).random((4, 9, 11, 3)).astype(np.float32)
    views = augment.ten_views(images, 5)
    assert views.shape == (10, 4, 5, 5, 3)
    assert np.array_equal(views[0], images[:, :5, :5])
    assert np.array_equal(views[1], images[:, :5, 6:])
    assert np.array_equal(views[2], images[:, 4:, :5])
    assert np.array_equal(views[3], images[:, 4:, 6:])
    assert np.array_equal(views[4], augment.center_crop(images, 5))
    for i in range(5):
        assert np.array_equal(views[5 + i], views[i][:, :, ::-1])


def test_lighting():
    eigvals = np.array([0.2175, 0.0188, 0.0045], np.float32)   # ImageNet's, pixels in [0, 1]
    eigvecs = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]], np.float32)
    images = np.full((2000, 4, 4, 3), 100, np.uint8)
    a = augment.lighting(images, eigvals, eigvecs, np.random.default_rng(3))
    b = augment.lighting(images, eigvals, eigvecs, np.random.default_rng(3))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, augment.lighting(images, eigvals, eigvecs,
                                                  np.random.default_rng(4)))
    shift = a - 100                                              # one colour shift per image
    assert np.allclose(shift, shift[:, :1, :1])
    # Against the formula: 255 * sum_i alpha_i lambda_i p_i, alphas drawn as (n, 3).
    alpha = np.random.default_rng(3).normal(0, 0.1, (2000, 3))
    np.testing.assert_allclose(shift[:, 0, 0], 255 * (alpha * eigvals) @ eigvecs.T, atol=1e-3)
    # Plausible size: about 255 * 0.1 * 0.2175 = 5.5 grey levels along the first component.
    rms = np.sqrt((shift[:, 0, 0] ** 2).sum(axis=1).mean())
    assert 4 < rms < 7


def test_normalize():
    images = np.array([[[[10, 20, 30]]]], np.uint8)
    x = augment.normalize(images, np.array([1, 2, 3], np.float32), 0.5,
                          offsets=np.array([[1, 1, 1]], np.float32))
    assert x.dtype == np.float32 and x.tolist() == [[[[5.0, 9.5, 14.0]]]]


# --- loader ------------------------------------------------------------------------------------

def _indexed(n=50, size=8, seed=0):
    """A dataset whose label is the sample index, so batches show which samples they hold."""
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n), [str(i) for i in range(n)])


def _all(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def test_loader_deterministic_across_workers():
    train, _ = builtin(n_train=300, n_test=10)
    runs = [_all(BatchLoader(train, 32, train=True, crop=28, workers=w, seed=5))
            for w in (0, 1, 3)]
    for other in runs[1:]:
        assert len(other) == len(runs[0]) == 300 // 32
        for (x0, y0), (x1, y1) in zip(runs[0], other, strict=True):
            assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    x, y = runs[0][0]
    assert x.shape == (32, 28, 28, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.dtype == np.int32
    assert 0.3 < x.std() < 3          # (pixel - mean) / 64 is of order 1

    loader = BatchLoader(train, 32, train=True, crop=28, workers=2, seed=5)
    loader.set_epoch(1)
    epoch1 = _all(loader)
    assert not np.array_equal(epoch1[0][1], runs[0][0][1])          # reshuffled
    replay = _all(loader.epoch(1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch1, replay, strict=True))


@pytest.mark.parametrize("train", [True, False])
def test_loader_covers_every_sample(train):
    ds = _indexed(50)
    loader = BatchLoader(ds, 8, train=train, crop=6, workers=2, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 7 and len(batches[-1][1]) == 2
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(50))
    if not train:
        assert seen.tolist() == list(range(50))
        # Eval: centre crop of (image - mean image), times the scale.
        x0 = batches[0][0]
        want = (augment.center_crop(ds.images[:8], 6).astype(np.float32)
                - augment.center_crop(ds.mean, 6)) / 64
        np.testing.assert_allclose(x0, want, rtol=1e-6, atol=1e-6)
    dropped = BatchLoader(ds, 8, train=train, workers=0, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 6


def test_loader_crops_mean_with_image():
    # All images equal -> the mean image is that image; if the mean is cropped and flipped
    # exactly like each image, every input is 0 (no lighting) or a per-image colour (lighting).
    image = np.random.default_rng(2).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    ds = ArrayDataset(np.repeat(image[None], 40, axis=0), np.zeros(40), ["only"])
    x, _ = next(iter(BatchLoader(ds, 40, train=True, crop=9, lighting=0, workers=0)))
    assert np.abs(x).max() < 1e-5
    x, _ = next(iter(BatchLoader(ds, 40, train=True, crop=None, lighting=0, workers=0)))
    assert np.abs(x).max() < 1e-5
    x, _ = next(iter(BatchLoader(ds, 40, train=True, crop=9, lighting=0.1, workers=0)))
    assert np.allclose(x, x[:, :1, :1], atol=1e-5) and np.abs(x).max() > 0


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("convnet-loader")]


def _wait_no_threads(timeout=5.0):
    end = time.monotonic() + timeout
    while _loader_threads() and time.monotonic() < end:
        gc.collect()
        time.sleep(0.01)
    return not _loader_threads()


class _Slow(ArrayDataset):
    def get_batch(self, indices):
        time.sleep(0.02)
        return super().get_batch(indices)


def test_loader_early_break():
    ds = _Slow(*[getattr(_indexed(200), k) for k in ("images", "labels", "class_names")])
    loader = BatchLoader(ds, 4, train=True, workers=3, prefetch=6)
    for n, _ in enumerate(loader):
        if n == 2:
            break
    assert _wait_no_threads()
    with iter(loader) as it:                   # explicit close
        next(it)
    assert not _loader_threads()
    assert len(list(loader)) == 50             # and the loader can run a full epoch afterwards


class _Failing(ArrayDataset):
    def get_batch(self, indices):
        if 13 in indices:
            raise ValueError("sample 13 is broken")
        return super().get_batch(indices)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_worker_exception(workers):
    ds = _Failing(*[getattr(_indexed(40), k) for k in ("images", "labels", "class_names")])
    with pytest.raises(ValueError, match="sample 13 is broken"):
        for _ in BatchLoader(ds, 4, train=False, workers=workers):
            pass
    assert _wait_no_threads()


def test_loader_rejects_bad_crop():
    with pytest.raises(ValueError):
        BatchLoader(_indexed(4, size=8), 2, train=True, crop=9)


# --- sharded loading (data parallel) -------------------------------------------------------------

class _Counting(ArrayDataset):
    """Records every index it is asked to read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = []

    def get_batch(self, indices):
        self.read.extend(int(i) for i in indices)
        return super().get_batch(indices)


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("crop,lighting", [(9, 0.1), (None, 0.1), (9, 0.0)])
def test_loader_shards_concatenate_to_the_whole_batch(count, crop, lighting):
    # Each rank's shard holds exactly its rows of the unsharded batch (same images, crops, flips and
    # lighting), and it reads only those images.
    train, _ = builtin(n_train=120, n_test=10)
    whole = _all(BatchLoader(train, 24, train=True, crop=crop, lighting=lighting, workers=0, seed=3))
    parts = []
    for index in range(count):
        ds = _Counting(train.images, train.labels, train.class_names, stats_from=train)  # same mean, PCA
        loader = BatchLoader(ds, 24, train=True, crop=crop, lighting=lighting, workers=index % 2, seed=3,
                             shard=(index, count))
        parts.append(_all(loader))
        lo, hi = loader.shard_rows(24)
        assert len(ds.read) == len(whole) * (hi - lo)   # never the whole batch
    for b, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)


def test_loader_shard_errors():
    with pytest.raises(ValueError, match="shard"):
        BatchLoader(_indexed(8), 4, train=False, shard=(2, 2))
    with pytest.raises(ValueError, match="shard"):
        BatchLoader(_indexed(8), 4, train=False, shard=(0, 0))
