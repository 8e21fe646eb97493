"""Mixed precision on the CPU (python/convnet/precision.py, csrc/cpu/gemm_bf16.cpp).

bf16: the GEMM operands are rounded to bfloat16 (8-bit mantissa: relative rounding error <= 2^-9
per input) while they are packed; products are exact in float32 and every sum is float32. Two
checks per op, both against float64 NumPy (tests/reference.py):
  * against the exact result: relative error norm < 1e-2 (what the rounding allows: each product is
    off by <= ~2^-8 relative, random-sign sums average that down to ~2.5e-3 measured) AND > 1e-4,
    which proves the bf16 path really ran (fp32 gives ~1e-7 here);
  * against the float64 result on the bf16-ROUNDED inputs (reference.round_bf16): < 1e-5, i.e.
    only float32 summation error is left. A kernel that truncates instead of rounding to nearest
    even, drops a k pair or misplaces a panel fails this by orders of magnitude.
Both bf16 kernels run on every machine that has them: 'avx512_bf16' (skipped with a reason where the
CPU lacks AVX512-BF16) and 'portable' (the fallback: same rounding, float32 multiply-adds).
tf32 on the CPU computes in full float32 (docs/architecture.md, "Precision"): checked at 1e-5.
"""
import numpy as np
import pytest

import convnet
import reference as ref
from convnet.data import builtin
from conftest import poisoned, to_device

ops = convnet.ops
_C = convnet._C

KERNELS = [
    pytest.param("amx", id="amx",
                 marks=pytest.mark.skipif(not _C.cpu_has_amx_bf16(), reason="no AMX-BF16 tiles on this CPU/OS")),
    pytest.param("avx512_bf16", id="avx512_bf16",
                 marks=pytest.mark.skipif(not _C.cpu_has_avx512_bf16(), reason="this CPU lacks AVX512-BF16")),
    pytest.param("portable", id="portable"),
]


@pytest.fixture(params=KERNELS)
def bf16(request):
    """Run the test's GEMMs in bf16 on the given kernel; restores fp32 and the automatic choice."""
    _C.set_bf16_kernel(request.param)
    try:
        with convnet.use_precision("bf16"):
            yield request.param
    finally:
        _C.set_bf16_kernel("auto")


@pytest.fixture(params=["serial", "parallel"])
def cpu_path(request):
    _C.set_cpu_path(request.param)
    try:
        yield request.param
    finally:
        _C.set_cpu_path("auto")


def f32(a):
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def rel(out, want):
    return float(np.linalg.norm(out - want) / np.linalg.norm(want))


def check_bf16(out, exact, rounded, what):
    """out: our bf16 result; exact: float64 on the float32 inputs; rounded: float64 on bf16 inputs."""
    assert np.isfinite(out).all(), f"{what}: non-finite (an element not written?)"
    e_exact, e_rounded = rel(out, exact), rel(out, rounded)
    assert e_exact < 1e-2, f"{what}: relative error {e_exact:.2e} vs exact >= 1e-2"
    assert e_exact > 1e-4, f"{what}: relative error {e_exact:.2e}: too accurate for bf16 (did it run fp32?)"
    assert e_rounded < 1e-5, f"{what}: relative error {e_rounded:.2e} vs the bf16-rounded inputs >= 1e-5"


# --------------------------------------------------------------------------------------------------
# rounding reference

def test_round_bf16_reference():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -2.5, 1e-40, -1e-40, np.inf,
                  3.4e38], dtype=np.float32)
    r = ref.round_bf16(x)
    # ties to even (1 + 2^-8 -> 1; 1 + 3*2^-8 -> 1 + 2^-6), above the tie rounds up, denormals flush
    assert list(r[:5]) == [1.0, 1.0, 1.0 + 2 ** -6, 1.0 + 2 ** -7, -2.5]
    assert r[5] == 0.0 and r[6] == 0.0 and np.signbit(r[6]) and r[7] == np.inf and r[8] == np.inf
    assert np.isnan(ref.round_bf16(np.array([np.nan], dtype=np.float32))[0])


