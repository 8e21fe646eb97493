"""Mixed precision on CUDA: the FC GEMM (cuda/gemm_tc.cu) and the convolutions (cuda/conv_tc.cu) on
tensor cores (cuda/mma.cuh).

Under tf32 / bf16 every CUDA GEMM with M > 1 and N > 1 (gemm, fc_forward, fc_backward_data,
fc_backward_weights) runs mma.sync on operands rounded once while staged into shared memory: TF32 by
cvt.rna (10-bit mantissa, nearest, ties away: relative error <= 2^-11 per input), BF16 by cvt.rn
(8-bit mantissa, nearest even: <= 2^-9). Products are exact and sums FP32. Three checks per result,
against float64 NumPy (tests/reference.py):
  * vs the exact result, relative error norm below what the rounding allows: tf32 < 2e-3, bf16 < 1e-2
    (two rounded inputs per product, random-sign sums average it down: ~3e-4 / ~2.5e-3 measured);
  * AND above a floor: tf32 > 5e-5 (FP32 arithmetic gives ~1e-7, so an FP32 kernel cannot pass as
    tf32), bf16 > 1e-3 (above tf32's ~3e-4, so a tf32 kernel cannot pass as bf16);
  * vs float64 on the ROUNDED inputs (reference.round_tf32 / round_bf16): < 1e-5, i.e. only FP32
    summation error is left: truncating instead of rounding, a dropped k step or a misplaced
    fragment fails this by orders of magnitude.
Outputs are poisoned with NaN first. Shapes are odd on purpose (M, N, K not multiples of the 128 x
128 tile or of the slice depth, unaligned rows for the scalar loader path) and include split-K.
The GEMV shapes (M == 1 or N == 1) stay FP32, as documented. The convolutions (forward, backward
data, backward filter) are checked the same way on AlexNet's layers at a small batch and on odd
shapes (C = 3, C / groups not a multiple of the loader group, groups, stride 4 with padding,
partial tiles, split-K, accumulate, ReLU, an empty batch). These run on CUDA devices only: under
the emulator (tools/cuda_emu/run_tests.sh) and on a GPU; the emulated instructions themselves are
checked tile by tile in tools/cuda_emu/selftest/mma_check.cu.
"""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device

ops = convnet.ops

# precision -> (rounding of the inputs, upper bound vs exact, lower bound vs exact)
PRECISIONS = {
    "tf32": (ref.round_tf32, 2e-3, 5e-5),
    "bf16": (lambda x: ref.round_bf16(x, flush_denormals=False), 1e-2, 1e-3),
}


@pytest.fixture(params=list(PRECISIONS))
def precision(request):
    with convnet.use_precision(request.param):
        yield request.param


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def rel(out, want):
    return float(np.linalg.norm(out - want) / np.linalg.norm(want))


def check(precision, out, exact, rounded, what):
    """out: the CUDA result; exact: float64 on the float32 inputs; rounded: float64 on rounded inputs."""
    _, upper, lower = PRECISIONS[precision]
    assert np.isfinite(out).all(), f"{what}: non-finite (an element not written?)"
    e_exact, e_rounded = rel(out, exact), rel(out, rounded)
    assert e_exact < upper, f"{what} ({precision}): relative error {e_exact:.2e} vs exact >= {upper:.0e}"
    assert e_exact > lower, (f"{what} ({precision}): relative error {e_exact:.2e} <= {lower:.0e}: too accurate "
                             f"for {precision} (did a higher-precision kernel run?)")
    assert e_rounded < 1e-5, f"{what} ({precision}): relative error {e_rounded:.2e} vs the rounded inputs >= 1e-5"


# (M, N, K): a single mma tile, tiny, odd and unaligned (scalar loads), aligned (float4 loads),
# several tiles with a ragged edge, K = 1
GEMM_SHAPES = [(16, 8, 8), (2, 301, 5), (13, 37, 29), (132, 68, 300), (129, 257, 41), (33, 20, 1)]


