"""Accuracy study of Winograd minimal filtering F(m x m, r x r) on AlexNet's stride-1 layers.

For each tile size and choice of interpolation points, builds the Toom-Cook transforms (A^T, G, B^T),
runs the 2-D Winograd convolution in float32 (transforms and the transform-domain products in float32,
as the kernels do) and reports ||y - y_ref|| / ||y_ref|| against a float64 direct convolution, next to
the float32 direct convolution's own error. Activations are real-valued (ReLU of Gaussians, as after a
ReLU layer); filters He-initialised. Usage: python benchmarks/winograd_accuracy.py [--batch 2]
"""
import argparse
import json
from fractions import Fraction

import numpy as np


def transforms(m, r, points):
    """A^T (m, n), G (n, r), B^T (n, n) of F(m, r) for n - 1 finite points plus infinity (n = m + r - 1).

    A^T and G are the Vandermonde-type evaluation matrices; B^T is solved exactly (in rationals) from the
    identity sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k] that makes A^T((G g) * (B^T d)) the correlation.
    """
    n = m + r - 1
    pts = [Fraction(p) for p in points]
    assert len(pts) == n - 1
    AT = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    G = []
    for j, p in enumerate(pts):
        f = Fraction(1)
        for l, q in enumerate(pts):
            if l != j:
                f *= p - q
        G.append([p ** k / f for k in range(r)])
    G.append([Fraction(int(k == r - 1)) for k in range(r)])
    # B^T column l: n unknowns, m*r equations; solve in float64 then rationalise.
    E = np.zeros((m * r, n))
    for i in range(m):
        for k in range(r):
            for j in range(n):
                E[i * r + k, j] = float(AT[i][j] * G[j][k])
    BT = np.zeros((n, n))
    for l in range(n):
        rhs = np.array([float(l == i + k) for i in range(m) for k in range(r)])
        sol, *_ = np.linalg.lstsq(E, rhs, rcond=None)
        assert np.allclose(E @ sol, rhs, atol=1e-9), (m, r, points)
        BT[:, l] = sol
    BT = np.array([[float(Fraction(v).limit_denominator(4096)) for v in row] for row in BT])
    return (np.array([[float(v) for v in row] for row in AT]), np.array([[float(v) for v in row] for row in G]), BT)


def direct(x, w, pad, groups, dtype):
    """x (N, H, W, C), w (K, R, S, C/g) -> y (N, P, Q, K), stride 1."""
    x = np.pad(x.astype(dtype), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w = w.astype(dtype)
    N, H, W, C = x.shape
    K, R, S, Cg = w.shape
    P, Q = H - R + 1, W - S + 1
    Kg = K // groups
    y = np.zeros((N, P, Q, K), dtype)
    for g in range(groups):
        xs = x[..., g * Cg:(g + 1) * Cg]
        for r in range(R):
            for s in range(S):
                y[..., g * Kg:(g + 1) * Kg] += xs[:, r:r + P, s:s + Q, :] @ w[g * Kg:(g + 1) * Kg, r, s, :].T
    return y


def winograd(x, w, pad, groups, m, AT, G, BT):
    """F(m x m, r x r) in float32: tiles of m x m outputs, n x n inputs."""
    f = np.float32
    AT, G, BT = AT.astype(f), G.astype(f), BT.astype(f)
    N, H, W, C = x.shape
    K, R, S, Cg = w.shape
    n = m + R - 1
    P, Q = H + 2 * pad - R + 1, W + 2 * pad - S + 1
    th, tw = -(-P // m), -(-Q // m)
    Hp, Wp = th * m + R - 1, tw * m + S - 1
    xp = np.zeros((N, Hp, Wp, C), f)
    xp[:, pad:pad + H, pad:pad + W] = x
    # tiles d (N, th, tw, n, n, C)
    idx_h = (np.arange(th) * m)[:, None] + np.arange(n)[None, :]
    idx_w = (np.arange(tw) * m)[:, None] + np.arange(n)[None, :]
    d = xp[:, idx_h][:, :, :, idx_w]  # (N, th, n, tw, n, C)
    d = d.transpose(0, 1, 3, 2, 4, 5)
    V = np.einsum('ai,ntwijc,bj->abntwc', BT, d, BT).astype(f)  # (n, n, N, th, tw, C)
    Kg = K // groups
    U = np.einsum('ai,kijc,bj->abkc', G, w.astype(f), G).astype(f)  # (n, n, K, Cg)
    M = np.zeros((n, n, N, th, tw, K), f)
    for g in range(groups):
        M[..., g * Kg:(g + 1) * Kg] = np.matmul(V[..., g * Cg:(g + 1) * Cg].reshape(n, n, -1, Cg),
                                                U[:, :, g * Kg:(g + 1) * Kg].transpose(0, 1, 3, 2)
                                                ).reshape(n, n, N, th, tw, Kg)
    Y = np.einsum('ia,abntwk,jb->ntiwjk', AT, M, AT).astype(f)  # (N, th, m, tw, m, K)
    return Y.reshape(N, th * m, tw * m, K)[:, :P, :Q]


LAYERS = {  # name: (H, C, K, R, pad, groups)
    '2012 conv2': (27, 96, 256, 5, 2, 2),
    '2012 conv3': (13, 256, 384, 3, 1, 1),
    '2012 conv4': (13, 384, 384, 3, 1, 2),
    '2012 conv5': (13, 384, 256, 3, 1, 2),
    'OWT conv2': (27, 64, 192, 5, 2, 1),
    'OWT conv3': (13, 192, 384, 3, 1, 1),
    'OWT conv4': (13, 384, 256, 3, 1, 1),
    'OWT conv5': (13, 256, 256, 3, 1, 1),
}

CANDIDATES = {  # (m, r): {label: finite points}
    (2, 3): {'0,1,-1': [0, 1, -1]},
    (4, 3): {'0,±1,±2': [0, 1, -1, 2, -2], '0,±1,±1/2': [0, 1, -1, Fraction(1, 2), Fraction(-1, 2)]},
    (6, 3): {'0,±1,±2,±1/2': [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)]},
    (2, 5): {'0,±1,±2': [0, 1, -1, 2, -2], '0,±1,±1/2': [0, 1, -1, Fraction(1, 2), Fraction(-1, 2)]},
    (4, 5): {'0,±1,±2,±1/2': [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)]},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--json', default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for name, (H, C, K, R, pad, groups) in LAYERS.items():
        x = np.maximum(rng.standard_normal((args.batch, H, H, C)), 0).astype(np.float32)
        w = (rng.standard_normal((K, R, R, C // groups)) * np.sqrt(2 / (R * R * C // groups))).astype(np.float32)
        ref = direct(x, w, pad, groups, np.float64)
        nref = np.linalg.norm(ref)
        e32 = np.linalg.norm(direct(x, w, pad, groups, np.float32) - ref) / nref
        rows.append((name, 'direct fp32', '-', e32))
        for (m, r), cands in CANDIDATES.items():
            if r != R:
                continue
            for label, pts in cands.items():
                AT, G, BT = transforms(m, r, pts)
                e = np.linalg.norm(winograd(x, w, pad, groups, m, AT, G, BT) - ref) / nref
                rows.append((name, f'F({m}x{m},{r}x{r})', label, e))
    print(f"{'layer':12s} {'algorithm':14s} {'points (+inf)':16s} rel. error")
    for name, alg, pts, e in rows:
        print(f'{name:12s} {alg:14s} {pts:16s} {e:.2e}')
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump([dict(layer=a, algorithm=b, points=c, rel_error=d) for a, b, c, d in rows], fh, indent=1)


if __name__ == '__main__':
    main()
