"""Reliability (issue 12), the op and tensor side: no input crashes the interpreter, and no wrong
answer comes back silently.

Categories: 1 sizes that overflow, 2 LRN edge cases, 3 NaN semantics at op level (PyTorch's), 4 a
net usable after a MemoryError, 6 labels never silently converted, 10 every CPU driver path at 1, 2
and 3 threads. Every case that could kill the process runs in a subprocess (`run_isolated`), so a
regression shows as a failed test with the signal, not a dead test run. The property-based fuzzer
is in tests/test_fuzz_ops.py.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import convnet
import reference as R
from conftest import poisoned, to_device
from convnet import _C, ops
from gradcheck import assert_close


def run_isolated(code: str, timeout: float = 120.0) -> str:
    """Run `code` in a fresh interpreter; fail (naming the signal) unless it exits 0; -> its stdout."""
    prologue = textwrap.dedent("""
        import resource, sys
        import numpy as np
        import convnet
        from convnet import _C, ops
        def limit_memory(extra_bytes):
            # RLIMIT_AS = what the process maps now + extra_bytes
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[0])
            cap = pages * resource.getpagesize() + extra_bytes
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        def expect(exc, fn, *words):
            try:
                fn()
            except exc as e:
                for w in words:
                    assert w in str(e), (w, str(e))
                print("OK", type(e).__name__, e)
                return
            raise AssertionError(f"no {exc.__name__}")
    """)
    proc = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(f"subprocess {how}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


# ------------------------------------------------------------------------------------------------
# 1. sizes that overflow


def test_huge_tensors_raise_instead_of_crashing():
    out = run_isolated("""
        expect(ValueError, lambda: _C.Tensor.zeros((2**62,)), "2^62 bytes")
        expect(ValueError, lambda: _C.Tensor.empty((2**62,)), "2^62 bytes")
        expect(ValueError, lambda: convnet.zeros((2**62,)), "2^62 bytes")
        expect(ValueError, lambda: _C.Tensor.empty((2**32, 2**32)), "2^63")
        expect(ValueError, lambda: _C.Tensor.empty((2**31, 2**31, 4)), "2^63")
        expect(ValueError, lambda: _C.Tensor.empty((3, -1)), "negative")
        # possible in principle, more than the machine has: MemoryError naming the bytes
        expect(MemoryError, lambda: _C.Tensor.empty((2**60,)), str(2**62) + " bytes")
        # an empty tensor is fine however large its other dimensions
        assert _C.Tensor.empty((0, 2**40, 2**40)).numel == 0
    """)
    assert out.count("OK") == 7


def test_reshape_refuses_products_that_wrap():
    t = convnet.zeros((4,))
    for shape in [(2**32, 2**32), (2**62, 4), (-2, -2), (2**63 - 1, 2**63 - 1, 0, -1)]:
        with pytest.raises(ValueError, match="reshape"):
            t.reshape(shape)
    assert t.reshape((2, 2)).shape == (2, 2)
    assert convnet.zeros((0,)).reshape((2**40, 0)).shape == (2**40, 0)


@pytest.mark.parametrize("pad", [(2**31 - 1, 0), (0, 2**31 - 1), (2**30, 2**30)])
def test_conv_huge_pad_is_refused(pad):
    with pytest.raises(ValueError, match="padded input"):
        _C.conv_output_shape((1, 8, 8, 3), (4, 3, 3, 3), (1, 1), pad)
    x, w, y = convnet.zeros((1, 8, 8, 3)), convnet.zeros((4, 3, 3, 3)), convnet.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="conv_forward"):
        ops.conv_forward(x, w, None, y, (1, 1), pad)
    with pytest.raises(ValueError, match="pool_output_shape"):
        _C.pool_output_shape((1, 8, 8, 3), (2**31 - 1, 2**31 - 1), (1, 1), (2**30, 2**30))


@pytest.mark.parametrize("i", range(4))
def test_output_shape_helpers_refuse_negative_dims(i):
    xs = [2, 8, 8, 3]
    xs[i] = -xs[i]
    with pytest.raises(ValueError, match="negative"):
        _C.conv_output_shape(xs, (4, 3, 3, 3))
    with pytest.raises(ValueError, match="negative"):
        _C.pool_output_shape(xs, (2, 2), (2, 2))
    ws = [4, 3, 3, 3]
    ws[i] = -ws[i]
    with pytest.raises(ValueError):
        _C.conv_output_shape((2, 8, 8, 3), ws)


def test_int_index_limits_are_checked():
    # shapes whose patch rows or pixels overflow the kernels' 32-bit indices: ValueError, not a wrap
    with pytest.raises(ValueError, match="over 2\\^31"):
        _C.conv_output_shape((2**20, 2**10, 2**10, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="over 2\\^31"):
        _C.pool_output_shape((1, 2**16, 2**16, 1), (1, 1), (1, 1))
    assert _C.conv_output_shape((2, 8, 8, 3), (4, 3, 3, 3), (1, 1), (1, 1)) == (2, 8, 8, 4)


def test_kernel_workspace_oom_is_memory_error_with_bytes():
    # LRN's per-thread workspace (4 C floats a thread) under a memory limit: MemoryError naming the
    # bytes, where it used to abort the process from inside the OpenMP region.
    out = run_isolated("""
        C = 1 << 25
        x = convnet.zeros((1, 1, 1, C)); y = convnet.zeros((1, 1, 1, C)); dx = convnet.zeros((1, 1, 1, C))
        limit_memory(64 << 20)
        expect(MemoryError, lambda: ops.lrn_forward(x, y), "lrn", "bytes")
        expect(MemoryError, lambda: ops.lrn_backward(x, y, x, dx), "bytes")
        expect(MemoryError, lambda: _C.Tensor.empty((1 << 28,)), str(1 << 30) + " bytes")
    """)
    assert out.count("OK") == 3


# ------------------------------------------------------------------------------------------------
# 2. LRN edge cases


def test_lrn_zero_channels_and_empty_batches():
    out = run_isolated("""
        for shape in [(2, 3, 3, 0), (0, 3, 3, 5), (2, 0, 3, 5)]:
            x, y, dx = convnet.zeros(shape), convnet.zeros(shape), convnet.zeros(shape)
            ops.lrn_forward(x, y)
            ops.lrn_backward(x, y, x, dx)
            ops.lrn_forward(x, y, size=2**31 - 1)
        print("OK")
    """)
    assert "OK" in out


def test_net_with_zero_data_channels_does_not_crash():
    out = run_isolated("""
        from convnet.net import Net
        try:
            net = Net([{"name": "data", "type": "data", "shape": [4, 4, 0]},
                       {"name": "lrn", "type": "lrn", "inputs": ["data"]}], device="cpu")
            out = net.forward(np.zeros((2, 4, 4, 0), np.float32)).numpy()
            assert out.shape == (2, 4, 4, 0)
        except ValueError as e:
            print("ValueError", e)
        print("OK")
    """)
    assert "OK" in out


@pytest.mark.parametrize("size", [2**31 - 1, 2**30, 17, 12, 9])
def test_lrn_huge_windows_equal_the_reference(device, rng, size):
    x = rng.standard_normal((2, 2, 3, 5))
    dy = rng.standard_normal(x.shape)
    params = dict(alpha=0.3, beta=0.75, k=1.5)
    y, dx = poisoned(x.shape, device), poisoned(x.shape, device)
    xt = to_device(x, device)
    ops.lrn_forward(xt, y, size=size, **params)
    ops.lrn_backward(xt, y, to_device(dy, device), dx, size=size, **params)
    assert_close(y.numpy(), R.lrn_forward(x, size=size, **params), 1e-5)
    assert_close(dx.numpy(), R.lrn_backward(x, dy, size=size, **params), 1e-4)


def test_lrn_huge_window_under_a_memory_limit():
    # the window is clipped to C: no O(size) buffer, so a 2^31 - 1 window needs no memory to speak of
    out = run_isolated("""
        x = convnet.from_numpy(np.random.default_rng(0).standard_normal((4, 3, 3, 6)).astype(np.float32))
        y = convnet.zeros(x.shape); dx = convnet.zeros(x.shape)
        limit_memory(256 << 20)
        ops.lrn_forward(x, y, size=2**31 - 1)
        ops.lrn_backward(x, y, x, dx, size=2**31 - 1)
        assert np.isfinite(y.numpy()).all() and np.isfinite(dx.numpy()).all()
        print("OK")
    """)
    assert "OK" in out


# ------------------------------------------------------------------------------------------------
# 3. NaN semantics at op level: PyTorch's, on every backend, fused and unfused


def with_specials(rng, shape):
    x = rng.standard_normal(shape)
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=max(3, flat.size // 5), replace=False)
    flat[idx[0::3]] = np.nan
    flat[idx[1::3]] = np.inf
    flat[idx[2::3]] = -np.inf
    return x


def same_nan(a, b):
    """Equal where finite, NaN exactly where the reference has NaN, infinities equal."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN positions differ"
    fin = np.isfinite(b)
    assert np.array_equal(a[~fin & ~np.isnan(b)], b[~fin & ~np.isnan(b)])
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-5, atol=1e-6)


