"""Property-based fuzzing of the ops' arguments (issue 12): whatever the shapes, strides, pads, groups,
windows and LRN parameters, an op either raises a clean ValueError / MemoryError or returns what
tests/reference.py computes. Never a crash, a hang or a silently wrong number.

Each test is bounded: at most FUZZ_EXAMPLES examples and FUZZ_SECONDS of wall time (later examples
return at once), so the default suite stays fast. CONVNET_FUZZ_EXAMPLES / CONVNET_FUZZ_SECONDS raise
both for a long run. Arguments mix small valid values with the edges that used to break things:
0, -1, 2**31 - 1, 2**62.
"""
import contextlib
import os
import resource
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convnet
import reference as R
from conftest import poisoned, to_device
from convnet import _C, ops
from gradcheck import assert_close

FUZZ_EXAMPLES = int(os.environ.get("CONVNET_FUZZ_EXAMPLES", "150"))
FUZZ_SECONDS = float(os.environ.get("CONVNET_FUZZ_SECONDS", "2"))
fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

EDGES = [0, -1, 2**31 - 1, 2**62]
small = st.integers(0, 5)
arg = st.one_of(st.integers(-1, 4), st.sampled_from(EDGES))


class Budget:
    """Wall-time bound of one fuzz test: `spent()` is True once FUZZ_SECONDS have passed."""

    def __init__(self):
        self.end = None

    def spent(self):
        now = time.monotonic()
        if self.end is None:
            self.end = now + FUZZ_SECONDS
        return now > self.end


def clean_call(fn):
    """-> True when fn ran, False when it raised a clean ValueError or MemoryError (an int argument
    beyond its C++ type is a ValueError too, naming the op and the argument)."""
    try:
        fn()
        return True
    except (ValueError, MemoryError) as e:
        assert str(e), "an exception without a message"
        return False


def out_size(n, k, s, p):
    """Reference output extent, or None when the geometry is invalid (window, stride and padding
    are the ops' int arguments: beyond int32 they are refused like any other bad value)."""
    if max(k, s, p) > 2**31 - 1:
        return None
    if n < 0 or k <= 0 or s <= 0 or p < 0 or k > n + 2 * p or n + 2 * p > 2**31 - 1:
        return None
    return R.conv_output_size(n, k, s, p)


_conv_budget = Budget()


