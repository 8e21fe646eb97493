"""Tensors, devices and copies: round trips, device moves, the caching allocator, out-of-memory."""
import numpy as np
import pytest

import convnet
from conftest import to_device


def test_devices_and_build_info():
    devs = convnet.devices()
    assert devs[0] == "cpu"
    info = convnet.build_info()
    assert isinstance(info["cuda"], bool)
    assert info["cpu_threads"] >= 1
    assert len(devs) == 1 + info["cuda_devices"]
    assert all(d == f"cuda:{i}" for i, d in enumerate(devs[1:]))
    if info["cuda"]:
        assert info["cuda_architectures"], "a CUDA build names its architectures"


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5), (2, 3, 4, 5)])
def test_numpy_round_trip(device, rng, dtype, shape):
    a = (rng.standard_normal(shape) * 100).astype(dtype)
    t = convnet.from_numpy(a, device)
    assert t.shape == shape and t.device == device and t.dtype == np.dtype(dtype).name
    assert t.numel == a.size and t.nbytes == a.nbytes
    back = t.numpy()
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, a)
    np.testing.assert_array_equal(np.asarray(t), a)


def test_from_strided_numpy(device, rng):
    a = rng.standard_normal((6, 8)).astype(np.float32)
    view = a[::2, 1::3]  # not contiguous
    np.testing.assert_array_equal(convnet.from_numpy(view, device).numpy(), view)


def test_to_moves_between_devices(device, rng):
    a = rng.standard_normal((4, 5)).astype(np.float32)
    t = convnet.from_numpy(a, "cpu")
    moved = t.to(device)
    assert moved.device == device
    np.testing.assert_array_equal(moved.numpy(), a)
    assert t.to("cpu").same_storage(t), "to() the same device returns the tensor itself"
    np.testing.assert_array_equal(moved.to("cpu").numpy(), a)


def test_copy_within_and_across_devices(device, rng):
    a = rng.standard_normal((3, 7)).astype(np.float32)
    src = convnet.from_numpy(a, device)
    for dst_device in convnet.devices():
        dst = convnet.full((3, 7), float("nan"), dst_device)
        dst.copy_(src)
        np.testing.assert_array_equal(dst.numpy(), a)
        convnet.ops.copy_(dst, src)  # the same call as an op
        np.testing.assert_array_equal(dst.numpy(), a)


def test_copy_between_two_tensors_on_one_gpu(cuda_device, rng):
    a = rng.standard_normal(1000).astype(np.float32)
    src = convnet.from_numpy(a, cuda_device)
    dst = convnet.empty((1000,), cuda_device)
    convnet.ops.copy_(dst, src)
    np.testing.assert_array_equal(dst.numpy(), a)


def test_peer_copy_between_gpus(rng):
    if len(convnet.devices()) < 3:
        pytest.skip("needs two CUDA devices")
    a = rng.standard_normal((64, 33)).astype(np.float32)
    src = convnet.from_numpy(a, "cuda:0")
    dst = convnet.empty(a.shape, "cuda:1")
    dst.copy_(src)
    np.testing.assert_array_equal(dst.numpy(), a)
    assert isinstance(convnet.can_access_peer("cuda:0", "cuda:1"), bool)


def test_empty_zeros_full_reshape(device):
    z = convnet.zeros((2, 3), device)
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3), np.float32))
    zi = convnet.zeros((4,), device, "int32")
    np.testing.assert_array_equal(zi.numpy(), np.zeros(4, np.int32))
    f = convnet.full((5,), 2.5, device)
    np.testing.assert_array_equal(f.numpy(), np.full(5, 2.5, np.float32))
    r = f.reshape((1, 5))
    assert r.shape == (1, 5) and r.same_storage(f)
    with pytest.raises(ValueError, match="reshape"):
        f.reshape((2, 3))
    assert "float32 (2, 3) on " + device in repr(z)


def test_caching_allocator_reuses_blocks(cuda_device):
    convnet.synchronize(cuda_device)
    t = convnet.empty((1 << 20,), cuda_device)
    held = convnet.memory_stats(cuda_device)["allocated_bytes"]
    del t
    stats = convnet.memory_stats(cuda_device)
    assert stats["allocated_bytes"] == held - (4 << 20)
    assert stats["cached_bytes"] >= 4 << 20
    kept = convnet.empty((1 << 20,), cuda_device)  # served from the cache (kept alive for the check)
    assert convnet.memory_stats(cuda_device)["cached_bytes"] == stats["cached_bytes"] - (4 << 20)
    convnet.empty_cache(cuda_device)
    assert convnet.memory_stats(cuda_device)["cached_bytes"] == 0


def test_out_of_memory_is_memory_error_and_process_goes_on(device):
    huge = 1 << 46  # 256 TiB of float32: no machine has it
    with pytest.raises(MemoryError, match=str(huge * 4) if device.startswith("cuda") else "bytes"):
        convnet.empty((huge,), device)
    t = convnet.full((3,), 1.0, device)  # still usable
    np.testing.assert_array_equal(t.numpy(), np.ones(3, np.float32))


def test_layout_helpers(rng):
    from convnet.tensor import kcrs_to_krsc, krsc_to_kcrs, nchw_to_nhwc, nhwc_to_nchw
    x = rng.standard_normal((2, 3, 4, 5))
    assert nchw_to_nhwc(x).shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(nhwc_to_nchw(nchw_to_nhwc(x)), x)
    w = rng.standard_normal((8, 3, 5, 5))
    assert kcrs_to_krsc(w).shape == (8, 5, 5, 3)
    np.testing.assert_array_equal(krsc_to_kcrs(kcrs_to_krsc(w)), w)


def test_to_device_helper_matches(device, rng):
    a = rng.standard_normal((2, 2))
    np.testing.assert_array_equal(to_device(a, device).numpy(), a.astype(np.float32))
