"""GEMM and the fully-connected ops against tests/reference.py (float64 NumPy).

Inputs are drawn in float64, rounded to float32 (what the op sees), and the reference is computed
in float64 from those rounded values, so the only error measured is our float32 arithmetic.
Tolerance: relative error < 1e-5 everywhere. Both backends accumulate each output in float32 in
K blocks (KC = 256 on the CPU, BK-step partial sums in registers on CUDA) and the inputs are
zero-mean, so the error grows like eps * sqrt(K) at worst: ~6e-8 * 96 = 6e-6 for K = 9216 even
unblocked, and measured ~3e-7. No K-aware loosening is needed.
"""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device
from gradcheck import assert_close, check_gradient

ops = convnet.ops


def f32(a):
    """The float64 values a float32 tensor made from `a` holds."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def rand(rng, shape):
    return f32(rng.standard_normal(shape))


def run_gemm(device, a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None):
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    tc = to_device(c, device) if c is not None else poisoned((M, N), device)
    ops.gemm(to_device(a, device), to_device(b, device), tc, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
             beta=beta)
    return tc.numpy()


def operands(rng, M, N, K, trans_a, trans_b):
    a = rand(rng, (K, M) if trans_a else (M, K))
    b = rand(rng, (N, K) if trans_b else (K, N))
    return a, b


TRANS = [(False, False), (False, True), (True, False), (True, True)]
TRANS_IDS = ["nn", "nt", "tn", "tt"]


# --------------------------------------------------------------------------------------------------
# gemm

@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 17, 3), (3, 1, 17), (17, 33, 1), (33, 65, 127),
                                   (65, 127, 33), (127, 3, 65), (13, 100, 2), (128, 128, 256),
                                   # M, N % 4 == 0 (CUDA's 16-byte copies) with a short K slice, split-K
                                   (132, 260, 1003), (8, 516, 2051), (4, 8, 5)])
def test_gemm_odd_sizes(device, rng, trans_a, trans_b, M, N, K):
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    out = run_gemm(device, a, b, trans_a, trans_b)
    assert_close(out, ref.gemm(a, b, trans_a, trans_b))


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
def test_gemm_larger_than_one_block(device, rng, trans_a, trans_b):
    # Past every block size in every dimension: CPU MC = 144, NC = 1024, KC = 256; CUDA 128 x 128
    # tiles. Odd sizes so every dimension also has an edge.
    M, N, K = 301, 1103, 517
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    out = run_gemm(device, a, b, trans_a, trans_b)
    assert_close(out, ref.gemm(a, b, trans_a, trans_b))


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, -1.5), (-2.0, 0.25), (1.0, 0.0), (0.0, 2.0)])
def test_gemm_alpha_beta(device, rng, trans_a, trans_b, alpha, beta):
    # K > KC = 256 (CPU: beta applied on the first K block only) and K >= 512 (CUDA: this small
    # grid splits K, and the split-K reduction applies alpha and beta).
    M, N, K = 37, 70, 600
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    c = rand(rng, (M, N))
    out = run_gemm(device, a, b, trans_a, trans_b, alpha, beta, c)
    assert_close(out, ref.gemm(a, b, trans_a, trans_b, alpha, beta, c))


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
def test_gemm_beta_zero_never_reads_c(device, rng, trans_a, trans_b):
    # C full of NaN: with beta == 0 it must not be read (0 * NaN would be NaN).
    M, N, K = 70, 45, 33
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    c = np.full((M, N), np.nan)
    out = run_gemm(device, a, b, trans_a, trans_b, alpha=0.75, beta=0.0, c=c)
    assert_close(out, 0.75 * ref.gemm(a, b, trans_a, trans_b))


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_gemm_k_zero_scales_c(device, rng, beta):
    # K == 0: C = beta * C (zeros when beta == 0, even over NaN).
    M, N = 5, 7
    a, b = np.zeros((M, 0)), np.zeros((0, N))
    c = np.full((M, N), np.nan) if beta == 0.0 else rand(rng, (M, N))
    out = run_gemm(device, a, b, False, False, 1.0, beta, c)
    np.testing.assert_array_equal(out, (np.zeros((M, N)) if beta == 0.0 else beta * c).astype(np.float32))


@pytest.mark.parametrize("M,N,K", [(0, 5, 3), (5, 0, 3), (0, 0, 0)])
def test_gemm_empty(device, M, N, K):
    out = run_gemm(device, np.zeros((M, K)), np.zeros((K, N)), False, False)
    assert out.shape == (M, N)


@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=TRANS_IDS)
@pytest.mark.parametrize("M,N,K", [(1, 2000, 700), (2000, 1, 700), (600, 700, 1)])
def test_gemm_skinny(device, rng, trans_a, trans_b, M, N, K):
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    c = rand(rng, (M, N))
    out = run_gemm(device, a, b, trans_a, trans_b, alpha=1.25, beta=0.5, c=c)
    assert_close(out, ref.gemm(a, b, trans_a, trans_b, 1.25, 0.5, c))


@pytest.mark.slow
@pytest.mark.parametrize("M,N,K,trans_a,trans_b", [(128, 4096, 9216, False, True),
                                                   (128, 9216, 4096, False, False),
                                                   (4096, 9216, 128, True, False)],
                         ids=["fc6_forward", "fc6_backward_data", "fc6_backward_weights"])
def test_gemm_alexnet_fc6_shapes(device, rng, M, N, K, trans_a, trans_b):
    # The full fc6 shapes: K up to 9216 accumulated in float32, still within 1e-5.
    a, b = operands(rng, M, N, K, trans_a, trans_b)
    out = run_gemm(device, a, b, trans_a, trans_b)
    assert_close(out, ref.gemm(a, b, trans_a, trans_b))


# --------------------------------------------------------------------------------------------------
# fully connected

FC_SHAPES = [((1, 1), 1), ((4, 3), 5), ((7, 33), 17), ((16, 6, 6, 5), 65), ((3, 300), 129)]


@pytest.mark.parametrize("x_shape,out", FC_SHAPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fc_forward(device, rng, x_shape, out, bias):
    N, inp = x_shape[0], int(np.prod(x_shape[1:]))
    x, w = rand(rng, x_shape), rand(rng, (out, inp))
    b = rand(rng, (out,)) if bias else None
    y = poisoned((N, out), device)
    ops.fc_forward(to_device(x, device), to_device(w, device), to_device(b, device) if bias else None, y)
    assert_close(y.numpy(), ref.fc_forward(x.reshape(N, inp), w, b))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fc_forward_accumulate(device, rng, bias):
    N, inp, out = 9, 70, 33
    x, w, y0 = rand(rng, (N, inp)), rand(rng, (out, inp)), rand(rng, (N, out))
    b = rand(rng, (out,)) if bias else None
    y = to_device(y0, device)
    ops.fc_forward(to_device(x, device), to_device(w, device), to_device(b, device) if bias else None, y,
                   accumulate=True)
    assert_close(y.numpy(), y0 + ref.fc_forward(x, w, b))


@pytest.mark.parametrize("x_shape,out", FC_SHAPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fc_backward(device, rng, x_shape, out, bias):
    N, inp = x_shape[0], int(np.prod(x_shape[1:]))
    x, w, dy = rand(rng, x_shape), rand(rng, (out, inp)), rand(rng, (N, out))
    dx_ref, dw_ref, db_ref = ref.fc_backward(dy, x.reshape(N, inp), w)
    dx = poisoned(x_shape, device)
    ops.fc_backward_data(to_device(dy, device), to_device(w, device), dx)
    assert_close(dx.numpy(), dx_ref.reshape(x_shape), what="dx")
    dw = poisoned((out, inp), device)
    db = poisoned((out,), device) if bias else None
    ops.fc_backward_weights(to_device(dy, device), to_device(x, device), dw, db)
    assert_close(dw.numpy(), dw_ref, what="dw")
    if bias:
        assert_close(db.numpy(), db_ref, what="db")


def test_fc_backward_data_accumulate(device, rng):
    N, inp, out = 6, 130, 40
    w, dy, dx0 = rand(rng, (out, inp)), rand(rng, (N, out)), rand(rng, (N, inp))
    dx = to_device(dx0, device)
    ops.fc_backward_data(to_device(dy, device), to_device(w, device), dx, accumulate=True)
    assert_close(dx.numpy(), dx0 + dy @ w)


def test_fc_gradient_check(device, rng):
    # Our analytic dx, dw, db against central differences of the reference forward, for the
    # objective sum(y * dy).
    N, inp, out = 4, 12, 7
    x, w, b, dy = rand(rng, (N, inp)), rand(rng, (out, inp)), rand(rng, (out,)), rand(rng, (N, out))
    tdy = to_device(dy, device)
    dx = poisoned((N, inp), device)
    ops.fc_backward_data(tdy, to_device(w, device), dx)
    dw, db = poisoned((out, inp), device), poisoned((out,), device)
    ops.fc_backward_weights(tdy, to_device(x, device), dw, db)
    check_gradient(dx.numpy(), lambda x_: ref.fc_forward(x_, w, b), x, dy, rng, what="dx")
    check_gradient(dw.numpy(), lambda w_: ref.fc_forward(x, w_, b), w, dy, rng, what="dw")
    check_gradient(db.numpy(), lambda b_: ref.fc_forward(x, w, b_), b, dy, rng, what="db")


def test_fc8_alexnet_shape(device, rng):
    # AlexNet's fc8: 4096 -> 1000, at a small batch; forward and both backwards.
    N, inp, out = 8, 4096, 1000
    x, w, b, dy = rand(rng, (N, inp)), rand(rng, (out, inp)), rand(rng, (out,)), rand(rng, (N, out))
    y = poisoned((N, out), device)
    tx, tw, tdy = to_device(x, device), to_device(w, device), to_device(dy, device)
    ops.fc_forward(tx, tw, to_device(b, device), y)
    assert_close(y.numpy(), ref.fc_forward(x, w, b), what="y")
    dx_ref, dw_ref, db_ref = ref.fc_backward(dy, x, w)
    dx = poisoned((N, inp), device)
    ops.fc_backward_data(tdy, tw, dx)
    assert_close(dx.numpy(), dx_ref, what="dx")
    dw, db = poisoned((out, inp), device), poisoned((out,), device)
    ops.fc_backward_weights(tdy, tx, dw, db)
    assert_close(dw.numpy(), dw_ref, what="dw")
    assert_close(db.numpy(), db_ref, what="db")


# --------------------------------------------------------------------------------------------------
# errors

def test_gemm_shape_errors(device):
    a, b, c = convnet.zeros((3, 4), device), convnet.zeros((5, 6), device), convnet.zeros((3, 6), device)
    with pytest.raises(ValueError, match="gemm"):
        ops.gemm(a, b, c)  # inner dimensions 4 vs 5
    with pytest.raises(ValueError, match="gemm"):
        ops.gemm(a, convnet.zeros((4, 6), device), convnet.zeros((3, 5), device))  # wrong c
    with pytest.raises(ValueError, match="gemm"):
        ops.gemm(convnet.zeros((3, 4, 1), device), b, c)  # not 2-D


def test_fc_shape_errors(device):
    x, w, y = convnet.zeros((2, 8), device), convnet.zeros((5, 8), device), convnet.zeros((2, 5), device)
    with pytest.raises(ValueError, match="fc_forward"):
        ops.fc_forward(x, convnet.zeros((5, 7), device), None, y)  # in features differ
    with pytest.raises(ValueError, match="fc_forward"):
        ops.fc_forward(x, w, convnet.zeros((4,), device), y)  # bias size
    with pytest.raises(ValueError, match="fc_forward"):
        ops.fc_forward(x, w, None, convnet.zeros((2, 4), device))  # output shape
    with pytest.raises(ValueError, match="fc_backward_data"):
        ops.fc_backward_data(convnet.zeros((2, 4), device), w, convnet.zeros((2, 8), device))
    with pytest.raises(ValueError, match="fc_backward_weights"):
        ops.fc_backward_weights(convnet.zeros((3, 5), device), x, convnet.zeros((5, 8), device), None)
    with pytest.raises(ValueError, match="fc_backward_weights"):
        ops.fc_backward_weights(convnet.zeros((2, 5), device), x, convnet.zeros((5, 8), device),
                                convnet.zeros((6,), device))


def test_fc_mixed_devices(cuda_device):
    # One tensor on the CPU and the others on the GPU: a ValueError naming the op, nothing launched.
    x, w, y = convnet.zeros((2, 8), cuda_device), convnet.zeros((5, 8), "cpu"), convnet.zeros((2, 5), cuda_device)
    with pytest.raises(ValueError, match="fc_forward"):
        ops.fc_forward(x, w, None, y)
    with pytest.raises(ValueError, match="gemm"):
        ops.gemm(convnet.zeros((2, 8), cuda_device), convnet.zeros((8, 5), "cpu"), y)


@pytest.mark.parametrize("accumulate", [False, True], ids=["write", "accumulate"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fc_forward_relu(device, rng, bias, accumulate):
    N, inp, out = 13, 70, 45
    x, w, y0 = rand(rng, (N, inp)), rand(rng, (out, inp)), rand(rng, (N, out))
    b = rand(rng, (out,)) if bias else None
    y = to_device(y0, device) if accumulate else poisoned((N, out), device)
    ops.fc_forward(to_device(x, device), to_device(w, device), to_device(b, device) if bias else None, y,
                   accumulate=accumulate, relu=True)
    pre = ref.fc_forward(x, w, b) + (y0 if accumulate else 0)
    assert_close(y.numpy(), ref.relu_forward(pre))
