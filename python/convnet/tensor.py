"""The Python face of the C++ Tensor: make tensors from NumPy, read them back, move them, and convert
layouts for people coming from PyTorch.

convnet's layouts are fixed: activations (N, H, W, C) "NHWC", conv filters (K, R, S, C/groups) "KRSC",
fully-connected weights (out, in). PyTorch uses NCHW activations and (K, C, R, S) filters.
"""
from __future__ import annotations

import numpy as np

from ._C import Tensor, Uploader

__all__ = ["Tensor", "Uploader", "from_numpy", "as_labels", "upload_batches", "empty", "zeros", "full",
           "nchw_to_nhwc", "nhwc_to_nchw", "kcrs_to_krsc", "krsc_to_kcrs"]


def from_numpy(array, device: str = "cpu") -> Tensor:
    """Copy a float32 or int32 NumPy array onto `device` ("cpu", "cuda:0", ...)."""
    return Tensor.from_numpy(np.asarray(array), device)


def as_labels(labels, classes: int | None = None, what: str = "labels") -> np.ndarray:
    """Class labels (N,) as int32, checked: any integer dtype (int32, int64, ...) whose values are in
    [0, classes) (or in int32 range when classes is None). Floats, bools and out-of-range values raise
    ValueError naming `what` -- never a silent cast (int64 2**32 + 3 would become 3, float 0.9 become 0)."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what}: labels must be integers (int32 or int64), got dtype {arr.dtype}"
                         + (" (a float label is refused, not rounded)" if arr.dtype.kind == "f" else ""))
    if arr.ndim != 1:
        raise ValueError(f"{what}: labels must be 1-D (N,), got shape {arr.shape}")
    hi = classes if classes is not None else 2**31
    if arr.size:
        lo_v, hi_v = arr.min(), arr.max()
        if lo_v < 0 or hi_v >= hi:
            bad = int(np.flatnonzero((arr < 0) | (arr >= hi))[0])
            raise ValueError(f"{what}: label {int(arr[bad])} at row {bad} is outside [0, {hi})"
                             + (f" for {classes} classes" if classes is not None else ""))
    return np.ascontiguousarray(arr, dtype=np.int32)


def upload_batches(batches, device: str, classes: int | None = None, labels_device: str | None = None,
                   depth: int = 3):
    """Feed (images (N, H, W, C), labels (N,)) NumPy batches to a training loop as device Tensors,
    uploading each while the step before it computes.

    Two batches are always in flight: once the loop has taken batch k and queued its step, the next
    call copies batch k+2 into pinned memory (GIL released, so loader threads keep decoding) and starts
    its host->device copy behind step k on the device's upload stream, so it travels while step k+1
    computes; the loop's stream waits for a batch's copy only when it takes the batch. The step never
    waits for a pageable copy. Labels are checked (as_labels, against `classes`) before they travel, to
    `labels_device` (default `device`; a Net's cost layer may sit elsewhere). On "cpu"
    the batches pass through unchanged. A yielded tensor is never overwritten while it is held.
    """
    if device == "cpu":
        for x, y in batches:
            yield x, y
        return
    images, labels = Uploader(device, depth), Uploader(labels_device or device, depth)
    ahead = max(1, min(2, depth - 1))  # the slot being filled must not be the one the loop holds

    def put(batch):
        x, y = batch
        images.put(np.ascontiguousarray(x, dtype=np.float32))
        labels.put(as_labels(y, classes, "upload_batches"))

    it = iter(batches)
    for batch in it:
        put(batch)
        if images.pending == ahead:
            break
    while images.pending:
        yield images.get(), labels.get()
        batch = next(it, None)  # the loop's step for the batch just yielded is queued by now
        if batch is not None:
            put(batch)


def empty(shape, device: str = "cpu", dtype: str = "float32") -> Tensor:
    """Uninitialised tensor (its contents are whatever the memory held)."""
    return Tensor.empty(tuple(shape), device, dtype)


def zeros(shape, device: str = "cpu", dtype: str = "float32") -> Tensor:
    return Tensor.zeros(tuple(shape), device, dtype)


def full(shape, value: float, device: str = "cpu") -> Tensor:
    return Tensor.empty(tuple(shape), device, "float32").fill_(value)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C), C-contiguous."""
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W), C-contiguous."""
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def kcrs_to_krsc(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weights (K, C, R, S) -> convnet's (K, R, S, C)."""
    return np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1)))


def krsc_to_kcrs(w: np.ndarray) -> np.ndarray:
    """convnet conv weights (K, R, S, C) -> PyTorch's (K, C, R, S)."""
    return np.ascontiguousarray(np.transpose(w, (0, 3, 1, 2)))
