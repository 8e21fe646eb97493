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
from conftest import poisoned, to_device

ops = convnet.ops
_C = convnet._C

KERNELS = [
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
    """The AVX512-BF16 and the portable kernel pack the same bits; their sums differ only in order."""
    if not _C.cpu_has_avx512_bf16():
        pytest.skip("this CPU lacks AVX512-BF16")
    a, b = f32(rng.standard_normal((77, 333))), f32(rng.standard_normal((333, 45)))
    outs = []
    for kernel in ("avx512_bf16", "portable"):
        _C.set_bf16_kernel(kernel)
        c = poisoned((77, 45), "cpu")
        with convnet.use_precision("bf16"):
            ops.gemm(to_device(a, "cpu"), to_device(b, "cpu"), c)
        outs.append(c.numpy().astype(np.float64))
    _C.set_bf16_kernel("auto")
    assert rel(outs[0], outs[1]) < 1e-6


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
