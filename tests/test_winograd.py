"""Winograd convolution (csrc/cpu/winograd.cpp, cuda/winograd.cu) forced with algorithm="winograd" on odd
shapes and AlexNet's (batch scaled down), on every device: forward, backward-data and backward-filter
against the float64 reference, outputs NaN-poisoned (every element written), accumulate adding to old
values; a gradient check through the Winograd passes; the errors of algorithm=; what auto picks under
each precision; the Conv layer option.
"""
import numpy as np
import pytest

import convnet
import reference as ref
from conftest import poisoned, to_device
from gradcheck import assert_close
from test_conv import f32, make, out_tensor

ops = convnet.ops

# (N, H, W, C, K, R, pad, groups): odd H/W, pad 0/1/2 (up to R-1), groups 2, N = 1, C not a multiple of 4 or 16.
SHAPES = [
    (1, 7, 9, 5, 3, 3, 1, 1),
    (2, 13, 13, 24, 20, 3, 1, 2),
    (1, 5, 6, 3, 7, 3, 0, 1),
    (3, 11, 8, 17, 33, 3, 2, 1),
    (1, 27, 27, 12, 16, 5, 2, 2),
    (2, 9, 7, 7, 5, 5, 0, 1),
    (1, 6, 10, 9, 11, 5, 4, 1),
    (2, 13, 13, 64, 96, 3, 1, 2),
    (1, 3, 3, 6, 10, 3, 2, 2),  # output larger than the input, a single partial tile
    (2, 2, 9, 5, 4, 3, 1, 1),   # H < 4: one row of partial tiles
    (1, 6, 3, 4, 6, 5, 2, 1),   # W < 4, 5x5
    (0, 9, 9, 8, 8, 3, 1, 1),   # empty batch
    (1, 0, 5, 3, 4, 3, 2, 1),   # empty input rows, padding alone gives a 2 x 7 output
    (2, 10, 11, 40, 70, 3, 0, 2),  # K/C per group not multiples of the CUDA block tiles (32, 16, 4)
]
# AlexNet's 3x3 and 5x5 layers (2012 conv2-5, OWT conv3-5 share their shapes), batch 1.
ALEXNET = {
    "2012.conv2": (1, 27, 27, 96, 256, 5, 2, 2),
    "2012.conv3": (1, 13, 13, 256, 384, 3, 1, 1),
    "2012.conv4": (1, 13, 13, 384, 384, 3, 1, 2),
    "2012.conv5": (1, 13, 13, 384, 256, 3, 1, 2),
    "owt.conv3": (1, 13, 13, 192, 384, 3, 1, 1),
}


def run_all(rng, shape, accumulate, algorithm, device="cpu"):
    N, H, W, C, K, R, pad, groups = shape
    x, w, b = make(rng, N, H, W, C, K, R, R, groups)
    x, w, b = f32(x), f32(w), f32(b)
    kw = dict(stride=(1, 1), pad=(pad, pad), groups=groups, accumulate=accumulate, algorithm=algorithm)
    y_ref = ref.conv_forward(x, w, b, (1, 1), (pad, pad), groups)
    dy = f32(rng.standard_normal(y_ref.shape))
    dx_ref, dw_ref, db_ref = ref.conv_backward(dy, x, w, (1, 1), (pad, pad), groups)

    y, old_y = out_tensor(y_ref.shape, device, rng, accumulate)
    ops.conv_forward(to_device(x, device), to_device(w, device), to_device(b, device), y, **kw)
    dx, old_x = out_tensor(x.shape, device, rng, accumulate)
    ops.conv_backward_data(to_device(dy, device), to_device(w, device), dx, **kw)
    dw, old_w = out_tensor(w.shape, device, rng, accumulate)
    db, old_b = out_tensor(b.shape, device, rng, accumulate)
    ops.conv_backward_filter(to_device(dy, device), to_device(x, device), dw, db, **kw)
    add = (lambda ref_, old: ref_ + old) if accumulate else (lambda ref_, old: ref_)
    assert_close(y.numpy(), add(y_ref, old_y), what="y")
    assert_close(dx.numpy(), add(dx_ref, old_x), what="dx")
    assert_close(dw.numpy(), add(dw_ref, old_w), what="dw")
    assert_close(db.numpy(), add(db_ref, old_b), what="db")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("accumulate", [False, True])
def test_winograd_all_passes(rng, shape, accumulate, device):
    run_all(rng, shape, accumulate, "winograd", device)