# --------------------------------------------------------------------------------------------------
# GEMM

GEMM_SHAPES = [(13, 37, 29), (12, 32, 256), (25, 65, 513), (128, 100, 1000), (3, 200, 7), (150, 1030, 40)]


@pytest.mark.parametrize("M,N,K", GEMM_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in GEMM_SHAPES])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["nn", "nt", "tn", "tt"])
def test_gemm_bf16(rng, bf16, cpu_path, M, N, K, trans_a, trans_b):
    a = f32(rng.standard_normal((K, M) if trans_a else (M, K)))
    b = f32(rng.standard_normal((N, K) if trans_b else (K, N)))
    op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)
    c = poisoned((M, N), "cpu")
    ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
    check_bf16(c.numpy(), 0.5 * op_a @ op_b, 0.5 * ref.round_bf16(op_a) @ ref.round_bf16(op_b), "gemm")


def test_gemm_bf16_beta(rng, bf16):
    M, N, K = 40, 70, 300
    a, b, c0 = f32(rng.standard_normal((M, K))), f32(rng.standard_normal((K, N))), f32(rng.standard_normal((M, N)))
    c = to_device(c0, "cpu")
    ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c, beta=0.75)
    # beta * C is float32 arithmetic on C itself, never rounded to bf16
    check_bf16(c.numpy(), a @ b + 0.75 * c0, ref.round_bf16(a) @ ref.round_bf16(b) + 0.75 * c0, "gemm beta")


def test_gemm_bf16_gemv_stays_fp32(rng, bf16):
    """M == 1 and N == 1 are memory-bound GEMVs: they stay float32 in every precision (documented)."""
    a, b = f32(rng.standard_normal((1, 500))), f32(rng.standard_normal((500, 64)))
    c = poisoned((1, 64), "cpu")
    ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c)
    assert rel(c.numpy(), a @ b) < 1e-5


def test_gemm_tf32_is_fp32_on_cpu(rng):
    a, b = f32(rng.standard_normal((50, 300))), f32(rng.standard_normal((300, 70)))
    c = poisoned((50, 70), "cpu")
    with convnet.use_precision("tf32"):
        ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c)
    assert rel(c.numpy(), a @ b) < 1e-5


def test_bf16_kernels_agree(rng):
    """The AVX512-BF16, AMX and portable kernels pack the same bits; their sums differ only in order."""
    if not _C.cpu_has_avx512_bf16():
        pytest.skip("this CPU lacks AVX512-BF16")
    a, b = f32(rng.standard_normal((77, 333))), f32(rng.standard_normal((333, 45)))
    outs = []
    for kernel in ("avx512_bf16", "portable") + (("amx",) if _C.cpu_has_amx_bf16() else ()):
        _C.set_bf16_kernel(kernel)
        c = poisoned((77, 45), "cpu")
        with convnet.use_precision("bf16"):
            ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c)
        outs.append(c.numpy().astype(np.float64))
    _C.set_bf16_kernel("auto")
    for o in outs[1:]:
        assert rel(outs[0], o) < 1e-6


def test_precision_errors():
    with pytest.raises(ValueError, match="set_precision.*'fp16'"):
        _C.set_precision("fp16")
    with pytest.raises(ValueError, match="set_bf16_kernel.*'avx2'"):
        _C.set_bf16_kernel("avx2")
    with pytest.raises(ValueError, match="use_precision.*fp32, tf32, bf16.*'half'"):
        with convnet.use_precision("half"):
            pass
    assert _C.precision() == "fp32"
    if not _C.cpu_has_avx512_bf16():
        with pytest.raises(ValueError, match="lacks AVX512-BF16"):
            _C.set_bf16_kernel("avx512_bf16")


def test_use_precision_restores_after_error():
    with pytest.raises(RuntimeError):
        with convnet.use_precision("bf16"):
            assert _C.precision() == "bf16"
            raise RuntimeError("boom")
    assert _C.precision() == "fp32"


