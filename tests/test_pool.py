"""Max and average pooling, forward and backward, against the float64 reference (tests/reference.py).

Max pooling selects input values, so y and argmax are compared exactly; on tie-heavy integer data
(many equal maxima in a window) argmax must be the FIRST maximum in row-major window order, and the
backward, whose sums of small integers are exact in float32, must equal the reference exactly.
"""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device
from gradcheck import assert_close, check_gradient


def out_shape(x_shape, window, stride, pad):
    N, H, W, C = x_shape
    P = (H + 2 * pad[0] - window[0]) // stride[0] + 1
    Q = (W + 2 * pad[1] - window[1]) // stride[1] + 1
    return (N, P, Q, C)


def max_pool(x, device, window, stride, pad):
    shape = out_shape(x.shape, window, stride, pad)
    y, argmax = poisoned(shape, device), poisoned(shape, device, "int32")
    convnet.ops.max_pool_forward(to_device(x, device), y, argmax, window=window, stride=stride, pad=pad)
    return y.numpy(), argmax.numpy()


def max_pool_backward(dy, argmax, x_shape, device, window, stride, pad):
    dx = poisoned(x_shape, device)
    convnet.ops.max_pool_backward(to_device(dy, device), to_device(argmax, device, np.int32), dx,
                                  window=window, stride=stride, pad=pad)
    return dx.numpy()


def avg_pool(x, device, window, stride, pad):
    y = poisoned(out_shape(x.shape, window, stride, pad), device)
    convnet.ops.avg_pool_forward(to_device(x, device), y, window=window, stride=stride, pad=pad)
    return y.numpy()


def avg_pool_backward(dy, x_shape, device, window, stride, pad):
    dx = poisoned(x_shape, device)
    convnet.ops.avg_pool_backward(to_device(dy, device), dx, window=window, stride=stride, pad=pad)
    return dx.numpy()


def ref_kw(window, stride, pad):
    return dict(R=window[0], S=window[1], stride=stride, pad=pad)


# (x shape (N, H, W, C), window, stride, pad)
GEOMETRIES = [
    ((2, 8, 8, 3), (2, 2), (2, 2), (0, 0)),
    ((2, 9, 11, 5), (3, 3), (2, 2), (0, 0)),    # overlapping, AlexNet's 3/2
    ((1, 7, 6, 4), (3, 3), (1, 1), (0, 0)),
    ((2, 10, 9, 3), (2, 3), (1, 2), (0, 0)),    # non-square window and stride
    ((1, 9, 7, 5), (3, 3), (2, 2), (1, 1)),     # padding
    ((2, 6, 13, 7), (3, 2), (2, 1), (1, 1)),
    ((1, 8, 5, 3), (3, 3), (2, 2), (2, 0)),     # padding on one axis only, pad = window - 1
    ((3, 4, 4, 2), (2, 2), (3, 3), (1, 0)),     # stride > window: some inputs are in no window
    ((1, 5, 5, 1), (5, 5), (1, 1), (0, 0)),     # one window covers the image
    ((1, 1, 1, 3), (1, 1), (1, 1), (0, 0)),
    ((1, 3, 2, 17), (3, 2), (1, 1), (2, 1)),    # window taller than the image, fits only padded
]


def geo_id(g):
    shape, window, stride, pad = g
    return "x{}-w{}x{}-s{}x{}-p{}x{}".format("x".join(map(str, shape)), *window, *stride, *pad)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=[geo_id(g) for g in GEOMETRIES])
def test_max_pool(device, rng, geo):
    shape, window, stride, pad = geo
    x = rng.standard_normal(shape).astype(np.float32)
    y, argmax = max_pool(x, device, window, stride, pad)
    y_ref, a_ref = ref.max_pool_forward(x.astype(np.float64), **ref_kw(window, stride, pad))
    assert np.array_equal(y, y_ref.astype(np.float32)), "max-pool y differs from the reference"
    assert np.array_equal(argmax, a_ref), "max-pool argmax differs from the reference"
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = max_pool_backward(dy, argmax, shape, device, window, stride, pad)
    assert_close(dx, ref.max_pool_backward(dy.astype(np.float64), a_ref, shape), what="dx")