@fuzz
@given(N=small, H=small, W=small, C=st.integers(0, 6), K=st.integers(-1, 5), Rk=arg, Sk=arg,
       sh=arg, sw=arg, ph=arg, pw=arg, groups=st.integers(-1, 3), relu=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_conv(N, H, W, C, K, Rk, Sk, sh, sw, ph, pw, groups, relu, seed):
    if _conv_budget.spent():
        return
    rng = np.random.default_rng(seed)
    P, Q = out_size(H, Rk, sh, ph), out_size(W, Sk, sw, pw)
    valid = (P is not None and Q is not None and groups > 0 and K > 0 and C % groups == 0 and K % groups == 0
             and Rk * Sk <= 64)
    # the shape-only helper over the same arguments, including the ones no tensor can have
    ran = clean_call(lambda: _C.conv_output_shape((N, H, W, C), (K, Rk, Sk, max(C // max(groups, 1), 0)),
                                                  (sh, sw), (ph, pw), groups))
    if not valid:
        if Rk * Sk <= 64 or not ran:
            assert not ran or (P is not None and Q is not None and groups > 0 and K > 0), \
                "conv_output_shape accepted an invalid geometry"
        # tensors of the would-be shapes (when they are small enough to make) must be refused too
        if 0 <= K <= 5 and 0 <= Rk <= 4 and 0 <= Sk <= 4 and groups > 0 and C % groups == 0:
            x = to_device(rng.standard_normal((N, H, W, C)), "cpu")
            w = to_device(rng.standard_normal((K, Rk, Sk, C // groups)), "cpu")
            y = poisoned((N, max(P or 1, 1), max(Q or 1, 1), K), "cpu")
            assert not clean_call(lambda: ops.conv_forward(x, w, None, y, (sh, sw), (ph, pw), groups)), \
                "conv_forward accepted an invalid geometry"
        return
    assert ran
    x = rng.standard_normal((N, H, W, C))
    w = rng.standard_normal((K, Rk, Sk, C // groups))
    b = rng.standard_normal(K)
    y = poisoned((N, P, Q, K), "cpu")
    ops.conv_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu"), y, (sh, sw), (ph, pw),
                     groups, False, relu)
    ref = R.conv_forward(x, w, b, (sh, sw), (ph, pw), groups)
    if relu:
        ref = R.relu_forward(ref)
    assert_close(y.numpy(), ref, 1e-5)
    if y.numel:
        dy = rng.standard_normal(ref.shape)
        dx, dw = poisoned(x.shape, "cpu"), poisoned(w.shape, "cpu")
        ops.conv_backward_data(to_device(dy, "cpu"), to_device(w, "cpu"), dx, (sh, sw), (ph, pw), groups)
        ops.conv_backward_filter(to_device(dy, "cpu"), to_device(x, "cpu"), dw, None, (sh, sw), (ph, pw), groups)
        rdx, rdw, _ = R.conv_backward(dy, x, w, (sh, sw), (ph, pw), groups)
        assert_close(dx.numpy(), rdx, 1e-5)
        assert_close(dw.numpy(), rdw, 1e-5)


_conv_algo_budget = Budget()


@fuzz
@given(N=st.integers(0, 3), H=st.integers(0, 8), W=st.integers(0, 8), Cg=st.integers(1, 3), Kg=st.integers(1, 3),
       groups=st.integers(1, 2), Rk=st.integers(1, 5), Sk=st.integers(1, 5), stride=st.integers(1, 3),
       pad=st.integers(0, 3), algorithm=st.sampled_from(["auto", "direct", "winograd"]), accumulate=st.booleans(),
       relu=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_conv_algorithms_and_accumulate(N, H, W, Cg, Kg, groups, Rk, Sk, stride, pad, algorithm, accumulate,
                                             relu, bias, seed):
    """Every pass with algorithm= 'auto', 'direct' or 'winograd' (a ValueError where Winograd does not
    apply: stride 1, 3x3 or 5x5, pad < size), accumulating into its outputs or not, with fused ReLU."""
    if _conv_algo_budget.spent():
        return
    rng = np.random.default_rng(seed)
    C, K = Cg * groups, Kg * groups
    P, Q = out_size(H, Rk, stride, pad), out_size(W, Sk, stride, pad)
    if P is None or Q is None:
        return  # geometry: test_fuzz_conv's business
    applies = algorithm != "winograd" or (stride == 1 and Rk == Sk and Rk in (3, 5) and pad < Rk)
    x, w, b = rng.standard_normal((N, H, W, C)), rng.standard_normal((K, Rk, Sk, Cg)), rng.standard_normal(K)
    args = ((stride, stride), (pad, pad), groups)
    y0 = rng.standard_normal((N, P, Q, K))
    y = to_device(y0, "cpu") if accumulate else poisoned((N, P, Q, K), "cpu")
    ran = clean_call(lambda: ops.conv_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu") if bias else None,
                                              y, *args, accumulate, relu, algorithm))
    assert ran == applies, f"algorithm={algorithm} ran={ran} for {Rk}x{Sk} stride {stride} pad {pad}"
    if not ran:
        return
    tol = 1e-4 if algorithm == "winograd" else 1e-5  # Winograd's transforms: 10-15x direct's error
    want = R.conv_forward(x, w, b if bias else None, *args) + (y0 if accumulate else 0)
    assert_close(y.numpy(), R.relu_forward(want) if relu else want, tol)
    dy = rng.standard_normal((N, P, Q, K))
    dx0, dw0, db0 = rng.standard_normal(x.shape), rng.standard_normal(w.shape), rng.standard_normal(K)
    dx = to_device(dx0, "cpu") if accumulate else poisoned(x.shape, "cpu")
    dw = to_device(dw0, "cpu") if accumulate else poisoned(w.shape, "cpu")
    db = to_device(db0, "cpu") if accumulate else poisoned((K,), "cpu")
    ops.conv_backward_data(to_device(dy, "cpu"), to_device(w, "cpu"), dx, *args, accumulate, algorithm)
    ops.conv_backward_filter(to_device(dy, "cpu"), to_device(x, "cpu"), dw, db, *args, accumulate, algorithm)
    rdx, rdw, rdb = R.conv_backward(dy, x, w, *args)
    acc = 1.0 if accumulate else 0.0
    assert_close(dx.numpy(), rdx + acc * dx0, tol, "dx")
    assert_close(dw.numpy(), rdw + acc * dw0, tol, "dw")
    # db is a plain sum (one number per filter, cancellation included): bound it by the sum of |terms|
    bound = tol * (np.abs(dy).sum(axis=(0, 1, 2)) + acc * np.abs(db0))
    assert np.all(np.abs(db.numpy() - (rdb + acc * db0)) <= bound), (db.numpy(), rdb + acc * db0)


_pool_budget = Budget()


@fuzz
@given(N=small, H=small, W=small, C=small, Rw=arg, Sw=arg, sh=arg, sw=arg, ph=arg, pw=arg,
       kind=st.sampled_from(["max", "avg"]), specials=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_pool(N, H, W, C, Rw, Sw, sh, sw, ph, pw, kind, specials, seed):
    if _pool_budget.spent():
        return
    rng = np.random.default_rng(seed)
    P, Q = out_size(H, Rw, sh, ph), out_size(W, Sw, sw, pw)
    valid = P is not None and Q is not None and ph < Rw and pw < Sw and Rw * Sw <= 64
    ran = clean_call(lambda: _C.pool_output_shape((N, H, W, C), (Rw, Sw), (sh, sw), (ph, pw)))
    if not valid:
        if Rw * Sw <= 64:
            assert not ran, "pool_output_shape accepted an invalid geometry"
        return
    assert ran
    x = rng.standard_normal((N, H, W, C))
    if specials and x.size:
        x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -np.inf]
    y = poisoned((N, P, Q, C), "cpu")
    if kind == "max":
        am = poisoned((N, P, Q, C), "cpu", "int32")
        ops.max_pool_forward(to_device(x, "cpu"), y, am, (Rw, Sw), (sh, sw), (ph, pw))
        ry, ram = R.max_pool_forward(x, Rw, Sw, (sh, sw), (ph, pw))
        got = y.numpy()
        assert np.array_equal(np.isnan(got), np.isnan(ry))
        np.testing.assert_array_equal(am.numpy(), ram)
        fin = ~np.isnan(ry)
        np.testing.assert_allclose(got[fin], ry[fin], rtol=1e-6)
        dy = rng.standard_normal(ry.shape)
        dx = poisoned(x.shape, "cpu")
        ops.max_pool_backward(to_device(dy, "cpu"), am, dx, (Rw, Sw), (sh, sw), (ph, pw))
        assert_close(dx.numpy(), R.max_pool_backward(dy, ram, x.shape), 1e-5)
    else:
        if specials:
            return  # the average of an inf and a -inf is NaN in any order: nothing to pin
        ops.avg_pool_forward(to_device(x, "cpu"), y, (Rw, Sw), (sh, sw), (ph, pw))
        assert_close(y.numpy(), R.avg_pool_forward(x, Rw, Sw, (sh, sw), (ph, pw)), 1e-5)
        dy = rng.standard_normal((N, P, Q, C))
        dx = poisoned(x.shape, "cpu")
        ops.avg_pool_backward(to_device(dy, "cpu"), dx, (Rw, Sw), (sh, sw), (ph, pw))
        assert_close(dx.numpy(), R.avg_pool_backward(dy, x.shape, Rw, Sw, (sh, sw), (ph, pw)), 1e-5)


_lrn_budget = Budget()


@fuzz
@given(shape=st.lists(small, min_size=4, max_size=4), size=st.one_of(st.integers(-1, 12), st.sampled_from(EDGES[:3])),
       alpha=st.sampled_from([-1.0, 0.0, 1e-4, 0.5, float("nan")]),
       beta=st.sampled_from([-0.5, 0.0, 0.75, 1.3, float("inf")]),
       k=st.sampled_from([-1.0, 0.0, 0.5, 2.0, float("nan")]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_lrn(shape, size, alpha, beta, k, seed):
    if _lrn_budget.spent():
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    y = poisoned(shape, "cpu")
    valid = size > 0 and 0 < k < np.inf and 0 <= alpha < np.inf and 0 <= beta < np.inf
    ran = clean_call(lambda: ops.lrn_forward(to_device(x, "cpu"), y, size, alpha, beta, k))
    assert ran == valid, f"lrn ran={ran} with size={size} alpha={alpha} beta={beta} k={k}"
    if not ran:
        return
    ref = R.lrn_forward(x, size, alpha, beta, k)
    got = y.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    fin = np.isfinite(ref)
    assert_close(got[fin], ref[fin], 1e-5)
    if fin.all():
        dy = rng.standard_normal(shape)
        dx = poisoned(shape, "cpu")
        ops.lrn_backward(to_device(x, "cpu"), y, to_device(dy, "cpu"), dx, size, alpha, beta, k)
        assert_close(dx.numpy(), R.lrn_backward(x, dy, size, alpha, beta, k), 1e-4)


_dropout_budget = Budget()
U64_EDGES = [0, 1, 3, 4, 2**32 - 1, 2**32, 2**63, 2**64 - 64, 2**64 - 9, 2**64 - 8, 2**64 - 5, 2**64 - 4,
             2**64 - 1, 2**64, -1]


@fuzz
@given(n=st.integers(0, 40), p=st.sampled_from([0.0, 0.3, 0.5, 0.99, 1.0, -0.1, float("nan")]),
       seed=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(U64_EDGES)),
       counter=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(U64_EDGES)),
       offset=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 64), st.sampled_from(U64_EDGES)),
       data_seed=st.integers(0, 2**32 - 1))
def test_fuzz_dropout(n, p, seed, counter, offset, data_seed):
    """Any key and offset: the reference's mask (element offset + i of the draw), or a ValueError when
    the offset runs past the draw's 2**64 elements (it used to leave the output unwritten)."""
    if _dropout_budget.spent():
        return
    x = np.random.default_rng(data_seed).standard_normal(n)
    y, dx = poisoned((n,), "cpu"), poisoned((n,), "cpu")
    valid = 0 <= p < 1 and all(0 <= v < 2**64 for v in (seed, counter, offset)) and (n == 0 or offset + n <= 2**64)
    ran = clean_call(lambda: ops.dropout_forward(to_device(x, "cpu"), y, p, seed, counter, offset))
    ran_back = clean_call(lambda: ops.dropout_backward(to_device(x, "cpu"), dx, p, seed, counter, offset))
    assert ran == valid and ran_back == valid, f"ran={ran}/{ran_back} n={n} p={p} offset={offset}"
    if ran:
        want = R.dropout_forward(x, p, seed, counter, offset)
        assert_close(y.numpy(), want, 1e-5)   # the kept scale 1 / (1 - p) in float32: ~1e-6 off at p = 0.99
        assert_close(dx.numpy(), want, 1e-5)  # backward of dy = x: the same mask


_loss_budget = Budget()


@fuzz
@given(N=st.integers(0, 6), C=st.integers(0, 9), label_shift=st.sampled_from([0, 0, 0, -1, 1, 2**31 - 1]),
       specials=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_fuzz_softmax_cross_entropy(N, C, label_shift, specials, seed):
    if _loss_budget.spent():
        return
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, C)) * 3
    labels = rng.integers(0, max(C, 1), N)
    if N and label_shift:
        labels[0] = (C if label_shift > 0 else -1) if label_shift != 2**31 - 1 else 2**31 - 1
    if specials and logits.size:
        logits.reshape(-1)[rng.integers(0, logits.size, 2)] = [np.nan, np.inf]
    stats = poisoned((3,), "cpu")
    valid = N > 0 and C > 0 and not label_shift
    ran = clean_call(lambda: ops.softmax_cross_entropy(to_device(logits, "cpu"), to_device(labels, "cpu", np.int32),
                                                       None, stats))
    assert ran == valid, f"ran={ran} for N={N} C={C} label_shift={label_shift}"
    if ran:
        with np.errstate(invalid="ignore", over="ignore"):
            loss, t1, t5, _ = R.softmax_cross_entropy(logits, labels)
        s = stats.numpy()
        assert (s[1], s[2]) == (t1, t5)
        if np.isfinite(loss):
            assert abs(s[0] - loss) <= 1e-5 * max(1.0, abs(loss))


_shape_budget = Budget()
SHAPE_CAP = 256 << 20  # bytes a fuzzed tensor may take beyond what the process maps already


@contextlib.contextmanager
def address_space_cap(extra_bytes):
    """The soft RLIMIT_AS lowered to what this process maps now + extra_bytes, restored after: an
    allocation past it fails at once (MemoryError) instead of zero-filling gigabytes of RAM (an 8 GB
    tensor took 10 s; a 16 GB one got the process killed on a 23 GB machine)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        cap = int(f.read().split()[0]) * resource.getpagesize() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@fuzz
@given(shape=st.lists(st.one_of(st.integers(-2, 4), st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1])),
                      min_size=0, max_size=4),
       view=st.lists(st.one_of(st.integers(-2, 4), st.sampled_from([2**32, 2**62])), min_size=0, max_size=4))
def test_fuzz_tensor_shapes(shape, view):
    if _shape_budget.spent():
        return
    numel = int(np.prod([d for d in shape], dtype=object)) if shape else 1
    makeable = all(d >= 0 for d in shape) and (numel == 0 or numel * 4 <= 1 << 26)
    with address_space_cap(SHAPE_CAP):
        ran = clean_call(lambda: _C.Tensor.zeros(tuple(shape)))
    if makeable:
        assert ran
        t = _C.Tensor.zeros(tuple(shape))
        assert t.numel == numel and t.nbytes == 4 * numel
        if all(d < 2**31 for d in shape):  # NumPy itself refuses bigger arrays, even empty ones
            assert not np.any(t.numpy())
        vn = int(np.prod([d for d in view], dtype=object)) if view else 1
        ok = clean_call(lambda: t.reshape(tuple(view)))
        assert ok == (all(d >= 0 for d in view) and vn == numel and (vn == 0 or vn < 2**63))
    elif any(d < 0 for d in shape) or numel * 4 > 2**62:
        assert not ran, f"a tensor of shape {shape} was made"
    elif numel * 4 > SHAPE_CAP:  # possible in principle, more than the cap: MemoryError
        assert not ran, f"a tensor of shape {shape} ({numel * 4} bytes) was made past a {SHAPE_CAP}-byte cap"


_gemm_budget = Budget()
SCALARS = [0.0, 1.0, -2.5, 1e-3]


@fuzz
@given(M=st.integers(0, 9), N=st.integers(0, 9), K=st.integers(0, 9), trans_a=st.booleans(), trans_b=st.booleans(),
       alpha=st.sampled_from(SCALARS + [float("nan"), float("inf")]), beta=st.sampled_from(SCALARS),
       wrong=st.sampled_from([None, None, None, "a", "b", "c"]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_gemm(M, N, K, trans_a, trans_b, alpha, beta, wrong, seed):
    """c = alpha op(a) op(b) + beta c for any (M, N, K) including 0, either transpose, any scalars;
    beta = 0 never reads c (poisoned with NaN); a wrong shape is a ValueError."""
    if _gemm_budget.spent():
        return
    rng = np.random.default_rng(seed)
    a_shape, b_shape, c_shape = [(K, M) if trans_a else (M, K), (N, K) if trans_b else (K, N), (M, N)]
    if wrong:
        bad = {"a": a_shape, "b": b_shape, "c": c_shape}[wrong]
        bad = (bad[0] + 1, bad[1])
        a_shape, b_shape, c_shape = [bad if wrong == w else s for w, s in zip("abc", (a_shape, b_shape, c_shape))]
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    c0 = rng.standard_normal(c_shape) if beta != 0 else np.full(c_shape, np.nan)
    c = to_device(c0, "cpu")
    ran = clean_call(lambda: ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c, trans_a, trans_b, alpha, beta))
    if wrong:  # one extra row of a, b or c: op(a) op(b) is ill-formed or does not fit c
        assert not ran, f"gemm accepted shapes {a_shape} {b_shape} {c_shape} (trans {trans_a}, {trans_b})"
        return
    assert ran
    if not np.isfinite(alpha):
        return  # alpha * 0 (K = 0, or a zero product) is NaN in IEEE arithmetic: not pinned
    want = R.gemm(a, b, trans_a, trans_b, alpha, beta, c0)
    assert_close(c.numpy(), want, 1e-5)


_fc_budget = Budget()


@fuzz
@given(N=st.integers(0, 6), feat=st.lists(st.integers(0, 4), min_size=1, max_size=3), out=st.integers(0, 7),
       bias=st.booleans(), accumulate=st.booleans(), relu=st.booleans(), specials=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_fuzz_fc(N, feat, out, bias, accumulate, relu, specials, seed):
    """fc_forward over x (N, trailing...) flattened, with bias, accumulation and fused ReLU (NaN kept,
    as PyTorch's relu keeps it); its backward passes against the reference."""
    if _fc_budget.spent():
        return
    rng = np.random.default_rng(seed)
    fin = int(np.prod(feat))
    x = rng.standard_normal((N, *feat))
    if specials and x.size:
        x.reshape(-1)[rng.integers(0, x.size)] = np.nan
    w, b = rng.standard_normal((out, fin)), rng.standard_normal(out)
    y0 = rng.standard_normal((N, out)) if accumulate else np.full((N, out), np.nan)
    y = to_device(y0, "cpu")
    ran = clean_call(lambda: ops.fc_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu") if bias else None,
                                            y, accumulate, relu))
    assert ran
    want = R.fc_forward(x.reshape(N, fin), w, b if bias else None) + (y0 if accumulate else 0)
    if relu:
        want = R.relu_forward(want)
    got = y.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    ok = ~np.isnan(want)
    assert_close(got[ok], want[ok], 1e-5)
    if specials:
        return
    dy = rng.standard_normal((N, out))
    dx, dw, db = poisoned((N, fin), "cpu"), poisoned((out, fin), "cpu"), poisoned((out,), "cpu")
    ops.fc_backward_data(to_device(dy, "cpu"), to_device(w, "cpu"), dx)
    ops.fc_backward_weights(to_device(dy, "cpu"), to_device(x.reshape(N, fin), "cpu"), dw, db)
    rdx, rdw, rdb = R.fc_backward(dy, x.reshape(N, fin), w)
    assert_close(dx.numpy(), rdx, 1e-5)
    assert_close(dw.numpy(), rdw, 1e-5)
    assert_close(db.numpy(), rdb, 1e-5)


_sgd_budget = Budget()
HYPER = [0.0, 0.01, 0.5, 2.0, -0.1, float("nan"), float("inf")]


@fuzz
@given(shapes=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=3), min_size=0, max_size=4),
       lr=st.sampled_from(HYPER), wd=st.sampled_from(HYPER), momentum=st.sampled_from([0.0, 0.9, 0.999, 1.0, -0.5, float("nan")]),
       short=st.sampled_from([None, None, "grads", "velocities", "lrs", "weight_decays"]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_sgd(shapes, lr, wd, momentum, short, seed):
    """sgd_update over any list of parameters (empty ones too) and hyper-parameters: the paper's
    rule where lr and weight decay are finite >= 0 and 0 <= momentum < 1, else a ValueError; lists
    of different lengths are a ValueError."""
    if _sgd_budget.spent():
        return
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(sh) for sh in shapes]
    gs = [rng.standard_normal(sh) for sh in shapes]
    vs = [rng.standard_normal(sh) for sh in shapes]
    lrs = [lr * (i + 1) if np.isfinite(lr) else lr for i in range(len(shapes))]
    wds = [wd] * len(shapes)
    P, G, V = ([to_device(a, "cpu") for a in arrays] for arrays in (ws, gs, vs))
    lists = {"grads": G, "velocities": V, "lrs": lrs, "weight_decays": wds}
    if short:
        lists[short] = lists[short] + ([lists[short][0]] if lists[short] else
                                       [0.1] if short in ("lrs", "weight_decays") else [to_device(np.zeros(1), "cpu")])
    good_hyper = all(np.isfinite(v) and v >= 0 for v in lrs + wds) and 0 <= momentum < 1
    valid = not short and good_hyper
    ran = clean_call(lambda: ops.sgd_update(P, lists["grads"], lists["velocities"], lists["lrs"],
                                            lists["weight_decays"], momentum))
    assert ran == valid, f"ran={ran} lr={lr} wd={wd} m={momentum} short={short} n={len(shapes)}"
    if not ran:
        for t, a in zip(P + V, ws + vs):  # a refused update writes nothing
            np.testing.assert_array_equal(t.numpy(), a.astype(np.float32))
        return
    for i in range(len(shapes)):
        w_want, v_want = R.sgd_update(ws[i].astype(np.float32).astype(np.float64), gs[i].astype(np.float32),
                                      vs[i].astype(np.float32), np.float32(lrs[i]), np.float32(momentum),
                                      np.float32(wds[i]))
        assert_close(V[i].numpy(), v_want, 1e-5)
        assert_close(P[i].numpy(), w_want, 1e-5)


_elementwise_budget = Budget()
ELEMENTWISE = ["relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "add_", "fill_"]


@fuzz
@given(op=st.sampled_from(ELEMENTWISE), shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
       scalar=st.sampled_from([0.0, 0.01, -0.5, 3.0, float("nan"), float("inf")]), in_place=st.booleans(),
       specials=st.booleans(), mismatch=st.sampled_from([False, False, False, True]), seed=st.integers(0, 2**32 - 1))
def test_fuzz_elementwise(op, shape, scalar, in_place, specials, mismatch, seed):
    """The elementwise ops on any shape, with NaN/Inf inputs, any scalar, in place or not (PyTorch's
    NaN rules, tests/reference.py); another shape for the second tensor is a ValueError."""
    if _elementwise_budget.spent():
        return
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(shape).astype(np.float32).astype(np.float64) for _ in range(2))  # as stored
    if specials and a.size:
        a.reshape(-1)[rng.integers(0, a.size, 3)] = [np.nan, np.inf, -np.inf]
        b.reshape(-1)[rng.integers(0, b.size, 2)] = [np.nan, -np.inf]
    other = list(shape) + [2] if mismatch else shape
    A, B = to_device(a, "cpu"), to_device(b if not mismatch else rng.standard_normal(other), "cpu")
    out = A if in_place else poisoned(other, "cpu")
    slope_ok = np.isfinite(scalar)
    calls = {
        "relu_forward": (lambda: ops.relu_forward(A, out), lambda: R.relu_forward(a), True),
        "relu_backward": (lambda: ops.relu_backward(A, B, out if not in_place else B),
                          lambda: R.relu_backward(a, b), True),
        "leaky_relu_forward": (lambda: ops.leaky_relu_forward(A, out, scalar), lambda: R.leaky_relu_forward(a, scalar),
                               slope_ok),
        "leaky_relu_backward": (lambda: ops.leaky_relu_backward(A, B, out if not in_place else B, scalar),
                                lambda: R.leaky_relu_backward(a, b, scalar), slope_ok),
        "add_": (lambda: ops.add_(A, B, scalar), lambda: R.add(a, b if not in_place else a, scalar), True),
        "fill_": (lambda: ops.fill_(A, scalar), lambda: R.fill(shape, scalar), True),
    }
    call, want_fn, ok = calls[op]
    if op == "add_" and in_place:
        B = A
        call = lambda: ops.add_(A, A, scalar)  # noqa: E731 - dst += alpha * dst, allowed (elementwise)
    if op == "fill_" and mismatch:
        return  # one tensor: nothing to mismatch
    if op == "relu_forward" and mismatch and in_place:
        return  # in place: one tensor
    one_tensor = in_place and op in ("relu_forward", "leaky_relu_forward", "add_")  # B unused
    valid = ok and not (mismatch and not one_tensor)
    ran = clean_call(call)
    assert ran == valid, f"{op} ran={ran} scalar={scalar} in_place={in_place} mismatch={mismatch}"
    if not ran:
        return
    with np.errstate(invalid="ignore", over="ignore"):
        want = want_fn().astype(np.float32)
    target = {"relu_backward": B if in_place else out, "leaky_relu_backward": B if in_place else out,
              "add_": A, "fill_": A}.get(op, out)
    got = target.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want)), (op, got, want)
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])  # the infinities
    assert_close(got[fin], want[fin], 1e-6)