def test_relu_keeps_nan_standalone(device, rng):
    x = with_specials(rng, (7, 13))
    y = poisoned(x.shape, device)
    ops.relu_forward(to_device(x, device), y)
    same_nan(y.numpy(), R.relu_forward(x))
    assert np.isnan(y.numpy()[np.isnan(x)]).all()
    dy = rng.standard_normal(x.shape)
    dx = poisoned(x.shape, device)
    ops.relu_backward(y, to_device(dy, device), dx)
    same_nan(dx.numpy(), R.relu_backward(R.relu_forward(x).astype(np.float32), dy))


def test_fused_and_unfused_relu_agree_on_nan(device, rng):
    # conv and fc with relu=True against the op followed by standalone relu: the same NaN pattern
    x = rng.standard_normal((2, 5, 5, 3))
    x[0, 2, 2, 1] = np.nan
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    fused, plain, after = (poisoned((2, 5, 5, 4), device) for _ in range(3))
    args = (to_device(x, device), to_device(w, device), to_device(b, device))
    ops.conv_forward(*args, fused, (1, 1), (1, 1), 1, False, True)
    ops.conv_forward(*args, plain, (1, 1), (1, 1))
    ops.relu_forward(plain, after)
    assert np.isnan(fused.numpy()).sum() > 0
    same_nan(fused.numpy(), after.numpy())
    same_nan(fused.numpy(), R.relu_forward(R.conv_forward(x, w, b, pad=(1, 1))))
    xf = rng.standard_normal((3, 6))
    xf[1, 2] = np.nan
    wf = rng.standard_normal((5, 6))
    bf = rng.standard_normal(5)
    f_fused, f_plain, f_after = (poisoned((3, 5), device) for _ in range(3))
    fargs = (to_device(xf, device), to_device(wf, device), to_device(bf, device))
    ops.fc_forward(*fargs, f_fused, False, True)
    ops.fc_forward(*fargs, f_plain)
    ops.relu_forward(f_plain, f_after)
    same_nan(f_fused.numpy(), f_after.numpy())
    assert np.isnan(f_fused.numpy()[1]).all()


