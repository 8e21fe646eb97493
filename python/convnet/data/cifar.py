"""CIFAR-10 and CIFAR-100 from the "python version" pickle batch files (nothing is downloaded).

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each file pickles a dict whose b"data" is uint8 (n, 3072): a row is the R plane, then the G plane,
then the B plane, each 32x32 in row-major order (CHW). We reshape to (n, 3, 32, 32) and transpose
to HWC, the layout convnet uses everywhere. Labels are b"labels" (CIFAR-10) or b"fine_labels" /
b"coarse_labels" (CIFAR-100). The files were written by Python 2, so strings come back as bytes.

Unpickling can run arbitrary code, so the files are read with an unpickler that only builds
numpy arrays and plain containers.
"""

from __future__ import annotations

import codecs
import os
import pickle

import numpy as np

from . import ArrayDataset

try:  # numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric

_ALLOWED = {  # (module, name) a CIFAR pickle may refer to -> the object
    **{(m, "_reconstruct"): _multiarray._reconstruct
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _multiarray.scalar
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _numeric._frombuffer
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 with protocol <= 2
}

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_FILES = CIFAR10_TRAIN + ["test_batch", "batches.meta"]
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ["train", "test", "meta"]


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"CIFAR file refers to {module}.{name}; only numpy arrays are expected") from None


def _load(path) -> dict:
    """A CIFAR pickle -> dict with str keys (the files have bytes keys)."""
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="bytes").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _names(values) -> list:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _find(path, subdir: str, files: list, what: str) -> str:
    """The folder holding `files`: `path` itself or path/subdir; else FileNotFoundError."""
    path = os.path.expanduser(os.fspath(path))
    for folder in (path, os.path.join(path, subdir)):
        if all(os.path.isfile(os.path.join(folder, f)) for f in files):
            return folder
    folder = os.path.join(path, subdir) if os.path.isdir(os.path.join(path, subdir)) else path
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    raise FileNotFoundError(
        f"{what} not found in {folder}: expected the python-version batch files "
        f"{', '.join(files)} there or in {os.path.join(path, subdir)}; missing: "
        f"{', '.join(missing) if os.path.isdir(folder) else 'the folder itself'}")


def rows_to_hwc(data) -> np.ndarray:
    """CIFAR rows uint8 (n, 3072), planes R, G, B of 32x32 each -> uint8 (n, 32, 32, 3)."""
    data = np.asarray(data, dtype=np.uint8)
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def cifar10(path):
    """CIFAR-10 -> (train 50,000, test 10,000) ArrayDatasets of uint8 (N, 32, 32, 3).

    path: the cifar-10-batches-py folder or the folder containing it. `mean` is the train split's
    mean image (32, 32, 3), shared by the test split.
    """
    folder = _find(path, CIFAR10_DIR, CIFAR10_FILES, "CIFAR-10")
    names = _names(_load(os.path.join(folder, "batches.meta"))["label_names"])
    batches = [_load(os.path.join(folder, f)) for f in CIFAR10_TRAIN]
    train = ArrayDataset(np.concatenate([rows_to_hwc(b["data"]) for b in batches]),
                         np.concatenate([np.asarray(b["labels"]) for b in batches]), names)
    test = _load(os.path.join(folder, "test_batch"))
    return train, ArrayDataset(rows_to_hwc(test["data"]), np.asarray(test["labels"]), names,
                               stats_from=train)


def cifar100(path, label: str = "fine"):
    """CIFAR-100 -> (train 50,000, test 10,000) ArrayDatasets of uint8 (N, 32, 32, 3).

    path: the cifar-100-python folder or the folder containing it. label: "fine" (100 classes)
    or "coarse" (20 superclasses). `mean` is the train split's mean image, shared by the test split.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"cifar100: label must be 'fine' or 'coarse', got {label!r}")
    folder = _find(path, CIFAR100_DIR, CIFAR100_FILES, "CIFAR-100")
    names = _names(_load(os.path.join(folder, "meta"))[f"{label}_label_names"])
    splits = []
    for name in ("train", "test"):
        d = _load(os.path.join(folder, name))
        splits.append(ArrayDataset(rows_to_hwc(d["data"]), np.asarray(d[f"{label}_labels"]), names,
                                   stats_from=splits[0] if splits else None))
    return tuple(splits)