@pytest.mark.parametrize("layer", ALEXNET)
def test_winograd_alexnet_layers(rng, layer, device):
    run_all(rng, ALEXNET[layer], False, "winograd", device)


@pytest.mark.parametrize("algorithm", ["auto", "direct"])
def test_other_algorithms_same_contract(rng, algorithm, device):
    # a shape the auto rules send to Winograd (3x3, 64+ channels, >= 4096 output pixels) and one the CPU's does not
    run_all(rng, (25, 13, 13, 64, 64, 3, 1, 1), False, algorithm, device)
    run_all(rng, (2, 9, 7, 7, 5, 5, 0, 1), True, algorithm, device)


def run_forward_bits(x, w, algorithm, precision, device):
    y = poisoned((x.shape[0], x.shape[1], x.shape[2], w.shape[0]), device)
    with convnet.use_precision(precision):
        ops.conv_forward(to_device(x, device), to_device(w, device), None, y, stride=(1, 1), pad=(1, 1),
                         algorithm=algorithm)
    return y.numpy()


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_auto_picks_winograd_only_under_fp32(rng, precision, device):
    """auto's result has the bits of one of the two algorithms: Winograd for a 3x3 layer both rules take
    (AlexNet-like: 64 channels, 13x13, batch 25) under fp32; direct under bf16, and on CUDA under tf32
    too (the CPU computes tf32 as fp32, so its rule keeps Winograd there)."""
    x, w, _ = make(rng, 25, 13, 13, 64, 64, 3, 3, 1)
    x, w = f32(x), f32(w)
    auto = run_forward_bits(x, w, "auto", precision, device)
    winograd_modes = ("fp32",) if device.startswith("cuda") else ("fp32", "tf32")
    expected = "winograd" if precision in winograd_modes else "direct"
    np.testing.assert_array_equal(auto, run_forward_bits(x, w, expected, precision, device))
    other = "direct" if expected == "winograd" else "winograd"
    assert not np.array_equal(auto, run_forward_bits(x, w, other, precision, device))


def test_winograd_fused_relu(rng, device):
    x, w, b = make(rng, 2, 9, 11, 8, 6, 3, 3, 1)
    x, w, b = f32(x), f32(w), f32(b)
    y_ref = np.maximum(ref.conv_forward(x, w, b, (1, 1), (1, 1), 1), 0)
    y = poisoned(y_ref.shape, device)
    ops.conv_forward(to_device(x, device), to_device(w, device), to_device(b, device), y, stride=(1, 1),
                     pad=(1, 1), groups=1, accumulate=False, relu=True, algorithm="winograd")
    assert_close(y.numpy(), y_ref, what="y")


def test_winograd_gradient_check(rng, device):
    """Finite differences of L = sum(conv(x, w) * g) in float64 on the reference, against the Winograd
    backward passes (so a wrong turned filter or transposed transform cannot pass)."""
    N, H, W, C, K, R, pad, groups = 2, 7, 6, 4, 6, 3, 1, 2
    x, w, b = make(rng, N, H, W, C, K, R, R, groups)
    x, w = f32(x), f32(w)
    y0 = ref.conv_forward(x, w, None, (1, 1), (pad, pad), groups)
    g = f32(rng.standard_normal(y0.shape))
    dx = poisoned(x.shape, device)
    dw = poisoned(w.shape, device)
    kw = dict(stride=(1, 1), pad=(pad, pad), groups=groups, accumulate=False, algorithm="winograd")
    ops.conv_backward_data(to_device(g, device), to_device(w, device), dx, **kw)
    ops.conv_backward_filter(to_device(g, device), to_device(x, device), dw, None, **kw)
    eps = 1e-4
    for arr, grad in ((x, dx.numpy()), (w, dw.numpy())):
        for idx in [tuple(rng.integers(0, n) for n in arr.shape) for _ in range(6)]:
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args = (plus, w) if arr is x else (x, plus)
            argm = (minus, w) if arr is x else (x, minus)
            fd = (np.sum(ref.conv_forward(*args, None, (1, 1), (pad, pad), groups) * g)
                  - np.sum(ref.conv_forward(*argm, None, (1, 1), (pad, pad), groups) * g)) / (2 * eps)
            assert abs(grad[idx] - fd) <= 1e-4 * max(1.0, abs(fd)), (idx, grad[idx], fd)