def test_max_pool_propagates_nan_and_routes_its_gradient(device, rng):
    x = rng.standard_normal((2, 7, 7, 3))
    x[0, 1, 1, 0] = np.nan
    x[1, 4, 5, 2] = np.nan
    x[1, 4, 6, 2] = np.nan  # two NaN in one window: the first one wins
    x[0, 5, 5, 1] = np.inf
    x[1, 0, 0, 1] = -np.inf
    y, am = poisoned((2, 3, 3, 3), device), poisoned((2, 3, 3, 3), device, "int32")
    ops.max_pool_forward(to_device(x, device), y, am, (3, 3), (2, 2))
    ry, ram = R.max_pool_forward(x, 3, 3, (2, 2))
    same_nan(y.numpy(), ry)
    np.testing.assert_array_equal(am.numpy(), ram)
    assert np.isnan(y.numpy()).sum() >= 2
    dy = rng.standard_normal(ry.shape)
    dx = poisoned(x.shape, device)
    ops.max_pool_backward(to_device(dy, device), am, dx, (3, 3), (2, 2))
    assert_close(dx.numpy(), R.max_pool_backward(dy, ram, x.shape), 1e-6)
    assert dx.numpy()[0, 1, 1, 0] == pytest.approx(dy[0, 0, 0, 0] + (dy[0, 0, 1, 0] if ram[0, 0, 1, 0] == 8 else 0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_loss_never_counts_a_non_finite_row_as_a_hit(device, rng, bad):
    N, C = 6, 7
    logits = rng.standard_normal((N, C))
    labels = rng.integers(0, C, N)
    logits[np.arange(N), labels] += 10.0  # every row a top-1 hit ...
    logits[1, :] = np.nan                 # ... except a NaN row,
    logits[3, labels[3]] = bad            # a row with one bad entry at the label,
    logits[4, (labels[4] + 1) % C] = bad  # and one elsewhere
    stats = poisoned((3,), device)
    ops.softmax_cross_entropy(to_device(logits, device), to_device(labels, device, np.int32), None, stats)
    _, top1, top5, _ = R.softmax_cross_entropy(logits, labels)
    s = stats.numpy()
    assert (s[1], s[2]) == (top1, top5) == (N - 3, N - 3)
    assert not np.isfinite(s[0])


def test_all_nan_net_is_not_accurate():
    from convnet.net import Net
    net = Net([{"name": "data", "type": "data", "shape": [4, 4, 3]},
               {"name": "fc", "type": "fc", "inputs": ["data"], "outputs": 5},
               {"name": "loss", "type": "softmax", "inputs": ["fc"]}], device="cpu")
    for _, p in net.named_params():
        p.value.fill_(float("nan"))
    stats = net.forward(np.ones((8, 4, 4, 3), np.float32), np.arange(8) % 5).numpy()
    assert stats[1] == 0 and stats[2] == 0 and np.isnan(stats[0])


# ------------------------------------------------------------------------------------------------
# 4. a net stays usable after a MemoryError


def test_net_usable_after_memory_error():
    out = run_isolated("""
        from convnet.net import Net
        net = Net([{"name": "data", "type": "data", "shape": [8, 8, 3]},
                   {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 64, "size": 3, "pad": 1},
                   {"name": "pool1", "type": "maxpool", "inputs": ["conv1"], "size": 2, "stride": 2},
                   {"name": "fc", "type": "fc", "inputs": ["pool1"], "outputs": 5},
                   {"name": "loss", "type": "softmax", "inputs": ["fc"]}], device="cpu", seed=1)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
        labels = np.arange(4) % 5
        before = net.forward(x, labels, train=True).numpy().copy()
        net.backward()
        big = convnet.from_numpy(np.zeros((20000, 8, 8, 3), np.float32))  # 15 MB in, 330 MB of conv1 out
        limit_memory(100 << 20)
        try:
            net.forward(big, np.zeros(20000, np.int64), train=True)
            raise AssertionError("no MemoryError")
        except MemoryError as e:
            print("OK MemoryError", e)
        again = net.forward(x, labels, train=True).numpy()
        net.backward()
        assert np.array_equal(before, again), (before, again)
        print("OK same")
    """)
    assert "OK same" in out


# ------------------------------------------------------------------------------------------------
# 6. labels


def fc_net():
    from convnet.net import Net
    return Net([{"name": "data", "type": "data", "shape": [2, 2, 3]},
                {"name": "fc", "type": "fc", "inputs": ["data"], "outputs": 4},
                {"name": "loss", "type": "softmax", "inputs": ["fc"]}], device="cpu", seed=0)


@pytest.mark.parametrize("labels, match", [
    (np.array([0, 2**32 + 3], np.int64), "outside \\[0, 4\\)"),
    (np.array([0, 0.9]), "float"),
    (np.array([0.0, 1.0], np.float32), "float"),
    (np.array([0, -1]), "outside"),
    (np.array([0, 4]), "outside"),
    (np.array([True, False]), "integers"),
    (np.array([[0, 1]]), "1-D"),
    (["a", "b"], "integers"),
])
def test_bad_labels_are_refused(labels, match):
    x = np.zeros((2, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        fc_net().forward(x, labels)
    with pytest.raises(ValueError):
        convnet.tensor.as_labels(labels, 4)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_labels_in_range_are_accepted(dtype):
    x = np.random.default_rng(0).standard_normal((3, 2, 2, 3)).astype(np.float32)
    net = fc_net()
    a = net.forward(x, np.array([0, 3, 1], dtype)).numpy()
    b = net.forward(x, np.array([0, 3, 1], np.int32)).numpy()
    assert np.array_equal(a, b)


def test_label_tensors_must_be_int32():
    net = fc_net()
    x = np.zeros((2, 2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="int32"):
        net.forward(x, convnet.zeros((2,)))
    with pytest.raises(ValueError, match="int32"):
        net.forward(x, convnet.from_numpy(np.zeros(3, np.int32)))
    with pytest.raises(ValueError, match="float32 or int32"):
        convnet.from_numpy(np.array([0, 2**32 + 3], np.int64))


# ------------------------------------------------------------------------------------------------
# 10. every CPU driver at 1, 2 and 3 threads (small shapes: the suite stays fast)

PATHS = ["serial", "parallel", "auto"]
THREADS = [1, 2, 3]


@pytest.fixture(params=[(p, t) for p in PATHS for t in THREADS], ids=lambda pt: f"{pt[0]}-{pt[1]}t")
def cpu_path(request):
    """Force the CPU selectors' path and the thread count for one test, then restore both."""
    path, threads = request.param
    old_path, old_threads = _C.cpu_path(), _C.cpu_threads()
    _C.set_cpu_path(path)
    _C.set_cpu_threads(threads)
    yield path, threads
    _C.set_cpu_path(old_path)
    _C.set_cpu_threads(old_threads)


def test_path_hooks_validate():
    with pytest.raises(ValueError, match="serial"):
        _C.set_cpu_path("fast")
    with pytest.raises(ValueError, match=">= 1"):
        _C.set_cpu_threads(0)


CONV_CASES = [  # (N, H, W, C, K, R, stride, pad, groups)
    (1, 5, 5, 3, 4, 3, 1, 1, 1),
    (5, 6, 5, 4, 6, 3, 2, 1, 2),
    (3, 4, 4, 32, 32, 3, 1, 1, 1),    # the patch-matrix-free paths (Cg % 16, % 32)
    (2, 4, 4, 128, 16, 3, 1, 1, 1),   # backward-data as a turned-filter forward (Cg >= 128)
    (7, 3, 3, 5, 3, 1, 1, 0, 1),      # pointwise
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv_every_path(cpu_path, rng, case):
    N, H, W, C, K, Rk, st, pd, g = case
    x = rng.standard_normal((N, H, W, C))
    w = rng.standard_normal((K, Rk, Rk, C // g)) / np.sqrt(Rk * Rk * C)
    b = rng.standard_normal(K)
    stride, pad = (st, st), (pd, pd)
    ry = R.conv_forward(x, w, b, stride, pad, g)
    dy = rng.standard_normal(ry.shape)
    rdx, rdw, rdb = R.conv_backward(dy, x, w, stride, pad, g)
    y = poisoned(ry.shape, "cpu")
    ops.conv_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu"), y, stride, pad, g)
    assert_close(y.numpy(), ry, 1e-5)
    dx, dw, db = poisoned(x.shape, "cpu"), poisoned(w.shape, "cpu"), poisoned((K,), "cpu")
    ops.conv_backward_data(to_device(dy, "cpu"), to_device(w, "cpu"), dx, stride, pad, g)
    ops.conv_backward_filter(to_device(dy, "cpu"), to_device(x, "cpu"), dw, db, stride, pad, g)
    assert_close(dx.numpy(), rdx, 1e-5)
    assert_close(dw.numpy(), rdw, 1e-5)
    assert_close(db.numpy(), rdb, 1e-5)
    # accumulate adds to what is there
    ops.conv_backward_filter(to_device(dy, "cpu"), to_device(x, "cpu"), dw, None, stride, pad, g, True)
    assert_close(dw.numpy(), 2 * rdw, 1e-5)


@pytest.mark.parametrize("mnk", [(1, 7, 9), (9, 1, 5), (13, 35, 17), (30, 40, 260)])
def test_gemm_every_path(cpu_path, rng, mnk):
    M, N, K = mnk
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((K, M) if ta else (M, K))
            b = rng.standard_normal((N, K) if tb else (K, N))
            c0 = rng.standard_normal((M, N))
            c = to_device(c0, "cpu")
            ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c, ta, tb, 0.5, 0.25)
            assert_close(c.numpy(), R.gemm(a, b, ta, tb, 0.5, 0.25, c0), 1e-5)


def test_small_ops_every_path(cpu_path, rng):
    x = with_specials(rng, (3, 5, 5, 6))
    y, am = poisoned((3, 2, 2, 6), "cpu"), poisoned((3, 2, 2, 6), "cpu", "int32")
    ops.max_pool_forward(to_device(x, "cpu"), y, am, (3, 3), (2, 2))
    ry, ram = R.max_pool_forward(x, 3, 3, (2, 2))
    same_nan(y.numpy(), ry)
    np.testing.assert_array_equal(am.numpy(), ram)
    xa = rng.standard_normal((3, 5, 5, 6))
    ya = poisoned((3, 3, 3, 6), "cpu")
    ops.avg_pool_forward(to_device(xa, "cpu"), ya, (3, 3), (2, 2), (1, 1))
    assert_close(ya.numpy(), R.avg_pool_forward(xa, 3, 3, (2, 2), (1, 1)), 1e-5)
    yl = poisoned(xa.shape, "cpu")
    ops.lrn_forward(to_device(xa, "cpu"), yl, 5, 0.1, 0.75, 1.0)
    assert_close(yl.numpy(), R.lrn_forward(xa, 5, 0.1, 0.75, 1.0), 1e-5)
    yr = poisoned(x.shape, "cpu")
    ops.relu_forward(to_device(x, "cpu"), yr)
    same_nan(yr.numpy(), R.relu_forward(x))
    logits = rng.standard_normal((9, 7))
    labels = rng.integers(0, 7, 9)
    stats, dl = poisoned((3,), "cpu"), poisoned(logits.shape, "cpu")
    ops.softmax_cross_entropy(to_device(logits, "cpu"), to_device(labels, "cpu", np.int32), dl, stats)
    loss, t1, t5, rdl = R.softmax_cross_entropy(logits, labels)
    assert stats.numpy()[1:].tolist() == [t1, t5]
    assert_close(dl.numpy(), rdl, 1e-5)
    dy = rng.standard_normal((9, 7))
    db = poisoned((7,), "cpu")
    ops.fc_backward_weights(to_device(dy, "cpu"), to_device(rng.standard_normal((9, 4)), "cpu"),
                            poisoned((7, 4), "cpu"), db)
    assert_close(db.numpy(), dy.sum(axis=0), 1e-5)
