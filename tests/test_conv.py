"""Convolution: forward (+ bias), backward to data, backward to filters and bias, against the float64
reference (tests/reference.py conv_forward / conv_backward) on every device.

Layouts: x (N, H, W, C), w (K, R, S, C/groups), y (N, P, Q, K). Outputs are NaN-poisoned before each
call (every element must be written), or pre-filled with random values for accumulate=True (the
result must be old + new).
"""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device
from gradcheck import assert_close, check_gradient

ops = convnet.ops


# --------------------------------------------------------------------------------------------------
# helpers

def make(rng, N, H, W, C, K, R, S, groups):
    x = rng.standard_normal((N, H, W, C))
    w = rng.standard_normal((K, R, S, C // groups)) / np.sqrt(R * S * C // groups)
    b = rng.standard_normal(K)
    return x, w, b


def f32(a):
    """Round to float32 and back, so the reference sees exactly what our op sees."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def out_tensor(shape, device, rng, accumulate):
    """(tensor, old values or None): NaN poison, or random values to accumulate into."""
    if not accumulate:
        return poisoned(shape, device), None
    old = f32(rng.standard_normal(shape))
    return to_device(old, device), old


def run_forward(x, w, b, stride, pad, groups, device, rng, accumulate=False):
    P = ref.conv_output_size(x.shape[1], w.shape[1], stride[0], pad[0])
    Q = ref.conv_output_size(x.shape[2], w.shape[2], stride[1], pad[1])
    y, old = out_tensor((x.shape[0], P, Q, w.shape[0]), device, rng, accumulate)
    ops.conv_forward(to_device(x, device), to_device(w, device), None if b is None else to_device(b, device), y,
                     stride=stride, pad=pad, groups=groups, accumulate=accumulate)
    return y.numpy(), old


def run_backward_data(dy, w, x_shape, stride, pad, groups, device, rng, accumulate=False):
    dx, old = out_tensor(x_shape, device, rng, accumulate)
    ops.conv_backward_data(to_device(dy, device), to_device(w, device), dx, stride=stride, pad=pad,
                           groups=groups, accumulate=accumulate)
    return dx.numpy(), old


def run_backward_filter(dy, x, w_shape, with_bias, stride, pad, groups, device, rng, accumulate=False):
    dw, old_w = out_tensor(w_shape, device, rng, accumulate)
    db, old_b = out_tensor((w_shape[0],), device, rng, accumulate) if with_bias else (None, None)
    ops.conv_backward_filter(to_device(dy, device), to_device(x, device), dw, db, stride=stride, pad=pad,
                             groups=groups, accumulate=accumulate)
    return dw.numpy(), old_w, (db.numpy() if with_bias else None), old_b


def check_all_passes(rng, device, N, H, W, C, K, R, S, stride, pad, groups, bias=True, accumulate=False):
    x, w, b = make(rng, N, H, W, C, K, R, S, groups)
    x, w, b = f32(x), f32(w), f32(b) if bias else None
    y_ref = ref.conv_forward(x, w, b, stride, pad, groups)
    y, old = run_forward(x, w, b, stride, pad, groups, device, rng, accumulate)
    assert_close(y, y_ref + (old if accumulate else 0), what="y")

    dy = f32(rng.standard_normal(y_ref.shape))
    dx_ref, dw_ref, db_ref = ref.conv_backward(dy, x, w, stride, pad, groups)
    dx, old = run_backward_data(dy, w, x.shape, stride, pad, groups, device, rng, accumulate)
    assert_close(dx, dx_ref + (old if accumulate else 0), what="dx")
    dw, old_w, db, old_b = run_backward_filter(dy, x, w.shape, bias, stride, pad, groups, device, rng, accumulate)
    assert_close(dw, dw_ref + (old_w if accumulate else 0), what="dw")
    if bias:
        assert_close(db, db_ref + (old_b if accumulate else 0), what="db")


# (N, H, W, C, K, R, S, stride, pad, groups): odd sizes, non-square images and kernels
SMALL = [
    (1, 5, 5, 3, 1, 3, 3, (1, 1), (0, 0), 1),
    (2, 7, 9, 5, 6, 3, 2, (1, 1), (1, 0), 1),
    (2, 9, 8, 6, 6, 3, 3, (2, 2), (1, 1), 2),
    (1, 11, 7, 7, 13, 2, 3, (2, 1), (2, 1), 1),
    (3, 10, 13, 9, 6, 4, 3, (3, 3), (0, 2), 3),
    (2, 13, 12, 6, 4, 5, 4, (4, 3), (2, 2), 2),
    (1, 6, 11, 3, 6, 1, 1, (1, 1), (0, 0), 3),     # pointwise fast path, groups
    (2, 5, 4, 7, 13, 1, 1, (1, 1), (0, 0), 1),     # pointwise fast path
    (2, 9, 7, 5, 6, 1, 1, (2, 3), (0, 0), 1),      # 1x1 but strided: the general path
    (1, 6, 5, 4, 6, 1, 2, (1, 2), (1, 0), 2),      # 1x2 with padding
    (2, 17, 19, 3, 16, 11, 11, (4, 4), (2, 2), 1),  # conv1-like, tiny
    (1, 3, 3, 2, 3, 5, 5, (1, 1), (1, 1), 1),      # kernel = padded input
]


def small_id(p):
    N, H, W, C, K, R, S, st, pd, g = p
    return f"n{N}_{H}x{W}x{C}_k{K}_{R}x{S}_s{st[0]}{st[1]}_p{pd[0]}{pd[1]}_g{g}"


# --------------------------------------------------------------------------------------------------
# small shapes: every pass, bias or not, accumulate or not

@pytest.mark.parametrize("shape", SMALL, ids=small_id)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_small(device, rng, shape, bias):
    check_all_passes(rng, device, *shape, bias=bias)


@pytest.mark.parametrize("shape", SMALL[1:7], ids=small_id)
def test_conv_accumulate(device, rng, shape):
    check_all_passes(rng, device, *shape, bias=True, accumulate=True)


def test_conv_deterministic(device, rng):
    """Two identical calls give bit-identical results (fixed reduction orders, no atomics)."""
    x, w, b = make(rng, 3, 15, 14, 8, 10, 3, 3, 2)
    dy = rng.standard_normal((3, 8, 7, 10))
    outs = []
    for _ in range(2):
        y, _ = run_forward(x, w, b, (2, 2), (1, 1), 2, device, rng)
        dx, _ = run_backward_data(dy, w, x.shape, (2, 2), (1, 1), 2, device, rng)
        dw, _, db, _ = run_backward_filter(dy, x, w.shape, True, (2, 2), (1, 1), 2, device, rng)
        outs.append((y, dx, dw, db))
    for a, b2 in zip(*outs):
        assert np.array_equal(a, b2)


@pytest.mark.parametrize("shape", [SMALL[2], SMALL[4], SMALL[5], SMALL[9]], ids=small_id)
def test_conv_gradients(device, rng, shape):
    """dx, dw, db of our backward passes against central differences of the reference forward."""
    N, H, W, C, K, R, S, stride, pad, groups = shape
    x, w, b = make(rng, N, H, W, C, K, R, S, groups)
    x, w, b = f32(x), f32(w), f32(b)
    P = ref.conv_output_size(H, R, stride[0], pad[0])
    Q = ref.conv_output_size(W, S, stride[1], pad[1])
    dy = f32(rng.standard_normal((N, P, Q, K)))
    dx, _ = run_backward_data(dy, w, x.shape, stride, pad, groups, device, rng)
    dw, _, db, _ = run_backward_filter(dy, x, w.shape, True, stride, pad, groups, device, rng)
    check_gradient(dx, lambda v: ref.conv_forward(v, w, b, stride, pad, groups), x, dy, rng, what="dx")
    check_gradient(dw, lambda v: ref.conv_forward(x, v, b, stride, pad, groups), w, dy, rng, what="dw")
    check_gradient(db, lambda v: ref.conv_forward(x, w, v, stride, pad, groups), b, dy, rng, what="db")


# --------------------------------------------------------------------------------------------------
# AlexNet layers

# name: (H, W, C, K, R, S, stride, pad, groups)
ALEXNET = {
    "2012.conv1": (227, 227, 3, 96, 11, 11, (4, 4), (0, 0), 1),
    "2012.conv2": (27, 27, 96, 256, 5, 5, (1, 1), (2, 2), 2),
    "2012.conv3": (13, 13, 256, 384, 3, 3, (1, 1), (1, 1), 1),
    "2012.conv4": (13, 13, 384, 384, 3, 3, (1, 1), (1, 1), 2),
    "2012.conv5": (13, 13, 384, 256, 3, 3, (1, 1), (1, 1), 2),
    "owt.conv1": (224, 224, 3, 64, 11, 11, (4, 4), (2, 2), 1),
    "owt.conv2": (27, 27, 64, 192, 5, 5, (1, 1), (2, 2), 1),
    "owt.conv3": (13, 13, 192, 384, 3, 3, (1, 1), (1, 1), 1),
    "owt.conv4": (13, 13, 384, 256, 3, 3, (1, 1), (1, 1), 1),
    "owt.conv5": (13, 13, 256, 256, 3, 3, (1, 1), (1, 1), 1),
}


# Batch 2 (batch 1 for the 224/227 first layers): each takes well under a second on 2 cores, so none
# needs the slow mark.
@pytest.mark.parametrize("name", list(ALEXNET))
def test_conv_alexnet_layers(device, rng, name):
    H, W, C, K, R, S, stride, pad, groups = ALEXNET[name]
    N = 2 if H < 100 else 1
    check_all_passes(rng, device, N, H, W, C, K, R, S, stride, pad, groups, bias=True)


def test_alexnet_output_sizes():
    """227 -> conv 11/4 -> 55 -> pool 3/2 -> 27 -> conv 5 pad 2 -> 27 -> pool -> 13 -> conv 3 pad 1 -> 13
    -> pool -> 6, by our shape functions and by the reference's floor rule."""
    shape = (1, 227, 227, 3)
    sizes = [227]
    steps = [("conv", (96, 11, 11, 3), (4, 4), (0, 0), 1), ("pool",),
             ("conv", (256, 5, 5, 48), (1, 1), (2, 2), 2), ("pool",),
             ("conv", (384, 3, 3, 256), (1, 1), (1, 1), 1), ("pool",)]
    for step in steps:
        if step[0] == "conv":
            _, w, stride, pad, groups = step
            new = convnet._C.conv_output_shape(shape, w, stride, pad, groups)
            assert new[1] == ref.conv_output_size(shape[1], w[1], stride[0], pad[0])
            assert new[2] == ref.conv_output_size(shape[2], w[2], stride[1], pad[1])
        else:
            new = convnet._C.pool_output_shape(shape, (3, 3), (2, 2))
            assert new[1] == ref.conv_output_size(shape[1], 3, 2, 0)
        shape = tuple(new)
        sizes.append(shape[1])
    assert sizes == [227, 55, 27, 27, 13, 13, 6]


# --------------------------------------------------------------------------------------------------
# bad arguments: ValueError naming the op and the shapes; the process stays usable

def test_conv_bad_arguments(device, rng):
    z = lambda shape: convnet.zeros(shape, device)  # noqa: E731

    def expect(fn, *words):
        with pytest.raises(ValueError) as info:
            fn()
        for word in words:
            assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"

    x, y = z((1, 5, 5, 3)), z((1, 3, 3, 4))
    # kernel larger than the padded input
    expect(lambda: ops.conv_forward(x, z((4, 7, 7, 3)), None, z((1, 1, 1, 4))),
           "conv_forward", "(1, 5, 5, 3)", "(4, 7, 7, 3)")
    expect(lambda: ops.conv_backward_data(z((1, 1, 1, 4)), z((4, 7, 7, 3)), x),
           "conv_backward_data", "(4, 7, 7, 3)")
    # groups not dividing the channels
    expect(lambda: ops.conv_forward(x, z((4, 3, 3, 1)), None, y, groups=2), "conv_forward", "groups")
    expect(lambda: ops.conv_forward(z((1, 5, 5, 4)), z((3, 3, 3, 2)), None, y, groups=2), "conv_forward", "groups")
    # filter channels do not match x
    expect(lambda: ops.conv_forward(x, z((4, 3, 3, 2)), None, y), "conv_forward", "(4, 3, 3, 2)")
    expect(lambda: ops.conv_backward_filter(y, x, z((4, 3, 3, 2)), None), "conv_backward_filter", "(4, 3, 3, 2)")
    # stride 0
    expect(lambda: ops.conv_forward(x, z((4, 3, 3, 3)), None, y, stride=(0, 1)), "conv_forward", "stride")
    # wrong output shapes
    expect(lambda: ops.conv_forward(x, z((4, 3, 3, 3)), None, z((1, 3, 4, 4))), "conv_forward", "(1, 3, 4, 4)")
    expect(lambda: ops.conv_backward_data(z((1, 3, 3, 5)), z((4, 3, 3, 3)), x), "conv_backward_data", "(1, 3, 3, 5)")
    expect(lambda: ops.conv_backward_filter(y, x, z((4, 3, 3, 3)), z((5,))), "conv_backward_filter", "(5,)")
    # still usable afterwards
    check_all_passes(rng, device, 1, 5, 5, 3, 4, 3, 3, (1, 1), (0, 0), 1)


# --------------------------------------------------------------------------------------------------
# fused ReLU epilogue: y = max(0, conv + b (+ old y))

@pytest.mark.parametrize("accumulate", [False, True], ids=["write", "accumulate"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [
    (2, 9, 8, 3, 8, 3, 3, (1, 1), (1, 1), 1),     # padded 3x3
    (2, 13, 11, 3, 5, 5, 5, (2, 3), (2, 1), 1),   # strided, padded, C*S not a multiple of 16
    (3, 6, 6, 4, 6, 3, 3, (1, 1), (1, 1), 2),     # groups
    (2, 5, 4, 6, 33, 1, 1, (1, 1), (0, 0), 1),    # pointwise path, K past one NR panel
], ids=["3x3", "strided", "groups", "1x1"])
def test_conv_forward_relu(device, rng, shape, bias, accumulate):
    N, H, W, C, K, R, S, stride, pad, groups = shape
    x, w, b = make(rng, N, H, W, C, K, R, S, groups)
    x, w, b = f32(x), f32(w), f32(b) if bias else None
    y, old = out_tensor((N, ref.conv_output_size(H, R, stride[0], pad[0]),
                         ref.conv_output_size(W, S, stride[1], pad[1]), K), device, rng, accumulate)
    ops.conv_forward(to_device(x, device), to_device(w, device), None if b is None else to_device(b, device), y,
                     stride=stride, pad=pad, groups=groups, accumulate=accumulate, relu=True)
    pre = ref.conv_forward(x, w, b, stride, pad, groups) + (old if accumulate else 0)
    assert (pre < 0).any() and (pre > 0).any()
    assert_close(y.numpy(), ref.relu_forward(pre), what="y")


# --------------------------------------------------------------------------------------------------
# batches of N >= 2 x threads: the CPU runs one image chunk per thread (uneven splits, several
# chunks per thread, per-thread partial dW)

BATCHED = [
    (5, 9, 8, 6, 6, 3, 3, (2, 2), (1, 1), 2),
    (9, 7, 9, 5, 33, 3, 2, (1, 1), (1, 0), 1),
    (4, 17, 19, 3, 16, 11, 11, (4, 4), (2, 2), 1),
    (6, 6, 11, 3, 6, 1, 1, (1, 1), (0, 0), 3),     # pointwise
    (4, 9, 9, 3, 64, 5, 5, (1, 1), (2, 2), 1),     # CPU dW as (RSC, Kg) then turned (conv1-like tiling)
    (5, 8, 8, 6, 64, 5, 5, (2, 2), (2, 2), 2),     # the same, with groups
    # channel counts of the 3x3 layers, which the CPU runs without a patch matrix:
    (4, 7, 6, 64, 48, 3, 3, (1, 1), (1, 1), 2),    # Cg % 16 == 0: forward A panels packed from x
    (4, 9, 8, 32, 24, 3, 3, (2, 2), (1, 1), 1),    # the same, strided (backward-data keeps col2im)
    (4, 6, 5, 256, 96, 3, 3, (1, 1), (1, 1), 2),   # Cg = 128, stride 1: backward-data as a forward conv
                                                   # with turned filters; backward-filter panels from x
]


@pytest.mark.parametrize("shape", BATCHED, ids=small_id)
@pytest.mark.parametrize("accumulate", [False, True], ids=["write", "accumulate"])
def test_conv_batched(device, rng, shape, accumulate):
    check_all_passes(rng, device, *shape, bias=True, accumulate=accumulate)


# The CUDA kernels' tiling paths (cuda/conv.cu): 16-byte copies (channels % 4 == 0) with a channel
# count that is not a multiple of BK = 8 (two carries per slice), 4-byte copies (channels % 4 != 0),
# more than one 128-wide tile along both GEMM dimensions with partial edges, backward data's stride
# phases (a phase with no tap at all: stride > kernel; padding >= kernel, whose sub-convolution has a
# negative padding), and an empty batch.
TILING = [
    (2, 7, 6, 8, 12, 3, 3, (1, 1), (1, 1), 2),      # Cg = 4, Kg = 6: 16-byte x copies, 4-byte dy
    (1, 6, 7, 12, 132, 3, 2, (1, 1), (1, 0), 1),    # Kg = 132: two column tiles, the second partial
    (5, 11, 10, 20, 8, 3, 3, (2, 2), (1, 1), 1),    # N*P*Q = 150: two row tiles; stride-2 phases
    (2, 5, 6, 4, 4, 2, 2, (1, 1), (2, 2), 1),       # pad 2 >= kernel 2
    (2, 9, 9, 4, 8, 2, 2, (3, 3), (1, 1), 1),       # stride 3 > kernel 2: phases without taps
    (1, 19, 17, 8, 8, 5, 5, (4, 4), (2, 2), 2),     # stride 4, groups, C % 4 == 0
    (3, 12, 12, 3, 20, 7, 5, (3, 2), (3, 2), 1),    # C = 3 (conv1-like copies), unequal strides
    (1, 30, 3, 16, 260, 1, 3, (1, 1), (0, 1), 1),   # RSC = 48, Kg = 260: three column tiles
    (4, 20, 20, 4, 8, 3, 3, (1, 1), (1, 1), 1),     # N*P*Q = 1600: backward filter in 3 splits
]


@pytest.mark.parametrize("shape", TILING, ids=small_id)
def test_conv_tiling_paths(device, rng, shape):
    check_all_passes(rng, device, *shape, bias=True)
    check_all_passes(rng, device, *shape, bias=False, accumulate=True)


def test_conv_empty_batch(device, rng):
    """N = 0: y and dx are empty; dw is zero (or unchanged when accumulating); db too."""
    x, w = convnet.zeros((0, 9, 8, 4), device), to_device(f32(rng.standard_normal((6, 3, 3, 4))), device)
    y = convnet.zeros((0, 4, 3, 6), device)
    ops.conv_forward(x, w, None, y, stride=(2, 2))
    ops.conv_backward_data(y, w, x, stride=(2, 2))
    dw, db = poisoned((6, 3, 3, 4), device), poisoned((6,), device)
    ops.conv_backward_filter(y, x, dw, db, stride=(2, 2))
    assert np.array_equal(dw.numpy(), np.zeros((6, 3, 3, 4))) and np.array_equal(db.numpy(), np.zeros(6))
    old = f32(rng.standard_normal((6, 3, 3, 4)))
    dw = to_device(old, device)
    ops.conv_backward_filter(y, x, dw, None, stride=(2, 2), accumulate=True)
    assert np.array_equal(dw.numpy(), old)


def test_conv_batched_relu_deterministic(device, rng):
    x, w, b = make(rng, 7, 11, 10, 8, 12, 3, 3, 2)
    x, w, b = f32(x), f32(w), f32(b)
    dy = f32(rng.standard_normal((7, 6, 5, 12)))
    outs = []
    for _ in range(2):
        y = poisoned((7, 6, 5, 12), device)
        ops.conv_forward(to_device(x, device), to_device(w, device), to_device(b, device), y, stride=(2, 2),
                         pad=(1, 1), groups=2, relu=True)
        dw, _, db, _ = run_backward_filter(dy, x, w.shape, True, (2, 2), (1, 1), 2, device, rng)
        outs.append((y.numpy(), dw, db))
    assert_close(outs[0][0], ref.relu_forward(ref.conv_forward(x, w, b, (2, 2), (1, 1), 2)), what="y")
    for a, b2 in zip(*outs):
        assert np.array_equal(a, b2)


# --------------------------------------------------------------------------------------------------
# results do not depend on the thread count

# One process per thread count (OpenMP reads OMP_NUM_THREADS once, at start-up): each computes the
# backward-filter and bias gradients (and, for comparison, forward and backward-data) of layers that
# reach every CPU path -- pointwise, grouped, the transposed tiling (conv1-like: Kg = 64, RSC = 363),
# patch panels packed from x (Cg % 32 == 0), one image and a batch -- and prints their bytes' digest.
_THREAD_SCRIPT = r"""
import hashlib, sys
import numpy as np
import convnet
ops = convnet.ops
T = convnet.Tensor
cases = [  # N, H, W, C, K, R, S, groups, stride, pad
    (1, 19, 19, 3, 64, 11, 11, 1, 4, 0), (6, 19, 19, 3, 64, 11, 11, 1, 4, 0),
    (5, 9, 9, 32, 24, 3, 3, 2, 1, 1), (7, 6, 6, 64, 32, 3, 3, 1, 1, 1),
    (3, 10, 10, 16, 8, 1, 1, 1, 1, 0), (2, 27, 27, 12, 16, 5, 5, 1, 1, 2), (4, 6, 6, 128, 32, 3, 3, 1, 1, 1),
]
digest = hashlib.sha256()
for i, (N, H, W, C, K, R, S, g, st, pd) in enumerate(cases):
    rng = np.random.default_rng(100 + i)
    x = rng.standard_normal((N, H, W, C), dtype=np.float32)
    w = rng.standard_normal((K, R, S, C // g), dtype=np.float32)
    P, Q = (H + 2 * pd - R) // st + 1, (W + 2 * pd - S) // st + 1
    dy = rng.standard_normal((N, P, Q, K), dtype=np.float32)
    dw, db = T.empty(w.shape, "cpu", "float32"), T.empty((K,), "cpu", "float32")
    ops.conv_backward_filter(T.from_numpy(dy, "cpu"), T.from_numpy(x, "cpu"), dw, db, stride=(st, st),
                             pad=(pd, pd), groups=g)
    digest.update(dw.numpy().tobytes()); digest.update(db.numpy().tobytes())
    if sys.argv[1] == "all":
        y, dx = T.empty(dy.shape, "cpu", "float32"), T.empty(x.shape, "cpu", "float32")
        ops.conv_forward(T.from_numpy(x, "cpu"), T.from_numpy(w, "cpu"), None, y, stride=(st, st), pad=(pd, pd), groups=g)
        ops.conv_backward_data(T.from_numpy(dy, "cpu"), T.from_numpy(w, "cpu"), dx, stride=(st, st), pad=(pd, pd), groups=g)
        digest.update(y.numpy().tobytes()); digest.update(dx.numpy().tobytes())
print(digest.hexdigest())
"""


def _digest_at(threads: int, what: str) -> str:
    import os
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    run = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT, what], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_cpu_backward_filter_bytes_do_not_depend_on_thread_count():
    # Data parallelism sums gradients computed by processes that may run different thread counts:
    # the CPU backward-filter (and its bias sum) must give the same bytes at 1, 2 and 3 threads.
    digests = {t: _digest_at(t, "filter") for t in (1, 2, 3)}
    assert len(set(digests.values())) == 1, digests


def test_cpu_conv_passes_bytes_do_not_depend_on_thread_count():
    # The same for forward and backward-data (the turned-filter backward-data path used to be taken
    # only when N >= 2 x threads, so a 4-image batch of a 128-channel 3x3 layer changed bits between
    # 2 and 3 threads).
    digests = {t: _digest_at(t, "all") for t in (1, 2, 3)}
    assert len(set(digests.values())) == 1, digests