@pytest.mark.parametrize("geo", GEOMETRIES, ids=[geo_id(g) for g in GEOMETRIES])
def test_max_pool_ties(device, rng, geo):
    """Integers from a tiny range: most windows hold several equal maxima."""
    shape, window, stride, pad = geo
    x = rng.integers(-2, 3, size=shape).astype(np.float32)
    y, argmax = max_pool(x, device, window, stride, pad)
    y_ref, a_ref = ref.max_pool_forward(x.astype(np.float64), **ref_kw(window, stride, pad))
    assert np.array_equal(y, y_ref), "max-pool y differs from the reference"
    assert np.array_equal(argmax, a_ref), "argmax is not the first maximum in row-major window order"
    dy = rng.integers(-4, 5, size=y.shape).astype(np.float32)
    dx = max_pool_backward(dy, argmax, shape, device, window, stride, pad)
    assert np.array_equal(dx, ref.max_pool_backward(dy.astype(np.float64), a_ref, shape)), "max-pool dx"


def test_max_pool_all_equal(device):
    """Every value equal: each argmax is the window's top-left valid input."""
    shape, window, stride, pad = (1, 7, 7, 2), (3, 3), (2, 2), (1, 1)
    x = np.ones(shape, np.float32)
    _, argmax = max_pool(x, device, window, stride, pad)
    _, a_ref = ref.max_pool_forward(x.astype(np.float64), **ref_kw(window, stride, pad))
    assert np.array_equal(argmax, a_ref)
    assert argmax[0, 0, 0, 0] == 0 and argmax[0, 1, 1, 0] == 1 * 7 + 1


@pytest.mark.parametrize("geo", GEOMETRIES[:8], ids=[geo_id(g) for g in GEOMETRIES[:8]])
def test_max_pool_gradient(device, rng, geo):
    shape, window, stride, pad = geo
    # tie-free: a permutation of well-separated values, so a finite-difference step cannot flip a max
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01).astype(np.float32)
    y, argmax = max_pool(x, device, window, stride, pad)
    dy = rng.standard_normal(y.shape)
    dx = max_pool_backward(dy.astype(np.float32), argmax, shape, device, window, stride, pad)
    kw = ref_kw(window, stride, pad)
    check_gradient(dx, lambda v: ref.max_pool_forward(v, **kw)[0], x.astype(np.float64), dy, rng,
                   what="max-pool dx")


@pytest.mark.parametrize("geo", GEOMETRIES, ids=[geo_id(g) for g in GEOMETRIES])
def test_avg_pool(device, rng, geo):
    shape, window, stride, pad = geo
    kw = ref_kw(window, stride, pad)
    x = rng.standard_normal(shape).astype(np.float32)
    y = avg_pool(x, device, window, stride, pad)
    assert_close(y, ref.avg_pool_forward(x.astype(np.float64), **kw), what="y")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = avg_pool_backward(dy, shape, device, window, stride, pad)
    assert_close(dx, ref.avg_pool_backward(dy.astype(np.float64), shape, **kw), what="dx")
    check_gradient(dx, lambda v: ref.avg_pool_forward(v, **kw), x.astype(np.float64), dy.astype(np.float64),
                   rng, what="avg-pool dx")


# Every pooling layer of AlexNet-2012 (55x55x96 -> 27, 27x27x256 -> 13, 13x13x256 -> 6) and of the
# one-weird-trick variant (55x55x64, 27x27x192, 13x13x256), all 3x3 stride 2.
ALEXNET_POOLS = [(1, 55, 55, 96), (2, 27, 27, 256), (2, 13, 13, 256), (2, 55, 55, 64), (1, 27, 27, 192)]


