"""convnet prepare: an image folder pre-resized into a prepared set, and the set read back.

The folders are generated here (smooth random images, so JPEG re-encoding changes them little),
with one corrupt file that must be skipped and named."""
import json
import os

import numpy as np
import pytest

from convnet.__main__ import main
from convnet.data import BatchLoader, open_data
from convnet.data import prepare as prep
from convnet.data.imagenet import load_image

SIZES = [(40, 60), (72, 48), (33, 33), (50, 90)]  # (H, W): landscape, portrait, square


def smooth_image(rng, h, w):
    """uint8 (h, w, 3): a random colour gradient plus a blob, smooth enough for JPEG."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    c0, cx, cy = rng.uniform(40, 200, 3), rng.uniform(-80, 80, 3), rng.uniform(-80, 80, 3)
    img = c0 + cx * x[..., None] + cy * y[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root, rng, bad=True):
    """root/{train,val}/{cat,dog}/ with JPEG and PNG files; returns {relative path: image}."""
    from PIL import Image
    images = {}
    for split, per_class in (("train", 4), ("val", 2)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(per_class):
                h, w = SIZES[k % len(SIZES)]
                img = smooth_image(rng, h, w)
                name = f"{k}.{'png' if k % 2 else 'jpg'}"
                Image.fromarray(img).save(d / name, quality=95)
                images[f"{split}/{c}/{name}"] = img
    if bad:
        (root / "train" / "cat" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return images


@pytest.fixture(params=["simplejpeg", "Pillow"])
def decoder(request, monkeypatch):
    if request.param == "simplejpeg":
        pytest.importorskip("simplejpeg", reason="simplejpeg is not installed (pip install simplejpeg)")
    else:
        monkeypatch.setattr(prep, "simplejpeg", None)
    return request.param


def test_prepare_and_read_back(tmp_path, decoder, capsys):
    rng = np.random.default_rng()
    make_folder(tmp_path / "src", rng)
    m = prep.prepare(tmp_path / "src", tmp_path / "out", size=32, workers=0, progress=False)
    assert m["decoder"] == decoder and m["classes"] == ["cat", "dog"]
    assert m["splits"]["train"]["n"] == 8 and m["splits"]["val"]["n"] == 2 * 2
    (bad_path, reason), = m["splits"]["train"]["skipped"]
    assert bad_path.endswith("zz_broken.jpg") and reason
    assert "skipping" in capsys.readouterr().err and json.loads((tmp_path / "out" / "prepared.json").read_text()) == m
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".part")]

    train, val, name = open_data(f"imagenet:{tmp_path / 'out'}", image_size=32)
    assert isinstance(train, prep.PreparedImages) and name == f"imagenet:{tmp_path / 'out'}"
    assert train.image_shape == (32, 32, 3) and train.class_names == ["cat", "dog"]
    # the same files, labels and images as the folder read directly (up to JPEG re-encoding)
    folder_train, _, _ = open_data(f"imagenet:{tmp_path / 'src'}", image_size=32)
    good = [i for i, p in enumerate(folder_train.paths) if not p.endswith("zz_broken.jpg")]
    np.testing.assert_array_equal(train.labels, folder_train.labels[good])
    for j, i in enumerate(good):
        got, label = train.get(j)
        want = load_image(folder_train.paths[i], 32).astype(np.float64)
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8 and label == folder_train.labels[i]
        assert np.abs(got - want).mean() < 3.0, (j, np.abs(got - want).mean())
    # a smaller image size than prepared: resized on reading
    small, _ = prep.open_prepared(tmp_path / "out", image_size=16)
    assert small.get(0)[0].shape == (16, 16, 3)
    np.testing.assert_allclose(val.mean, train.mean)
    x, y = next(iter(BatchLoader(train, 4, train=True, crop=28, workers=2)))
    assert x.shape == (4, 28, 28, 3) and np.isfinite(x).all()


def test_prepare_workers_give_the_same_set(tmp_path):
    make_folder(tmp_path / "src", np.random.default_rng(), bad=True)
    prep.prepare(tmp_path / "src", tmp_path / "a", size=24, workers=0, progress=False)
    prep.prepare(tmp_path / "src", tmp_path / "b", size=24, workers=2, progress=False)
    for f in ("train.jpegs", "train.offsets.npy", "val.labels.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_prepare_cli_and_errors(tmp_path, capsys):
    make_folder(tmp_path / "src", np.random.default_rng(), bad=False)
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--size", "20",
                 "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train: 8 images, 0 skipped" in out and "imagenet:" in out
    # an existing, non-empty output folder is refused (exit 2, one line naming it)
    assert main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="inside the source folder"):
        prep.prepare(tmp_path / "src", tmp_path / "src" / "out", workers=0)
    with pytest.raises(FileNotFoundError, match="train"):
        prep.prepare(tmp_path / "nowhere", tmp_path / "o2", workers=0)
    with pytest.raises(ValueError, match="quality"):
        prep.prepare(tmp_path / "src", tmp_path / "o3", quality=101, workers=0)
    # a damaged set is refused with what does not match
    jpegs = tmp_path / "out" / "train.jpegs"
    jpegs.write_bytes(jpegs.read_bytes()[:-10])
    with pytest.raises(ValueError, match="do not match the manifest"):
        prep.open_prepared(tmp_path / "out")
    (tmp_path / "out" / "prepared.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a convnet-prepared"):
        prep.open_prepared(tmp_path / "out")


def test_prepare_all_files_bad(tmp_path):
    for split in ("train", "val"):
        d = tmp_path / "src" / split / "a"
        d.mkdir(parents=True)
        (d / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="no image of train/ could be decoded"):
        prep.prepare(tmp_path / "src", tmp_path / "out", workers=0, progress=False)
