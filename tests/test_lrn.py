"""Cross-channel LRN forward and backward against the float64 reference (tests/reference.py).

Inputs are x ~ N(0, 10^2) so alpha * sum(x^2) is not negligible next to k: with the paper's alpha =
1e-4 the normalisation moves y by a few percent, and the alpha = 0.1 cases make it dominate (scale ~
50), so a wrong window or a wrong backward term cannot hide behind an almost-identity map.
"""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device
from gradcheck import assert_close, check_gradient

PAPER = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


def lrn_forward(x, device, **kw):
    y = poisoned(x.shape, device)
    convnet.ops.lrn_forward(to_device(x, device), y, **kw)
    return y.numpy()


def lrn_backward(x, dy, device, **kw):
    xt = to_device(x, device)
    y = poisoned(x.shape, device)
    convnet.ops.lrn_forward(xt, y, **kw)
    dx = poisoned(x.shape, device)
    convnet.ops.lrn_backward(xt, y, to_device(dy, device), dx, **kw)
    return dx.numpy()


def ref_params(size, alpha, beta, k, alpha_over_size=False):
    return dict(size=size, alpha=alpha / size if alpha_over_size else alpha, beta=beta, k=k)


def inputs(rng, shape, sigma=10.0):
    x = (rng.standard_normal(shape) * sigma).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


# (shape, size, alpha, beta, k, alpha_over_size). Sizes above 16 take the CPU's running-sum path.
CASES = [
    ((2, 5, 7, 96), 5, 1e-4, 0.75, 2.0, False),   # the paper's defaults
    ((2, 5, 7, 96), 5, 1e-4, 0.75, 2.0, True),    # cuda-convnet / PyTorch: alpha / size
    ((2, 4, 3, 33), 5, 0.1, 0.75, 2.0, False),    # strong normalisation
    ((1, 3, 4, 20), 1, 0.1, 0.75, 1.0, False),
    ((1, 3, 4, 20), 3, 0.1, 0.75, 2.0, False),
    ((1, 3, 4, 21), 4, 0.1, 0.75, 2.0, False),    # even size: window c-2 .. c+1
    ((1, 3, 4, 19), 7, 0.05, 0.75, 2.0, True),
    ((2, 3, 3, 2), 5, 0.1, 0.75, 2.0, False),     # C smaller than the window
    ((2, 3, 3, 3), 7, 0.1, 0.75, 2.0, False),
    ((1, 2, 3, 1), 4, 0.1, 0.75, 2.0, False),
    ((1, 3, 4, 17), 5, 0.1, 0.5, 1.5, False),     # beta != 0.75: the general power path
    ((1, 3, 4, 17), 4, 0.1, 1.0, 2.0, False),
    ((1, 3, 4, 17), 3, 0.1, 0.0, 2.0, False),     # beta = 0: y = x
    ((1, 2, 3, 40), 17, 0.02, 0.75, 2.0, False),  # wide windows (CPU running sum)
    ((1, 2, 3, 40), 30, 0.02, 0.6, 2.0, False),
    ((1, 2, 2, 20), 33, 0.02, 0.75, 2.0, False),  # wide window, C < size (the reference needs C >= size//2)
]


def case_id(case):
    shape, size, alpha, beta, k, over = case
    return f"C{shape[-1]}-n{size}-a{alpha:g}-b{beta:g}-k{k:g}" + ("-over" if over else "")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_lrn_forward_backward(device, rng, case):
    shape, size, alpha, beta, k, over = case
    x, dy = inputs(rng, shape)
    kw = dict(size=size, alpha=alpha, beta=beta, k=k, alpha_over_size=over)
    rp = ref_params(size, alpha, beta, k, over)
    assert_close(lrn_forward(x, device, **kw), ref.lrn_forward(x.astype(np.float64), **rp), what="y")
    assert_close(lrn_backward(x, dy, device, **kw), ref.lrn_backward(x.astype(np.float64), dy, **rp), what="dx")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_lrn_gradient(device, rng, case):
    shape, size, alpha, beta, k, over = case
    shape = (1, 2, 2, shape[-1])
    x, dy = inputs(rng, shape)
    kw = dict(size=size, alpha=alpha, beta=beta, k=k, alpha_over_size=over)
    rp = ref_params(size, alpha, beta, k, over)
    dx = lrn_backward(x, dy, device, **kw)
    check_gradient(dx, lambda v: ref.lrn_forward(v, **rp), x.astype(np.float64), dy.astype(np.float64), rng,
                   what="lrn dx")