# --------------------------------------------------------------------------------------------------
# the ops on the GEMM: FC layers and convolutions, every CPU path

R = ref.round_bf16


def test_fc_bf16(rng, bf16):
    N, inp, out = 37, 300, 70
    x, w, b, dy = (f32(rng.standard_normal(s)) for s in ((N, inp), (out, inp), (out,), (N, out)))
    y = poisoned((N, out), "cpu")
    ops.fc_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu"), y)
    check_bf16(y.numpy(), ref.fc_forward(x, w, b), ref.fc_forward(R(x), R(w), b), "fc_forward")  # bias fp32
    dx = poisoned((N, inp), "cpu")
    ops.fc_backward_data(to_device(dy, "cpu"), to_device(w, "cpu"), dx)
    check_bf16(dx.numpy(), dy @ w, R(dy) @ R(w), "fc_backward_data")
    dw, db = poisoned((out, inp), "cpu"), poisoned((out,), "cpu")
    ops.fc_backward_weights(to_device(dy, "cpu"), to_device(x, "cpu"), dw, db)
    check_bf16(dw.numpy(), dy.T @ x, R(dy).T @ R(x), "fc_backward_weights")
    assert rel(db.numpy(), dy.sum(axis=0)) < 1e-6  # a column sum, not a GEMM: fp32


# (N, H, W, C, K, R, S, stride, pad, groups) chosen to reach each CPU conv path (csrc/cpu/conv.cpp):
CONV_CASES = [
    (2, 9, 9, 3, 8, 3, 3, 1, 1, 1),       # explicit im2col (C = 3), col2im backward-data
    (4, 7, 7, 16, 20, 3, 3, 2, 1, 1),     # forward from row pointers (Cg % 16 == 0), stride 2
    (4, 6, 6, 128, 32, 3, 3, 1, 1, 1),    # backward-data as the turned-filter forward (Cg >= 128)
    (4, 6, 6, 64, 64, 3, 3, 1, 1, 2),     # groups; backward-filter panels packed from x (Cg % 32 == 0)
    (3, 5, 5, 24, 10, 1, 1, 1, 0, 1),     # pointwise: x is the patch matrix
    (5, 11, 11, 3, 12, 5, 5, 3, 2, 1),    # odd everything
    (4, 5, 5, 29, 16, 3, 3, 1, 1, 1),     # RSC = 261: prerounded weights with a 5-row last K block
]


