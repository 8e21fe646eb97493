"""The spec checks itself: each analytic backward of tests/reference.py against central differences
of its own forward, in float64 (tight tolerances), so the op tests compare against a right answer."""
import numpy as np
import pytest

import reference as ref
from gradcheck import check_gradient


def test_fc_backward(rng):
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    dy = rng.standard_normal((3, 4))
    dx, dw, db = ref.fc_backward(dy, x, w)
    check_gradient(dx, lambda v: ref.fc_forward(v, w, b), x, dy, rng, tol=1e-7)
    check_gradient(dw, lambda v: ref.fc_forward(x, v, b), w, dy, rng, tol=1e-7)
    check_gradient(db, lambda v: ref.fc_forward(x, w, v), b, dy, rng, tol=1e-7)


@pytest.mark.parametrize("stride,pad,groups", [((1, 1), (0, 0), 1), ((2, 3), (1, 2), 2), ((3, 1), (2, 0), 3)])
def test_conv_backward(rng, stride, pad, groups):
    x = rng.standard_normal((2, 7, 6, 6))
    w = rng.standard_normal((6, 3, 2, 6 // groups))
    b = rng.standard_normal(6)
    y = ref.conv_forward(x, w, b, stride, pad, groups)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ref.conv_backward(dy, x, w, stride, pad, groups)
    check_gradient(dx, lambda v: ref.conv_forward(v, w, b, stride, pad, groups), x, dy, rng, tol=1e-7)
    check_gradient(dw, lambda v: ref.conv_forward(x, v, b, stride, pad, groups), w, dy, rng, tol=1e-7)
    check_gradient(db, lambda v: ref.conv_forward(x, w, v, stride, pad, groups), b, dy, rng, tol=1e-7)


def test_conv_forward_against_direct_loops(rng):
    x, w = rng.standard_normal((1, 5, 4, 4)), rng.standard_normal((4, 3, 3, 2))
    y = ref.conv_forward(x, w, None, (2, 1), (1, 1), 2)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for p in range(y.shape[1]):
        for q in range(y.shape[2]):
            for k in range(4):
                g = k // 2
                patch = xp[0, 2 * p:2 * p + 3, q:q + 3, 2 * g:2 * g + 2]
                assert np.isclose(y[0, p, q, k], np.sum(patch * w[k]))


@pytest.mark.parametrize("size", [1, 4, 5])
def test_lrn_backward(rng, size):
    x = rng.standard_normal((2, 3, 3, 7)) * 3
    dy = rng.standard_normal(x.shape)
    dx = ref.lrn_backward(x, dy, size, 0.1, 0.75, 2.0)
    check_gradient(dx, lambda v: ref.lrn_forward(v, size, 0.1, 0.75, 2.0), x, dy, rng, tol=1e-7)


def test_lrn_window_is_the_papers():
    x = np.zeros((1, 1, 1, 7))
    x[..., 3] = 1.0
    # channel 3 lies in the windows of channels 1..5 (n = 5): their scales change, no others do.
    y = ref.lrn_forward(x + 1.0, 5, 1.0, 1.0, 1.0)
    base = ref.lrn_forward(np.ones((1, 1, 1, 7)), 5, 1.0, 1.0, 1.0)
    changed = np.nonzero(~np.isclose(y / (x + 1.0), base))[-1]
    assert changed.tolist() == [1, 2, 3, 4, 5]


def test_max_pool_backward_and_ties(rng):
    x = rng.standard_normal((2, 7, 8, 3))
    y, arg = ref.max_pool_forward(x, 3, 3, (2, 2), (1, 1))
    dy = rng.standard_normal(y.shape)
    dx = ref.max_pool_backward(dy, arg, x.shape)
    check_gradient(dx, lambda v: ref.max_pool_forward(v, 3, 3, (2, 2), (1, 1))[0], x, dy, rng, tol=1e-7)
    tie = np.ones((1, 3, 3, 1))
    _, arg = ref.max_pool_forward(tie, 2, 2, (1, 1), (0, 0))
    assert arg[0, :, :, 0].tolist() == [[0, 1], [3, 4]]  # the first maximum in row-major order


def test_avg_pool_backward(rng):
    x = rng.standard_normal((2, 7, 6, 3))
    y = ref.avg_pool_forward(x, 3, 2, (2, 1), (1, 1))
    dy = rng.standard_normal(y.shape)
    dx = ref.avg_pool_backward(dy, x.shape, 3, 2, (2, 1), (1, 1))
    check_gradient(dx, lambda v: ref.avg_pool_forward(v, 3, 2, (2, 1), (1, 1)), x, dy, rng, tol=1e-7)
    # a corner window with padding averages only its in-bounds inputs
    assert np.isclose(y[0, 0, 0, 0], x[0, :2, :1, 0].mean())


def test_softmax_cross_entropy_gradient(rng):
    z, labels = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    dz = ref.softmax_cross_entropy(z, labels)[3]
    check_gradient(dz, lambda v: np.array(ref.softmax_cross_entropy(v, labels)[0]), z, np.array(1.0), rng, tol=1e-7)


def test_output_size_rule():
    sizes = [227]
    for k, s, p in [(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 2, 0)]:
        sizes.append(ref.conv_output_size(sizes[-1], k, s, p))
    assert sizes == [227, 55, 27, 27, 13, 13, 6]