def test_lrn_exact_zeros(device, rng):
    """ReLU outputs feed LRN: exact zeros must give finite, correct gradients (no y / x)."""
    x, dy = inputs(rng, (2, 3, 3, 48))
    x[rng.random(x.shape) < 0.5] = 0.0
    x[0, 0, 0, :] = 0.0
    kw = dict(size=5, alpha=0.1, beta=0.75, k=2.0)
    assert_close(lrn_forward(x, device, **kw), ref.lrn_forward(x.astype(np.float64), **kw), what="y")
    assert_close(lrn_backward(x, dy, device, **kw), ref.lrn_backward(x.astype(np.float64), dy, **kw), what="dx")


@pytest.mark.parametrize("C", [1500, 2100, 8300])
def test_lrn_many_channels(device, rng, C):
    """Wide pixels: the CUDA kernels stage one pixel per block up to 2048 channels (1500), and past
    that take their global-memory fallback (2100, 8300)."""
    x, dy = inputs(rng, (1, 1, 2, C))
    kw = dict(size=5, alpha=0.1, beta=0.75, k=2.0)
    assert_close(lrn_forward(x, device, **kw), ref.lrn_forward(x.astype(np.float64), **kw), what="y")
    assert_close(lrn_backward(x, dy, device, **kw), ref.lrn_backward(x.astype(np.float64), dy, **kw), what="dx")


# AlexNet-2012: LRN after conv1 (55x55x96) and conv2 (27x27x256).
@pytest.mark.parametrize("shape", [(1, 55, 55, 96), (2, 27, 27, 256)], ids=["conv1", "conv2"])
def test_lrn_alexnet_shapes(device, rng, shape):
    x, dy = inputs(rng, shape)
    for over in (False, True):
        kw = dict(PAPER, alpha_over_size=over)
        rp = ref_params(5, 1e-4, 0.75, 2.0, over)
        assert_close(lrn_forward(x, device, **kw), ref.lrn_forward(x.astype(np.float64), **rp), what="y")
        assert_close(lrn_backward(x, dy, device, **kw), ref.lrn_backward(x.astype(np.float64), dy, **rp),
                     what="dx")


def test_lrn_bad_arguments(device, rng):
    x = to_device(rng.standard_normal((1, 3, 3, 8)), device)
    y = poisoned((1, 3, 3, 8), device)
    with pytest.raises(ValueError, match=r"lrn_forward.*\(1, 3, 4, 8\)"):
        convnet.ops.lrn_forward(x, poisoned((1, 3, 4, 8), device))
    with pytest.raises(ValueError, match="lrn_forward.*size"):
        convnet.ops.lrn_forward(x, y, size=0)
    with pytest.raises(ValueError, match="lrn_forward.*k > 0"):
        convnet.ops.lrn_forward(x, y, k=0.0)
    with pytest.raises(ValueError, match=r"lrn_forward.*4-D"):
        convnet.ops.lrn_forward(x.reshape((9, 8)), poisoned((9, 8), device))
    with pytest.raises(ValueError, match=r"lrn_backward.*dx.*\(1, 3, 3, 7\)"):
        convnet.ops.lrn_backward(x, y, y, poisoned((1, 3, 3, 7), device))
    # the process stays usable
    convnet.ops.lrn_forward(x, y)
    assert np.isfinite(y.numpy()).all()


def test_lrn_cpu_matches_cuda(cuda_device, rng):
    x, dy = inputs(rng, (2, 9, 9, 96))
    for kw in (PAPER, dict(size=4, alpha=0.1, beta=0.6, k=1.0)):
        y_cpu, y_gpu = lrn_forward(x, "cpu", **kw), lrn_forward(x, cuda_device, **kw)
        assert_close(y_gpu, y_cpu, tol=1e-6, what="y cuda vs cpu")
        dx_cpu, dx_gpu = lrn_backward(x, dy, "cpu", **kw), lrn_backward(x, dy, cuda_device, **kw)
        assert_close(dx_gpu, dx_cpu, tol=1e-6, what="dx cuda vs cpu")
