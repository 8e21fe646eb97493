"""Winograd convolution (csrc/cpu/winograd.cpp) forced on odd shapes: forward and backward-data against the
float64 reference, outputs NaN-poisoned (every element written), accumulate adding to old values.

The path is forced with CONVNET_CONV_ALGORITHM=winograd (read per call by the CPU selector) until the op's
`algorithm=` argument lands; backward-filter has no Winograd form yet and runs the direct path.
"""
import numpy as np
import pytest

import reference as ref
from test_conv import f32, make, run_backward_data, run_forward
from gradcheck import assert_close


@pytest.fixture
def force_winograd(monkeypatch):
    monkeypatch.setenv("CONVNET_CONV_ALGORITHM", "winograd")


# (N, H, W, C, K, R, pad, groups): odd H/W, pad 0/1/2 (up to R-1), groups 2, N = 1, C not a multiple of 16.
SHAPES = [
    (1, 7, 9, 5, 3, 3, 1, 1),
    (2, 13, 13, 24, 20, 3, 1, 2),
    (1, 5, 6, 3, 7, 3, 0, 1),
    (3, 11, 8, 17, 33, 3, 2, 1),
    (1, 27, 27, 12, 16, 5, 2, 2),
    (2, 9, 7, 7, 5, 5, 0, 1),
    (1, 6, 10, 9, 11, 5, 4, 1),
    (2, 13, 13, 64, 96, 3, 1, 2),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("accumulate", [False, True])
def test_winograd_forward_backward_data(force_winograd, rng, shape, accumulate):
    N, H, W, C, K, R, pad, groups = shape
    x, w, b = make(rng, N, H, W, C, K, R, R, groups)
    x, w, b = f32(x), f32(w), f32(b)
    stride, padp = (1, 1), (pad, pad)
    y_ref = ref.conv_forward(x, w, b, stride, padp, groups)
    y, old = run_forward(x, w, b, stride, padp, groups, "cpu", rng, accumulate)
    assert_close(y, y_ref + (old if accumulate else 0), what="y")
    dy = f32(rng.standard_normal(y_ref.shape))
    dx_ref, _, _ = ref.conv_backward(dy, x, w, stride, padp, groups)
    dx, old = run_backward_data(dy, w, x.shape, stride, padp, groups, "cpu", rng, accumulate)
    assert_close(dx, dx_ref + (old if accumulate else 0), what="dx")


def test_winograd_fused_relu(force_winograd, rng):
    import convnet
    from conftest import poisoned, to_device
    x, w, b = make(rng, 2, 9, 11, 8, 6, 3, 3, 1)
    x, w, b = f32(x), f32(w), f32(b)
    y_ref = np.maximum(ref.conv_forward(x, w, b, (1, 1), (1, 1), 1), 0)
    y = poisoned(y_ref.shape, "cpu")
    convnet.ops.conv_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu"), y, stride=(1, 1),
                             pad=(1, 1), groups=1, accumulate=False, relu=True)
    assert_close(y.numpy(), y_ref, what="y")