@pytest.mark.parametrize("M,N,K", GEMM_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in GEMM_SHAPES])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["nn", "nt", "tn", "tt"])
def test_gemm_tensor_cores(rng, cuda_device, precision, M, N, K, trans_a, trans_b):
    R = PRECISIONS[precision][0]
    a = f32(rng.standard_normal((K, M) if trans_a else (M, K)))
    b = f32(rng.standard_normal((N, K) if trans_b else (K, N)))
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    c = poisoned((M, N), cuda_device)
    ops.gemm(to_device(a, cuda_device), to_device(b, cuda_device), c, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
    check(precision, c.numpy(), 0.5 * op_a @ op_b, 0.5 * R(op_a) @ R(op_b), "gemm")


@pytest.mark.parametrize("M,N,K", [(40, 70, 300), (16, 40, 2100)], ids=["one_pass", "split_k"])
def test_gemm_tensor_cores_beta(rng, cuda_device, precision, M, N, K):
    """beta * C is FP32 arithmetic on C itself (never rounded); (16, 40, 2100) is one tile, so K is
    split across blocks and the reduce applies alpha and beta."""
    R = PRECISIONS[precision][0]
    a, b, c0 = f32(rng.standard_normal((M, K))), f32(rng.standard_normal((K, N))), f32(rng.standard_normal((M, N)))
    c = to_device(c0, cuda_device)
    ops.gemm(to_device(a, cuda_device), to_device(b, cuda_device), c, alpha=1.5, beta=0.75)
    check(precision, c.numpy(), 1.5 * a @ b + 0.75 * c0, 1.5 * R(a) @ R(b) + 0.75 * c0, "gemm beta")


@pytest.mark.parametrize("N,inp,out", [(37, 300, 70), (128, 96, 130)], ids=["odd", "batch128"])
def test_fc_tensor_cores(rng, cuda_device, precision, N, inp, out):
    R = PRECISIONS[precision][0]
    x, w, b, dy = (f32(rng.standard_normal(s)) for s in ((N, inp), (out, inp), (out,), (N, out)))
    d = cuda_device
    # forward: bias and ReLU fused into the epilogue, in FP32 on the FP32 accumulator
    y = poisoned((N, out), d)
    ops.fc_forward(to_device(x, d), to_device(w, d), to_device(b, d), y)
    check(precision, y.numpy(), ref.fc_forward(x, w, b), ref.fc_forward(R(x), R(w), b), "fc_forward")
    y = poisoned((N, out), d)
    ops.fc_forward(to_device(x, d), to_device(w, d), to_device(b, d), y, relu=True)
    want, want_r = np.maximum(ref.fc_forward(x, w, b), 0), np.maximum(ref.fc_forward(R(x), R(w), b), 0)
    check(precision, y.numpy(), want, want_r, "fc_forward relu")
    assert (y.numpy()[want_r < -1e-3] == 0).all(), "fc_forward relu: negative outputs not clamped to 0"
    # accumulate: y += x w^T + b, the old y in FP32
    y0 = f32(rng.standard_normal((N, out)))
    y = to_device(y0, d)
    ops.fc_forward(to_device(x, d), to_device(w, d), None, y, accumulate=True)
    check(precision, y.numpy(), y0 + x @ w.T, y0 + R(x) @ R(w).T, "fc_forward accumulate")
    # backward data, plain and accumulating
    dx = poisoned((N, inp), d)
    ops.fc_backward_data(to_device(dy, d), to_device(w, d), dx)
    check(precision, dx.numpy(), dy @ w, R(dy) @ R(w), "fc_backward_data")
    dx0 = f32(rng.standard_normal((N, inp)))
    dx = to_device(dx0, d)
    ops.fc_backward_data(to_device(dy, d), to_device(w, d), dx, accumulate=True)
    check(precision, dx.numpy(), dx0 + dy @ w, dx0 + R(dy) @ R(w), "fc_backward_data accumulate")
    # backward weights; db is a column sum, not a GEMM: FP32 in every precision
    dw, db = poisoned((out, inp), d), poisoned((out,), d)
    ops.fc_backward_weights(to_device(dy, d), to_device(x, d), dw, db)
    check(precision, dw.numpy(), dy.T @ x, R(dy).T @ R(x), "fc_backward_weights")
    assert rel(db.numpy(), dy.sum(axis=0)) < 1e-6


def test_gemv_stays_fp32(rng, cuda_device, precision):
    """M == 1 and N == 1 are memory-bound GEMVs: they stay FP32 in every precision (documented)."""
    a, b = f32(rng.standard_normal((1, 500))), f32(rng.standard_normal((500, 64)))
    c = poisoned((1, 64), cuda_device)
    ops.gemm(to_device(a, cuda_device), to_device(b, cuda_device), c)
    assert rel(c.numpy(), a @ b) < 1e-5
    c = poisoned((64, 1), cuda_device)
    ops.gemm(to_device(b.T, cuda_device), to_device(a.T, cuda_device), c)
    assert rel(c.numpy(), b.T @ a.T) < 1e-5


def test_fp32_stays_fp32(rng, cuda_device):
    """The default precision runs the FP32 kernel: accurate to FP32 summation error."""
    a, b = f32(rng.standard_normal((50, 300))), f32(rng.standard_normal((300, 70)))
    c = poisoned((50, 70), cuda_device)
    with convnet.use_precision("fp32"):
        ops.gemm(to_device(a, cuda_device), to_device(b, cuda_device), c)
    assert rel(c.numpy(), a @ b) < 1e-5


def test_precision_switches_per_call(rng, cuda_device):
    """One process-wide setting: the same inputs give fp32, tf32 and bf16 accuracy in turn."""
    a, b = f32(rng.standard_normal((64, 200))), f32(rng.standard_normal((200, 48)))
    errors = {}
    for p in ("fp32", "tf32", "bf16", "fp32"):
        c = poisoned((64, 48), cuda_device)
        with convnet.use_precision(p):
            ops.gemm(to_device(a, cuda_device), to_device(b, cuda_device), c)
        errors.setdefault(p, []).append(rel(c.numpy(), a @ b))
    assert max(errors["fp32"]) < 1e-6
    assert 5e-5 < errors["tf32"][0] < 2e-3
    assert 1e-3 < errors["bf16"][0] < 1e-2


def test_round_tf32_reference():
    x = np.array([1.0, 1.0 + 2 ** -11, -(1.0 + 2 ** -11), 1.0 + 2 ** -11 - 2 ** -23, 3.4028235e38, np.inf, -2.5],
                 dtype=np.float32)
    r = ref.round_tf32(x)
    # ties away from zero; below the tie rounds down; overflow to inf
    assert list(r) == [1.0, 1.0 + 2 ** -10, -(1.0 + 2 ** -10), 1.0, np.inf, np.inf, -2.5]
    assert np.isnan(ref.round_tf32(np.array([np.nan], dtype=np.float32))[0])
    # subnormals: kept by the CUDA bf16 rounding, flushed by the CPU one
    tiny = np.array([1e-40], dtype=np.float32)
    assert ref.round_bf16(tiny)[0] == 0.0 and ref.round_bf16(tiny, flush_denormals=False)[0] != 0.0


# --------------------------------------------------------------------------------------------------
# convolutions (cuda/conv_tc.cu)

# (N, H, W, C, K, R, S, stride, pad, groups)
CONV_SHAPES = {
    # AlexNet-2012's layers, batch and image scaled down (channels, kernels, strides, pads, groups kept)
    "alexnet1": (1, 27, 27, 3, 96, 11, 11, (4, 4), (0, 0), 1),   # C = 3: the element-by-element gather
    "alexnet2": (1, 9, 9, 96, 256, 5, 5, (1, 1), (2, 2), 2),
    "alexnet3": (1, 6, 6, 256, 384, 3, 3, (1, 1), (1, 1), 1),
    "alexnet4": (1, 5, 5, 384, 384, 3, 3, (1, 1), (1, 1), 2),
    # odd: C / groups = 10 and 12 (not multiples of 8: BF16's scalar gather; 12: TF32's float4 one),
    # Kg = 3, partial tiles along M, N and K, stride 4 with padding, stride 2 x 1
    "odd_g2_s2": (2, 9, 11, 20, 36, 3, 3, (2, 2), (1, 1), 2),
    "odd_c12": (3, 10, 7, 12, 40, 3, 2, (1, 1), (1, 0), 1),
    "odd_g3": (2, 8, 8, 6, 9, 3, 3, (2, 1), (1, 1), 3),
    "s4_pad": (2, 21, 19, 8, 16, 5, 5, (4, 4), (2, 2), 1),
    "tiles": (2, 15, 13, 16, 136, 3, 3, (1, 1), (1, 1), 1),      # M = 390, N = 136: ragged tiles
}


# Emulator time: alexnet3 / alexnet4 take ~30 s a pass and precision (K = 1728-2304 per output) and add
# no path the odd shapes miss (3x3, pad 1, float4 gathers), so they are slow; alexnet1's dx takes ~3 min
# per precision and no net computes the first layer's dx. `-m slow` runs them (all passed, both orders).
SLOW_CONV = {"alexnet3", "alexnet4"}
SPLIT_K = (3, 20, 20, 4, 8, 3, 3, (1, 1), (1, 1), 1)  # N*P*Q = 1200 pixels: two splits of backward filter


def conv_params(names, slow=SLOW_CONV):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def variants(name):
    """(accumulate, relu) cases: all three on the small shapes, the plain pass on AlexNet's (emulator time)."""
    return ((False, False),) if name.startswith("alexnet") else ((False, False), (True, False), (False, True))


def conv_inputs(rng, shape):
    N, H, W, C, K, R, S, stride, pad, groups = shape
    x = f32(rng.standard_normal((N, H, W, C)))
    w = f32(rng.standard_normal((K, R, S, C // groups)))
    b = f32(rng.standard_normal(K))
    P = ref.conv_output_size(H, R, stride[0], pad[0])
    Q = ref.conv_output_size(W, S, stride[1], pad[1])
    dy = f32(rng.standard_normal((N, P, Q, K)))
    return x, w, b, dy, dict(stride=stride, pad=pad, groups=groups)


def start(old, device, shape):
    """The output tensor: NaN-poisoned, or holding `old` to accumulate into."""
    return poisoned(shape, device) if old is None else to_device(old, device)


@pytest.mark.parametrize("name", conv_params(CONV_SHAPES))
def test_conv_forward_tensor_cores(rng, cuda_device, precision, name):
    R = PRECISIONS[precision][0]
    x, w, b, dy, geo = conv_inputs(rng, CONV_SHAPES[name])
    d = cuda_device
    for accumulate, relu in variants(name):
        old = f32(rng.standard_normal(dy.shape)) if accumulate else None
        y = start(old, d, dy.shape)
        ops.conv_forward(to_device(x, d), to_device(w, d), to_device(b, d), y, accumulate=accumulate, relu=relu,
                         **geo)
        exact, rounded = ref.conv_forward(x, w, b, **geo), ref.conv_forward(R(x), R(w), b, **geo)
        if accumulate:
            exact, rounded = exact + old, rounded + old
        if relu:
            exact, rounded = np.maximum(exact, 0), np.maximum(rounded, 0)
        check(precision, y.numpy(), exact, rounded, f"conv_forward {name} accumulate={accumulate} relu={relu}")
        if relu:
            assert (y.numpy()[rounded < -1e-3] == 0).all(), "conv_forward relu: negative outputs not clamped"


# alexnet1's dx: slow (above); s4_pad covers the strided gather in the default run.
@pytest.mark.parametrize("name", conv_params(CONV_SHAPES, SLOW_CONV | {"alexnet1"}))
def test_conv_backward_data_tensor_cores(rng, cuda_device, precision, name):
    R = PRECISIONS[precision][0]
    x, w, b, dy, geo = conv_inputs(rng, CONV_SHAPES[name])
    d = cuda_device
    for accumulate, _ in variants(name)[:2]:
        old = f32(rng.standard_normal(x.shape)) if accumulate else None
        dx = start(old, d, x.shape)
        ops.conv_backward_data(to_device(dy, d), to_device(w, d), dx, accumulate=accumulate, **geo)
        exact, rounded = ref.conv_backward(dy, x, w, **geo)[0], ref.conv_backward(R(dy), x, R(w), **geo)[0]
        if accumulate:
            exact, rounded = exact + old, rounded + old
        check(precision, dx.numpy(), exact, rounded, f"conv_backward_data {name} accumulate={accumulate}")


@pytest.mark.parametrize("name", conv_params(list(CONV_SHAPES) + ["split_k"]))
def test_conv_backward_filter_tensor_cores(rng, cuda_device, precision, name):
    """dW on tensor cores; db is a column sum of dy, FP32 in every precision. split_k: N*P*Q = 1200
    pixels, cut into two splits summed in split order by a second kernel."""
    R = PRECISIONS[precision][0]
    shape = SPLIT_K if name == "split_k" else CONV_SHAPES[name]
    x, w, b, dy, geo = conv_inputs(rng, shape)
    d = cuda_device
    for accumulate, _ in variants(name)[:2]:
        old_w = f32(rng.standard_normal(w.shape)) if accumulate else None
        old_b = f32(rng.standard_normal(b.shape)) if accumulate else None
        dw, db = start(old_w, d, w.shape), start(old_b, d, b.shape)
        ops.conv_backward_filter(to_device(dy, d), to_device(x, d), dw, db, accumulate=accumulate, **geo)
        _, exact, db_want = ref.conv_backward(dy, x, w, **geo)
        rounded = ref.conv_backward(R(dy), R(x), w, **geo)[1]
        if accumulate:
            exact, rounded, db_want = exact + old_w, rounded + old_w, db_want + old_b
        check(precision, dw.numpy(), exact, rounded, f"conv_backward_filter {name} accumulate={accumulate}")
        assert rel(db.numpy(), db_want) < 1e-5, f"conv_backward_filter {name}: db"


def test_conv_tensor_cores_deterministic(rng, cuda_device, precision):
    """Two identical calls give the same bytes (split-K sums in split order; no atomics)."""
    x, w, b, dy, geo = conv_inputs(rng, SPLIT_K)
    d = cuda_device
    outs = []
    for _ in range(2):
        dw, y = poisoned(w.shape, d), poisoned(dy.shape, d)
        ops.conv_backward_filter(to_device(dy, d), to_device(x, d), dw, None, **geo)
        ops.conv_forward(to_device(x, d), to_device(w, d), to_device(b, d), y, **geo)
        outs.append((dw.numpy(), y.numpy()))
    assert all(np.array_equal(a, c) for a, c in zip(*outs))


def test_conv_tensor_cores_empty_batch(cuda_device, precision):
    """N = 0: nothing to write forward and backward to data; dW = 0 (or dW + 0 when accumulating)."""
    d = cuda_device
    x, w, dy = np.zeros((0, 9, 9, 8)), np.ones((16, 3, 3, 8)), np.zeros((0, 9, 9, 16))
    y = poisoned((0, 9, 9, 16), d)
    ops.conv_forward(to_device(x, d), to_device(w, d), None, y, pad=(1, 1))
    assert y.numpy().shape == (0, 9, 9, 16)
    dx = poisoned((0, 9, 9, 8), d)
    ops.conv_backward_data(to_device(dy, d), to_device(w, d), dx, pad=(1, 1))
    dw, db = poisoned(w.shape, d), poisoned((16,), d)
    ops.conv_backward_filter(to_device(dy, d), to_device(x, d), dw, db, pad=(1, 1))
    assert (dw.numpy() == 0).all() and (db.numpy() == 0).all()
    old = np.arange(w.size, dtype=np.float32).reshape(w.shape)
    dw = to_device(old, d)
    ops.conv_backward_filter(to_device(dy, d), to_device(x, d), dw, None, pad=(1, 1), accumulate=True)
    assert np.array_equal(dw.numpy(), old)