@pytest.mark.parametrize("case", CONV_CASES, ids=["im2col", "rows_s2", "turned", "groups", "1x1", "odd", "tail_block"])
def test_conv_bf16(rng, bf16, cpu_path, case):
    N, H, W, C, K, Rk, S, st, pd, g = case
    stride, pad = (st, st), (pd, pd)
    x = f32(rng.standard_normal((N, H, W, C)))
    w = f32(rng.standard_normal((K, Rk, S, C // g)) / np.sqrt(Rk * S * C / g))
    b = f32(rng.standard_normal(K))
    y_exact = ref.conv_forward(x, w, b, stride, pad, g)
    dy = f32(rng.standard_normal(y_exact.shape))
    y = poisoned(y_exact.shape, "cpu")
    ops.conv_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu"), y, stride=stride, pad=pad,
                     groups=g)
    check_bf16(y.numpy(), y_exact, ref.conv_forward(R(x), R(w), b, stride, pad, g), "conv_forward")
    dx_exact, dw_exact, db_exact = ref.conv_backward(dy, x, w, stride, pad, g)
    dx_round, dw_round, _ = ref.conv_backward(R(dy), R(x), R(w), stride, pad, g)
    dx = poisoned(x.shape, "cpu")
    ops.conv_backward_data(to_device(dy, "cpu"), to_device(w, "cpu"), dx, stride=stride, pad=pad, groups=g)
    check_bf16(dx.numpy(), dx_exact, dx_round, "conv_backward_data")
    dw, db = poisoned(w.shape, "cpu"), poisoned((K,), "cpu")
    ops.conv_backward_filter(to_device(dy, "cpu"), to_device(x, "cpu"), dw, db, stride=stride, pad=pad, groups=g)
    check_bf16(dw.numpy(), dw_exact, dw_round, "conv_backward_filter")
    assert rel(db.numpy(), db_exact) < 1e-5  # bias gradient: a float32 sum of dy, never rounded


def test_lrn_pool_softmax_stay_fp32_under_bf16(rng, bf16):
    """The ops without a GEMM compute in float32 whatever the precision."""
    x = f32(rng.standard_normal((2, 5, 5, 12)))
    y = poisoned(x.shape, "cpu")
    ops.lrn_forward(to_device(x, "cpu"), y)
    assert rel(y.numpy(), ref.lrn_forward(x)) < 1e-5
    logits, labels = f32(rng.standard_normal((9, 10))), rng.integers(0, 10, 9).astype(np.int32)
    stats, dl = poisoned((3,), "cpu"), poisoned((9, 10), "cpu")
    ops.softmax_cross_entropy(to_device(logits, "cpu"), to_device(labels, "cpu", np.int32), dl, stats)
    loss_ref, _, _, dl_ref = ref.softmax_cross_entropy(logits, labels)
    assert abs(stats.numpy()[0] - loss_ref) < 1e-5 * max(1.0, abs(loss_ref))
    assert rel(dl.numpy(), dl_ref) < 1e-5


# --------------------------------------------------------------------------------------------------
# Net, train(), checkpoints

def small_conv_net():
    return [
        {"name": "data", "type": "data", "shape": [12, 12, 3]},
        {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 16, "size": 3, "pad": 1, "relu": True},
        {"name": "rnorm1", "type": "lrn", "inputs": ["conv1"]},
        {"name": "pool1", "type": "maxpool", "inputs": ["rnorm1"], "size": 3, "stride": 2},
        {"name": "fc2", "type": "fc", "inputs": ["pool1"], "outputs": 10},
        {"name": "loss", "type": "softmax", "inputs": ["fc2"]},
    ]


def test_net_precision_errors():
    with pytest.raises(ValueError, match="Net: precision must be one of fp32, tf32, bf16, got 'fp16'"):
        convnet.Net(small_conv_net(), device="cpu", precision="fp16")
    net = convnet.Net(small_conv_net(), device="cpu")
    assert net.precision == "fp32"
    with pytest.raises(ValueError, match="Net: precision"):
        net.precision = "int8"
    with pytest.raises(ValueError, match="precision='fp16'"):
        convnet.train(small_conv_net(), data=None, epochs=1, precision="fp16", out_dir=False, progress=False)


def gateless_conv_net():
    """small_conv_net without its gates (no ReLU, no max-pool): every difference between a bf16 and
    an fp32 pass is then rounding, never a ReLU or pool gate that the rounding flipped."""
    net = small_conv_net()
    net[1]["relu"] = False
    del net[3]
    net[3]["inputs"] = ["rnorm1"]
    return net


def bf16_and_fp32_pass(layers, x, labels):
    """Logits (eval pass) and parameter gradients (train pass) of one net in fp32 and in bf16."""
    nets = {p: convnet.Net(layers, device="cpu", seed=3, precision=p) for p in ("fp32", "bf16")}
    out, grads = {}, {}
    for p, net in nets.items():
        out[p] = net.forward(x).numpy().astype(np.float64)
        assert _C.precision() == "fp32"
        net.forward(x, labels, train=True)
        net.backward()
        assert _C.precision() == "fp32"
        grads[p] = {name: prm.grad.numpy().astype(np.float64) for name, prm in net.named_params()}
    for (name, a), (_, b) in zip(nets["fp32"].named_params(), nets["bf16"].named_params()):
        assert a.value.dtype == b.value.dtype == "float32"
        np.testing.assert_array_equal(a.value.numpy(), b.value.numpy(), err_msg=name)
    return out, grads


# Gradient bounds, measured over 30 seeds: without gates the worst error was 0.0064 (median 0.0037;
# a wrong kernel is O(1)); with ReLU and max-pool, rounding may flip a gate, which moves a whole
# gradient term (median 0.049, worst 0.098), so that bound is loose and the logits carry the check.
@pytest.mark.parametrize("layers, lowest, highest", [(gateless_conv_net, 1e-5, 2e-2), (small_conv_net, 0.0, 0.25)],
                         ids=["without gates", "with gates"])
def test_net_bf16_forward_backward(rng, layers, lowest, highest):
    """A bf16 Net: logits within bf16 rounding of the fp32 ones, every gradient within the bounds
    above, parameters untouched fp32, and the process-wide setting back to fp32 after each pass."""
    x = rng.standard_normal((6, 12, 12, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 6).astype(np.int32)
    out, grads = bf16_and_fp32_pass(layers(), x, labels)
    assert 1e-4 < rel(out["bf16"], out["fp32"]) < 2e-2
    for name in grads["fp32"]:
        e = rel(grads["bf16"][name], grads["fp32"][name])
        assert lowest <= e < highest, (name, e)


def test_bf16_checkpoint_loads_in_any_precision(tmp_path):
    """A bf16 run writes float32 parameters and momentum; its checkpoint predicts the same classes
    when loaded as fp32 or bf16 (the precision is a setting of the pass, not of the weights)."""
    train, test = builtin(0, n_train=256, n_test=64)
    r = convnet.train(data=(train, test), epochs=1, batch_size=32, precision="bf16", out_dir=str(tmp_path),
                      progress=False, workers=1)
    assert r.net.precision == "bf16"
    state = r.net.state()
    assert state and all(v.dtype == np.float32 for v in state.values())
    probs = {}
    for p in ("fp32", "bf16"):
        net = convnet.load_checkpoint(r.checkpoint, device="cpu")
        assert net.checkpoint["hparams"]["precision"] == "bf16"
        for k, v in net.state().items():
            np.testing.assert_array_equal(v, state[k], err_msg=k)
        net.precision = p
        probs[p] = net.predict(test.images[:64])
    assert np.abs(probs["fp32"] - probs["bf16"]).max() < 0.05
    assert (probs["fp32"].argmax(1) == probs["bf16"].argmax(1)).mean() >= 0.9


@pytest.mark.slow
def test_bf16_training_matches_fp32_accuracy(tmp_path):
    """The issue's criterion: the default small net on the built-in data (10 epochs, 2000 test
    images), trained in bf16, reaches the fp32 run's test accuracy within 0.5 %."""
    acc = {}
    for p in ("fp32", "bf16"):
        r = convnet.train(precision=p, out_dir=str(tmp_path / p), progress=False, device="cpu")
        acc[p] = r.test_accuracy
    assert acc["bf16"] >= acc["fp32"] - 0.005, acc


@pytest.mark.slow
def test_bf16_short_training_tracks_fp32(tmp_path):
    """Shorter stand-in for the test above (~90 s on the shared 2 cores, so slow too): 2 epochs on 1280 images; bf16 learns (beats the linear
    baseline, 22.7 %) and its loss curve stays near fp32's (same seed, same batches)."""
    data = builtin(0, n_train=1280, n_test=256)
    h = {}
    for p in ("fp32", "bf16"):
        r = convnet.train(data=data, epochs=2, lr_steps=[], batch_size=64, precision=p, out_dir=False,
                          progress=False, workers=1, device="cpu")
        h[p] = r.history
    assert h["bf16"][1]["train_loss"] < h["bf16"][0]["train_loss"]
    assert h["bf16"][1]["val_top1_err"] < 1 - 0.227, h["bf16"]
    for a, b in zip(h["fp32"], h["bf16"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * a["train_loss"], (a, b)
