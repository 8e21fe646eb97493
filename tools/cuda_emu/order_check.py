#!/usr/bin/env python3
"""cuda_emu race check: run every CUDA op once on fixed inputs and save the outputs, so that two runs
under different fiber orders (CONVNET_EMU_ORDER=forward / reverse: the threads of a block, and the
blocks of a grid, run in the opposite order) can be compared bit for bit. The kernels claim fixed-order
reductions, so any difference is a race (or order-dependent arithmetic) in a kernel.

usage: order_check.py run OUT.npz [DEVICE]     (under the emulated build: source tools/cuda_emu/env.sh)
       order_check.py compare A.npz B.npz      bit for bit (two orders of the same device)
       order_check.py close A.npz B.npz        relative error per output (cuda against cpu)
Shapes are chosen to reach every kernel path: partial tiles, split-K GEMM and backward filter,
grouped and strided convolution, staged / one-pixel / global LRN, empty and padded pool windows,
softmax rows wider than a block, sgd batches of more than 32 tensors.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import op_cases  # noqa: E402  (tools/op_cases.py: the op table's generic cases)


def run(out_path, device="cuda:0"):
    import convnet

    ops = op_cases.Recorder(convnet.ops, convnet._C.op_table)  # notes which ops of the table ran
    rng = np.random.default_rng(1234)
    results = {}

    def T(a, dtype=np.float32):
        return convnet.from_numpy(np.ascontiguousarray(a, dtype=dtype), device)

    def E(*shape, dtype="float32"):
        return convnet.full(shape, float("nan"), device) if dtype == "float32" else \
            convnet.from_numpy(np.full(shape, -7, np.int32), device)

    def R(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def keep(name, *tensors):
        for i, t in enumerate(tensors):
            results[f"{name}.{i}"] = t.numpy()

    # GEMM: all transposes, partial tiles, split-K (small M*N, deep K), unaligned leading dims
    for M, N, K in [(5, 7, 3), (130, 129, 70), (64, 96, 2000), (3, 1000, 4100)]:
        for ta in (False, True):
            for tb in (False, True):
                a = T(R(K, M) if ta else R(M, K))
                b = T(R(N, K) if tb else R(K, N))
                c = T(R(M, N))
                ops.gemm(a, b, c, trans_a=ta, trans_b=tb, alpha=0.5, beta=0.25)
                keep(f"gemm{M}x{N}x{K}{'t' if ta else 'n'}{'t' if tb else 'n'}", c)
    x, w, b = T(R(8, 300)), T(R(37, 300)), T(R(37))
    y = E(8, 37)
    ops.fc_forward(x, w, b, y)
    dx, dw, db = E(8, 300), E(37, 300), E(37)
    ops.fc_backward_data(y, w, dx)
    ops.fc_backward_weights(y, x, dw, db)
    keep("fc", y, dx, dw, db)

    # convolution: (N, H, W, C, K, R, S, stride, pad, groups)
    for shape in [(2, 9, 11, 5, 7, 3, 3, (1, 1), (1, 1), 1), (2, 17, 19, 3, 16, 11, 11, (4, 4), (2, 2), 1),
                  (2, 13, 13, 8, 12, 3, 3, (2, 2), (1, 1), 2), (4, 27, 27, 16, 70, 5, 5, (1, 1), (2, 2), 2),
                  (3, 31, 31, 4, 8, 1, 1, (1, 1), (0, 0), 1)]:
        N, H, W, C, K, Rr, S, st, pd, g = shape
        P = (H + 2 * pd[0] - Rr) // st[0] + 1
        Q = (W + 2 * pd[1] - S) // st[1] + 1
        x, w, b, dy = T(R(N, H, W, C)), T(R(K, Rr, S, C // g)), T(R(K)), T(R(N, P, Q, K))
        # the direct kernels, and the Winograd ones (cuda/winograd.cu) where they apply
        winograd = st == (1, 1) and Rr == S and Rr in (3, 5) and max(pd) < Rr
        for algorithm in ("direct", "winograd") if winograd else ("direct",):
            y, dx, dw, db = E(N, P, Q, K), E(N, H, W, C), E(K, Rr, S, C // g), E(K)
            ops.conv_forward(x, w, b, y, stride=st, pad=pd, groups=g, algorithm=algorithm)
            ops.conv_backward_data(dy, w, dx, stride=st, pad=pd, groups=g, algorithm=algorithm)
            ops.conv_backward_filter(dy, x, dw, db, stride=st, pad=pd, groups=g, algorithm=algorithm)
            keep(f"conv{shape}" + ("" if algorithm == "direct" else " winograd"), y, dx, dw, db)

    # tensor cores under tf32 / bf16 (cuda/gemm_tc.cu, cuda/conv_tc.cu): GEMM with partial tiles and
    # split-K; conv element-by-element (C = 5) and float4 gathers, stride 2 with groups, split-K backward filter
    for prec in ("tf32", "bf16"):
        with convnet.use_precision(prec):
            for M, N, K in [(130, 129, 70), (64, 96, 2000)]:
                a, b, c = T(R(M, K)), T(R(K, N)), T(R(M, N))
                ops.gemm(a, b, c, alpha=0.5, beta=0.25)
                keep(f"{prec}.gemm{M}x{N}x{K}", c)
            for shape in [(2, 9, 11, 5, 7, 3, 3, (1, 1), (1, 1), 1), (2, 13, 13, 8, 12, 3, 3, (2, 2), (1, 1), 2),
                          (4, 27, 27, 16, 70, 5, 5, (1, 1), (2, 2), 2)]:
                N, H, W, C, K, Rr, S, st, pd, g = shape
                P = (H + 2 * pd[0] - Rr) // st[0] + 1
                Q = (W + 2 * pd[1] - S) // st[1] + 1
                x, w, b, dy = T(R(N, H, W, C)), T(R(K, Rr, S, C // g)), T(R(K)), T(R(N, P, Q, K))
                y, dx, dw, db = E(N, P, Q, K), E(N, H, W, C), E(K, Rr, S, C // g), E(K)
                ops.conv_forward(x, w, b, y, stride=st, pad=pd, groups=g, relu=True)
                ops.conv_backward_data(dy, w, dx, stride=st, pad=pd, groups=g)
                ops.conv_backward_filter(dy, x, dw, db, stride=st, pad=pd, groups=g)
                keep(f"{prec}.conv{shape}", y, dx, dw, db)

    # LRN: staged (C = 96, 7), one pixel per block (1500), global (2100); odd and even sizes
    for rows, C, size in [(50, 96, 5), (13, 7, 4), (3, 1500, 5), (2, 2100, 6)]:
        x, dy = T(R(1, 1, rows, C) * 3), T(R(1, 1, rows, C))
        y, dx = E(1, 1, rows, C), E(1, 1, rows, C)
        ops.lrn_forward(x, y, size=size)
        ops.lrn_backward(x, y, dy, dx, size=size)
        keep(f"lrn{rows}x{C}s{size}", y, dx)

    # pooling
    for N, H, W, C, win, st, pd in [(2, 13, 13, 5, (3, 3), (2, 2), (0, 0)), (2, 8, 9, 33, (3, 3), (2, 2), (1, 1)),
                                    (1, 7, 7, 3, (2, 2), (3, 3), (1, 1))]:
        P = (H + 2 * pd[0] - win[0]) // st[0] + 1
        Q = (W + 2 * pd[1] - win[1]) // st[1] + 1
        x = rng.integers(-3, 4, (N, H, W, C)).astype(np.float32)  # ties
        x, dy = T(x), T(R(N, P, Q, C))
        y, am, dx = E(N, P, Q, C), E(N, P, Q, C, dtype="int32"), E(N, H, W, C)
        ops.max_pool_forward(x, y, am, window=win, stride=st, pad=pd)
        ops.max_pool_backward(dy, am, dx, window=win, stride=st, pad=pd)
        ay, adx = E(N, P, Q, C), E(N, H, W, C)
        ops.avg_pool_forward(x, ay, window=win, stride=st, pad=pd)
        ops.avg_pool_backward(dy, adx, window=win, stride=st, pad=pd)
        keep(f"pool{N}x{H}x{W}x{C}", y, am, dx, ay, adx)

    # small ops
    for n in (1, 1001, 70000):
        x, dy = T(R(n)), T(R(n))
        y, d, dr, dd = E(n), E(n), E(n), E(n)
        ops.relu_forward(x, y)
        ops.relu_backward(y, dy, d)
        ops.dropout_forward(x, dr, 0.3, 42, 7)
        ops.dropout_backward(dy, dd, 0.3, 42, 7)
        a = T(R(n))
        ops.add_(a, x, 0.5)
        f, c = E(n), E(n)
        ops.fill_(f, 0.75)
        ops.copy_(c, a)
        keep(f"small{n}", y, d, dr, dd, a, f, c)
    for N, C in [(1, 3), (7, 10), (5, 1000)]:
        logits = T(R(N, C) * 4)
        labels = T(rng.integers(0, C, N), np.int32)
        d, st = E(N, C), E(3)
        ops.softmax_cross_entropy(logits, labels, d, st)
        keep(f"softmax{N}x{C}", d, st)
    ws = [T(R(n)) for n in [5] * 20 + [1000] * 20]
    gs = [T(R(w.shape[0])) for w in ws]
    vs = [T(R(w.shape[0])) for w in ws]
    ops.sgd_update(ws, gs, vs, [0.01] * len(ws), [5e-4] * len(ws), 0.9)
    keep("sgd", *ws, *vs)
    for op in op_cases.generic_ops(convnet._C.op_table):  # elementwise ops with no case above
        if op["name"] not in ops.called:
            for n in (1, 1001, 70000):
                keep(f"{op['name']}{n}", *op_cases.run_generic(ops, op, lambda: T(R(n)), lambda: E(n)))
    missing = ops.missing()
    if missing:
        raise SystemExit(f"order_check: no case for {missing} (add one to run())")
    np.savez(out_path, **results)
    print(f"order_check: {len(results)} outputs from {device} -> {out_path}")


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    bad = 0
    for k in a.files:
        x, y = a[k], b[k]
        same = x.tobytes() == y.tobytes()
        nan = np.isnan(x).any() if x.dtype == np.float32 else False
        if not same or nan:
            bad += 1
            diff = np.flatnonzero(x.view(np.uint32) != y.view(np.uint32)) if not same else []
            print(f"  {k}: {'differs at ' + str(len(diff)) + ' elements, first ' + str(diff[:5]) if not same else ''}"
                  f"{' contains NaN (unwritten output?)' if nan else ''}")
    print(f"order_check: {len(a.files)} outputs compared, {bad} differ or contain NaN")
    return bad


def close(a_path, b_path, tol=1e-4):
    a, b = np.load(a_path), np.load(b_path)
    bad = 0
    for k in a.files:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        err = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
        exact = a[k].tobytes() == b[k].tobytes()
        limit = 2e-3 if k.startswith("tf32.") else tol  # the CPU computes tf32 as fp32: TF32 rounding apart
        if err > limit or not np.isfinite(err):
            bad += 1
        print(f"  {k:60s} {'bit-exact' if exact else f'rel err {err:.2e}'}{'  <-- FAIL' if err > limit else ''}")
    print(f"order_check: {len(a.files)} outputs compared, {bad} above {tol:g}")
    return bad


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], *(sys.argv[3:4]))
    elif sys.argv[1] == "close":
        sys.exit(1 if close(sys.argv[2], sys.argv[3]) else 0)
    else:
        sys.exit(1 if compare(sys.argv[2], sys.argv[3]) else 0)