# ------------------------------------------------------------------------------------------------
# Regressions the fuzzers found

def test_fc_empty_batch_keeps_its_features(rng):
    """x (0, 3) has 3 features, not 0: an empty batch ran conv but fc refused it as 'x (0, 3) has 0
    [input features]'. Now every fc op runs it (nothing to write but dw, db: zeros)."""
    x, w, b = np.zeros((0, 3)), rng.standard_normal((4, 3)), rng.standard_normal(4)
    y = poisoned((0, 4), "cpu")
    ops.fc_forward(to_device(x, "cpu"), to_device(w, "cpu"), to_device(b, "cpu"), y)
    dx = poisoned((0, 3), "cpu")
    ops.fc_backward_data(to_device(np.zeros((0, 4)), "cpu"), to_device(w, "cpu"), dx)
    dw, db = poisoned((4, 3), "cpu"), poisoned((4,), "cpu")
    ops.fc_backward_weights(to_device(np.zeros((0, 4)), "cpu"), to_device(x, "cpu"), dw, db)
    assert not np.any(dw.numpy()) and not np.any(db.numpy())
    with pytest.raises(ValueError, match=r"w \(4, 2\) expects 2 input features but x \(0, 3\) has 3"):
        ops.fc_forward(to_device(x, "cpu"), _C.Tensor.zeros((4, 2)), None, y)
