"""Comparison helpers and the finite-difference gradient checker used by every op test.

Two kinds of check, as in Caffe's GradientChecker:
  * `assert_close(out, ref)`: the relative error ||out - ref|| / ||ref|| of a whole tensor against the
    float64 reference, and every element finite (a NaN left from the poison fails).
  * `check_gradient(analytic, f, x, dy)`: the analytic gradient our op computed against central
    differences of the float64 reference forward `f`, for the objective sum(f(x) * dy) (a random
    projection), at sampled coordinates, error |a - n| / max(|a|, |n|, 1) per coordinate.
"""
import numpy as np


def rel_error(out, ref):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = np.linalg.norm(ref)
    return np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0)


def assert_close(out, ref, tol=1e-5, what="output"):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != reference {ref.shape}"
    bad = ~np.isfinite(out)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {out.size} elements not finite "
                           f"(unwritten?), first at {np.argwhere(bad)[0].tolist()}")
    err = rel_error(out, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:g}"


def numeric_gradient(f, x, dy, indices, eps=1e-6):
    """d/dx[i] of sum(f(x) * dy) by central differences in float64, at each flat index i."""
    x = np.array(x, dtype=np.float64)
    flat = x.reshape(-1)
    grads = np.empty(len(indices))
    for j, i in enumerate(indices):
        keep = flat[i]
        flat[i] = keep + eps
        up = np.sum(f(x) * dy)
        flat[i] = keep - eps
        down = np.sum(f(x) * dy)
        flat[i] = keep
        grads[j] = (up - down) / (2 * eps)
    return grads


def check_gradient(analytic, f, x, dy, rng, samples=40, tol=1e-3, eps=1e-6, what="gradient"):
    """Compare `analytic` (our op's gradient w.r.t. x for upstream dy) with central differences of f."""
    analytic = np.asarray(analytic, dtype=np.float64).reshape(-1)
    assert analytic.size == np.size(x), f"{what}: {analytic.size} gradient entries for {np.size(x)} inputs"
    assert np.isfinite(analytic).all(), f"{what}: analytic gradient has non-finite entries"
    indices = rng.choice(analytic.size, size=min(samples, analytic.size), replace=False)
    numeric = numeric_gradient(f, x, dy, indices, eps)
    a = analytic[indices]
    err = np.abs(a - numeric) / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), 1.0)
    worst = int(np.argmax(err))
    assert err[worst] < tol, (f"{what}: at flat index {indices[worst]} analytic {a[worst]:.6g} vs numeric "
                              f"{numeric[worst]:.6g} (error {err[worst]:.3g} >= {tol:g})")