def test_winograd_same_bits_any_thread_count(rng):
    """dw sums its tiles in chunk order, whatever the threads: 1 and 2 threads give the same bits."""
    x, w, b = make(rng, 3, 13, 13, 32, 48, 3, 3, 1)
    x, w = to_device(f32(x), "cpu"), to_device(f32(w), "cpu")
    dy = to_device(f32(rng.standard_normal((3, 13, 13, 48))), "cpu")
    results = []
    before = convnet._C.cpu_threads()
    try:
        for threads in (1, 2):
            convnet._C.set_cpu_threads(threads)
            dw = poisoned((48, 3, 3, 32), "cpu")
            ops.conv_backward_filter(dy, x, dw, None, stride=(1, 1), pad=(1, 1), algorithm="winograd")
            results.append(dw.numpy())
    finally:
        convnet._C.set_cpu_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


def test_winograd_same_bits_every_run(rng, device):
    """Every pass sums in a fixed order (the CUDA backward-filter's splits too): two runs, the same bits."""
    shape = (3, 13, 13, 32, 48, 3, 1, 1)
    x, w, b = make(rng, *shape[:5], 3, 3, 1)
    x, w, dy = to_device(f32(x), device), to_device(f32(w), device), to_device(
        f32(rng.standard_normal((3, 13, 13, 48))), device)
    runs = []
    for _ in range(2):
        y, dx, dw = poisoned((3, 13, 13, 48), device), poisoned((3, 13, 13, 32), device), poisoned((48, 3, 3, 32), device)
        kw = dict(stride=(1, 1), pad=(1, 1), algorithm="winograd")
        ops.conv_forward(x, w, None, y, **kw)
        ops.conv_backward_data(dy, w, dx, **kw)
        ops.conv_backward_filter(dy, x, dw, None, **kw)
        runs.append([t.numpy() for t in (y, dx, dw)])
    for a, b_ in zip(*runs):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("op", ["conv_forward", "conv_backward_data", "conv_backward_filter"])
@pytest.mark.parametrize("w_shape, stride, pad, message", [
    ((4, 3, 3, 2), (2, 2), (1, 1), "stride 1"),
    ((4, 7, 7, 2), (1, 1), (1, 1), "3x3 or 5x5"),
    ((4, 3, 5, 2), (1, 1), (1, 1), "3x3 or 5x5"),
    ((4, 3, 3, 2), (1, 1), (3, 3), "padding below"),
])
def test_winograd_unsupported_shape_errors(op, w_shape, stride, pad, message, device):
    x = convnet.from_numpy(np.zeros((1, 11, 11, 2), np.float32), device)
    w = convnet.from_numpy(np.zeros(w_shape, np.float32), device)
    P = ref.conv_output_size(11, w_shape[1], stride[0], pad[0])
    Q = ref.conv_output_size(11, w_shape[2], stride[1], pad[1])
    y = convnet.empty((1, P, Q, 4), device)
    kw = dict(stride=stride, pad=pad, groups=1, accumulate=False, algorithm="winograd")
    with pytest.raises(ValueError, match=f"{op}.*algorithm='winograd'.*{message}.*filter {w_shape[1]}x{w_shape[2]}"):
        if op == "conv_forward":
            ops.conv_forward(x, w, None, y, **kw)
        elif op == "conv_backward_data":
            ops.conv_backward_data(y, w, x, **kw)
        else:
            ops.conv_backward_filter(y, x, w, None, **kw)


def test_unknown_algorithm_error():
    x = convnet.from_numpy(np.zeros((1, 5, 5, 2), np.float32))
    w = convnet.from_numpy(np.zeros((4, 3, 3, 2), np.float32))
    y = convnet.empty((1, 3, 3, 4))
    with pytest.raises(ValueError, match="conv_forward: algorithm must be 'auto', 'direct' or 'winograd', got 'fft'"):
        ops.conv_forward(x, w, None, y, algorithm="fft")
    with pytest.raises(TypeError):
        ops.conv_forward(x, w, None, y, algorithm=3)


def test_conv_layer_algorithm_option(rng):
    from convnet.layers import Conv
    with pytest.raises(ValueError, match="algorithm='fft'"):
        Conv("c", "data", filters=4, size=3, algorithm="fft").setup([(8, 8, 3)])
    with pytest.raises(ValueError, match="algorithm='winograd' needs stride 1"):
        Conv("c", "data", filters=4, size=3, stride=2, algorithm="winograd").setup([(8, 8, 3)])
    Conv("c", "data", filters=4, size=5, pad=2, algorithm="winograd").setup([(8, 8, 3)])  # accepted
