"""mnist:<path> -- MNIST / Fashion-MNIST IDX files, written here by the test (nothing downloaded)."""
import gzip
import struct

import numpy as np
import pytest

from convnet.data import mnist, open_data
from convnet.data.mnist import FASHION_CLASSES, read_idx


def idx_bytes(a: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, type, ndim, big-endian uint32 sizes, the values."""
    return bytes([0, 0, type_code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_mnist(folder, n_train=7, n_test=5, gz=False, dotted=False, rng=None):
    """Four IDX files of random 28x28 images and labels under `folder`; returns the arrays."""
    rng = rng or np.random.default_rng()
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[stem] = (images, labels)
        for kind, a, rank in (("images", images, 3), ("labels", labels, 1)):
            name = f"{stem}-{kind}{'.' if dotted else '-'}idx{rank}-ubyte"
            data = idx_bytes(a)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_exactly(tmp_path, gz):
    arrays = write_mnist(tmp_path / "mnist", gz=gz)
    train, test = mnist(tmp_path / "mnist")
    for ds, (images, labels) in ((train, arrays["train"]), (test, arrays["t10k"])):
        assert ds.image_shape == (32, 32, 3) and len(ds) == len(labels)
        assert ds.class_names == [str(d) for d in range(10)]
        got, y = ds.get_batch(np.arange(len(ds)))
        np.testing.assert_array_equal(y, labels)
        # the grey plane in every channel, inside a 2-pixel black border
        for c in range(3):
            np.testing.assert_array_equal(got[:, 2:30, 2:30, c], images)
        assert not got[:, :2].any() and not got[:, 30:].any() and not got[:, :, :2].any() and not got[:, :, 30:].any()
    np.testing.assert_allclose(test.mean, train.mean)  # the test split shares train's statistics


def test_mnist_unpadded_and_fashion_names_and_torchvision_layout(tmp_path):
    arrays = write_mnist(tmp_path / "fashion" / "FashionMNIST" / "raw", gz=True)
    train, test = mnist(tmp_path / "fashion", pad=0)
    assert train.image_shape == (28, 28, 3) and train.class_names == FASHION_CLASSES
    np.testing.assert_array_equal(train.get_batch(np.arange(len(train)))[0][..., 1], arrays["train"][0])


def test_mnist_dotted_names_and_unpacked_file_wins(tmp_path):
    arrays = write_mnist(tmp_path, dotted=True)
    # a stale archive next to the unpacked file is ignored
    (tmp_path / "train-images.idx3-ubyte.gz").write_bytes(b"not gzip")
    train, _ = mnist(tmp_path)
    np.testing.assert_array_equal(train.labels, arrays["train"][1])


def test_mnist_through_the_data_name_parser(tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path / "m", gz=True)
    monkeypatch.chdir(tmp_path)
    train, test, name = open_data("mnist:m")
    assert name == f"mnist:{tmp_path / 'm'}"  # absolute, so a checkpoint finds it from anywhere
    np.testing.assert_array_equal(test.labels, arrays["t10k"][1])
    with pytest.raises(FileNotFoundError, match="not found"):
        open_data("mnist:nowhere")
    with pytest.raises(ValueError, match="give the folder"):
        open_data("mnist:")
    with pytest.raises(ValueError, match="mnist:<path>"):
        open_data("mnst:m")


def test_mnist_errors_name_the_file(tmp_path):
    rng = np.random.default_rng()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        write_mnist(tmp_path / "a", rng=rng)
        (tmp_path / "a" / "t10k-images-idx3-ubyte").unlink()
        mnist(tmp_path / "a")

    write_mnist(tmp_path / "b", rng=rng)
    bad = tmp_path / "b" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1])  # truncated
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: the header says shape"):
        mnist(tmp_path / "b")

    write_mnist(tmp_path / "c", rng=rng)
    (tmp_path / "c" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="7 images .* but 3 labels"):
        mnist(tmp_path / "c")

    write_mnist(tmp_path / "d", rng=rng)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(5, 10, np.uint8)))
    with pytest.raises(ValueError, match="labels must be 0..9, found 10"):
        mnist(tmp_path / "d")

    p = tmp_path / "x.idx"
    p.write_bytes(b"\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)
    p.write_bytes(idx_bytes(np.zeros((2, 2), np.uint8), type_code=0x0D))
    with pytest.raises(ValueError, match="IDX type 0x0d"):
        read_idx(p)
    p = tmp_path / "y.gz"
    p.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="cannot be read as an IDX file"):
        read_idx(p)
    with pytest.raises(ValueError, match="pad"):
        mnist(tmp_path / "c", pad=-1)
    with pytest.raises(ValueError, match="10 class names"):
        mnist(tmp_path / "c", class_names=["a"])
