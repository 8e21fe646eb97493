"""Uploader and upload_batches (csrc/upload.h, cuda/upload.cu, python/convnet/tensor.py): host arrays
reach the device in order and intact, a handed-out tensor is never overwritten while held, the copy
waits for queued work that still reads a recycled slot, and every misuse raises ValueError."""
import numpy as np
import pytest

import convnet
from convnet import _C, ops
from convnet.net import Net
from test_net import small_dag


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_put_get_round_trip_in_order(device, rng, dtype):
    up = _C.Uploader(device, 3)
    assert (up.device, up.depth, up.pending) == (device, 3, 0)
    arrays = [(rng.standard_normal((4, 5, 3)) * 100).astype(dtype) for _ in range(7)]
    got = []
    for i, a in enumerate(arrays):
        up.put(a)
        if i >= 1:  # keep one ahead, as upload_batches does
            got.append(up.get().numpy())
    while up.pending:
        got.append(up.get().numpy())
    assert len(got) == len(arrays)
    for a, g in zip(arrays, got):
        assert g.dtype == dtype
        np.testing.assert_array_equal(g, a)


def test_strided_and_empty_arrays(device, rng):
    up = _C.Uploader(device, 2)
    a = rng.standard_normal((6, 8)).astype(np.float32)
    up.put(a[::2, 1::3])
    up.put(np.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(up.get().numpy(), a[::2, 1::3])
    t = up.get()
    assert t.shape == (0, 3) and t.device == device


def test_held_tensor_is_never_overwritten(device, rng):
    up = _C.Uploader(device, 2)
    a, b, c = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    up.put(a)
    held = up.get()  # slot 0, kept
    up.put(b)
    up.get()  # slot 1, dropped at once
    up.put(c)  # slot 0 again: its tensor is held, so a fresh one is made
    np.testing.assert_array_equal(up.get().numpy(), c)
    np.testing.assert_array_equal(held.numpy(), a)
    assert up.allocations == 3


def test_slots_are_reused_when_dropped(device, rng):
    up = _C.Uploader(device, 3)
    for _ in range(10):
        a = rng.standard_normal((2, 9)).astype(np.float32)
        up.put(a)
        np.testing.assert_array_equal(up.get().numpy(), a)
    assert up.allocations == 3
    up.put(np.ones((3, 9), np.float32))  # another shape: that slot gets a new tensor
    assert up.get().shape == (3, 9) and up.allocations == 4


def test_copy_waits_for_queued_readers_of_the_slot(device, rng):
    # work queued on the compute stream reads the slot's tensor; the next upload into that slot must
    # not overwrite it before that work has run (on a GPU: a race if the copy did not wait)
    n = 1 << 20
    up = _C.Uploader(device, 1)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    up.put(a)
    t = up.get()
    out = convnet.zeros((n,), device)
    ops.add_(out, t, 2.0)  # queued, reads t
    del t
    up.put(b)
    np.testing.assert_array_equal(out.numpy(), 2.0 * a)
    np.testing.assert_array_equal(up.get().numpy(), b)
    assert up.allocations == 1


def test_uploader_errors(device):
    for depth in (0, -1, 17):
        with pytest.raises(ValueError, match="depth"):
            _C.Uploader(device, depth)
    with pytest.raises(ValueError, match="unknown device"):
        _C.Uploader("gpu:0", 2)
    up = _C.Uploader(device, 1)
    with pytest.raises(ValueError, match="Uploader.get: nothing is waiting"):
        up.get()
    with pytest.raises(ValueError, match="Uploader.put: expected a float32 or int32 array, got float64"):
        up.put(np.zeros(3))
    up.put(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="already waiting"):
        up.put(np.zeros(3, np.float32))
    assert up.pending == 1
    np.testing.assert_array_equal(up.get().numpy(), np.zeros(3, np.float32))


def _batches(rng, count, n=4):
    return [(rng.standard_normal((n, 5, 5, 3)).astype(np.float32), rng.integers(0, 10, n))
            for _ in range(count)]


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_upload_batches_yields_every_batch_in_order(device, rng, count):
    batches = _batches(rng, count)
    seen = []
    for x, y in convnet.upload_batches(iter(batches), device, classes=10):
        if device != "cpu":
            assert isinstance(x, convnet.Tensor) and x.device == device and y.dtype == "int32"
        seen.append((np.asarray(x), np.asarray(y)))
    assert len(seen) == count
    for (x, y), (gx, gy) in zip(batches, seen):
        np.testing.assert_array_equal(gx, x)
        np.testing.assert_array_equal(gy, y)


def test_upload_batches_held_batches_stay_intact(device, rng):
    batches = _batches(rng, 6)
    kept = list(convnet.upload_batches(batches, device, classes=10))  # every tensor held at once
    for (x, y), (gx, gy) in zip(batches, kept):
        np.testing.assert_array_equal(np.asarray(gx), x)
        np.testing.assert_array_equal(np.asarray(gy), y)


def test_upload_batches_checks_labels(cuda_device, rng):
    # (on the CPU the batches pass through and Net.forward checks them: tests/test_robustness.py)
    x = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    bad = [(x, np.array([0, 1])), (x, np.array([3, 10]))]
    with pytest.raises(ValueError, match="upload_batches: label 10 at row 1 is outside"):
        list(convnet.upload_batches(bad, cuda_device, classes=10))
    with pytest.raises(ValueError, match="upload_batches: labels must be integers"):
        list(convnet.upload_batches([(x, np.array([0.5, 1.0]))], cuda_device, classes=10))


def test_training_on_uploaded_batches_equals_numpy_feeding(device, rng):
    seed = int(rng.integers(1 << 30))
    fed, uploaded = Net(small_dag(), device=device, seed=seed), Net(small_dag(), device=device, seed=seed)
    batches = [(rng.standard_normal((5, 6, 6, 3)).astype(np.float32), rng.integers(0, 5, 5)) for _ in range(4)]
    for step, (x, y) in enumerate(batches):
        fed.train_step(x, y.astype(np.int32), 0.05, step=step, seed=9)
    for step, (x, y) in enumerate(convnet.upload_batches(batches, device, classes=5)):
        uploaded.train_step(x, y, 0.05, step=step, seed=9)
    for (name, p), (_, q) in zip(fed.named_params(), uploaded.named_params()):
        np.testing.assert_array_equal(q.value.numpy(), p.value.numpy(), err_msg=name)