@pytest.mark.parametrize("shape", ALEXNET_POOLS, ids=["x".join(map(str, s)) for s in ALEXNET_POOLS])
def test_pool_alexnet_shapes(device, rng, shape):
    window, stride, pad = (3, 3), (2, 2), (0, 0)
    kw = ref_kw(window, stride, pad)
    x = rng.standard_normal(shape).astype(np.float32)
    y, argmax = max_pool(x, device, window, stride, pad)
    y_ref, a_ref = ref.max_pool_forward(x.astype(np.float64), **kw)
    assert y.shape == (shape[0], (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1, shape[3])
    assert np.array_equal(y, y_ref.astype(np.float32)) and np.array_equal(argmax, a_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = max_pool_backward(dy, argmax, shape, device, window, stride, pad)
    assert_close(dx, ref.max_pool_backward(dy.astype(np.float64), a_ref, shape), what="max dx")
    assert_close(avg_pool(x, device, window, stride, pad), ref.avg_pool_forward(x.astype(np.float64), **kw),
                 what="avg y")
    assert_close(avg_pool_backward(dy, shape, device, window, stride, pad),
                 ref.avg_pool_backward(dy.astype(np.float64), shape, **kw), what="avg dx")


def test_pool_bad_arguments(device, rng):
    x = to_device(rng.standard_normal((1, 3, 3, 2)), device)
    y, argmax = poisoned((1, 1, 1, 2), device), poisoned((1, 1, 1, 2), device, "int32")
    shape = r"\(1, 3, 3, 2\)"
    with pytest.raises(ValueError, match="max_pool_forward.*window larger.*" + shape):
        convnet.ops.max_pool_forward(x, y, argmax, window=(5, 5), stride=(1, 1))
    with pytest.raises(ValueError, match="avg_pool_forward.*window larger.*" + shape):
        convnet.ops.avg_pool_forward(x, y, window=(3, 5), stride=(1, 1))
    with pytest.raises(ValueError, match="max_pool_forward.*stride.*" + shape):
        convnet.ops.max_pool_forward(x, y, argmax, window=(3, 3), stride=(0, 1))
    with pytest.raises(ValueError, match="avg_pool_backward.*stride.*" + shape):
        convnet.ops.avg_pool_backward(y, x, window=(3, 3), stride=(1, 0))
    with pytest.raises(ValueError, match="max_pool_forward.*padding.*" + shape):
        convnet.ops.max_pool_forward(x, y, argmax, window=(3, 3), stride=(2, 2), pad=(3, 0))
    with pytest.raises(ValueError, match="max_pool_forward.*argmax.*int32"):
        convnet.ops.max_pool_forward(x, y, poisoned((1, 1, 1, 2), device), window=(3, 3))
    with pytest.raises(ValueError, match=r"max_pool_forward.*argmax.*\(1, 1, 2, 2\)"):
        convnet.ops.max_pool_forward(x, y, poisoned((1, 1, 2, 2), device, "int32"), window=(3, 3))
    with pytest.raises(ValueError, match=r"max_pool_forward.*y.*\(1, 2, 1, 2\)"):
        convnet.ops.max_pool_forward(x, poisoned((1, 2, 1, 2), device), argmax, window=(3, 3))
    with pytest.raises(ValueError, match=r"max_pool_backward.*argmax.*int32"):
        convnet.ops.max_pool_backward(y, y, poisoned((1, 3, 3, 2), device), window=(3, 3))
    with pytest.raises(ValueError, match=r"max_pool_backward.*dy.*\(1, 2, 2, 2\)"):
        convnet.ops.max_pool_backward(poisoned((1, 2, 2, 2), device), argmax, poisoned((1, 3, 3, 2), device),
                                      window=(3, 3))
    with pytest.raises(ValueError, match=r"avg_pool_forward.*y.*\(1, 1, 1, 3\)"):
        convnet.ops.avg_pool_forward(x, poisoned((1, 1, 1, 3), device), window=(3, 3))
    with pytest.raises(ValueError, match=r"avg_pool_forward.*4-D"):
        convnet.ops.avg_pool_forward(x.reshape((9, 2)), y, window=(3, 3))
    # the process stays usable
    convnet.ops.max_pool_forward(x, y, argmax, window=(3, 3))
    assert np.isfinite(y.numpy()).all() and (argmax.numpy() >= 0).all()


def test_max_pool_cpu_matches_cuda(cuda_device, rng):
    """Same tie rule and the same gather order: CPU and CUDA agree bit for bit."""
    for shape, window, stride, pad in [((2, 27, 27, 96), (3, 3), (2, 2), (0, 0)),
                                       ((2, 11, 13, 5), (3, 2), (1, 2), (1, 1))]:
        for x in (rng.standard_normal(shape).astype(np.float32),
                  rng.integers(-2, 3, size=shape).astype(np.float32)):
            y_cpu, a_cpu = max_pool(x, "cpu", window, stride, pad)
            y_gpu, a_gpu = max_pool(x, cuda_device, window, stride, pad)
            assert np.array_equal(y_cpu, y_gpu) and np.array_equal(a_cpu, a_gpu)
            dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
            dx_cpu = max_pool_backward(dy, a_cpu, shape, "cpu", window, stride, pad)
            dx_gpu = max_pool_backward(dy, a_cpu, shape, cuda_device, window, stride, pad)
            assert np.array_equal(dx_cpu, dx_gpu), "max-pool gradients differ between CPU and CUDA"
            # both backends divide (no reciprocal multiply) and sum in the same order
            assert_close(avg_pool(x, cuda_device, window, stride, pad), avg_pool(x, "cpu", window, stride, pad),
                         tol=1e-7, what="avg y cuda vs cpu")
            assert_close(avg_pool_backward(dy, shape, cuda_device, window, stride, pad),
                         avg_pool_backward(dy, shape, "cpu", window, stride, pad), tol=1e-7,
                         what="avg dx cuda vs cpu")
