"""A small case of every op on cuda:0, for compute-sanitizer (memcheck, racecheck).

Shapes are small and odd so every kernel's edge handling runs; each result is read back, so a
kernel fault surfaces here rather than later.
"""
import os
import sys

import numpy as np

import convnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import op_cases  # noqa: E402

ops = op_cases.Recorder(convnet.ops, convnet._C.op_table)  # notes which ops of the table ran
dev = "cuda:0"
rng = np.random.default_rng(0)


def t(*shape):
    return convnet.from_numpy(rng.standard_normal(shape).astype(np.float32), dev)


def run():
    a, b, c = t(17, 33), t(33, 9), t(17, 9)
    for ta in (False, True):
        for tb in (False, True):
            ops.gemm(t(33, 17) if ta else a, t(9, 33) if tb else b, c, ta, tb, 1.0, 0.5)
    x, w, bias, y = t(5, 37), t(11, 37), t(11), t(5, 11)
    ops.fc_forward(x, w, bias, y, False)
    ops.fc_forward(x, w, bias, y, True, True)  # accumulate, fused ReLU
    ops.fc_backward_data(y, w, t(5, 37), True)
    ops.fc_backward_weights(y, x, t(11, 37), t(11))
    ops.relu_forward(y, y)
    ops.relu_backward(y, t(5, 11), t(5, 11))
    ops.dropout_forward(t(1001), t(1001), 0.5, 1, 2)
    ops.dropout_backward(t(1001), t(1001), 0.5, 1, 2)
    labels = convnet.from_numpy(rng.integers(0, 11, 5).astype(np.int32), dev)
    ops.softmax_cross_entropy(y, labels, t(5, 11), t(3))
    ops.sgd_update([t(7), t(3, 3)], [t(7), t(3, 3)], [t(7), t(3, 3)], [0.1, 0.1], [0.0, 5e-4], 0.9)
    x = t(2, 13, 11, 6)
    for stride, pad, groups in [((1, 1), (1, 1), 1), ((2, 3), (2, 0), 2), ((4, 4), (0, 0), 3)]:
        wt = t(6, 3, 5, 6 // groups)
        n, p, q, k = convnet._C.conv_output_shape(x.shape, wt.shape, stride, pad, groups)
        yy = t(n, p, q, k)
        ops.conv_forward(x, wt, t(6), yy, stride, pad, groups, False)
        ops.conv_backward_data(yy, wt, t(*x.shape), stride, pad, groups, False)
        ops.conv_backward_filter(yy, x, t(*wt.shape), t(6), stride, pad, groups, False)
    for size in (3, 5):  # the Winograd kernels (cuda/winograd.cu), groups 2
        wt = t(6, size, size, 3)
        n, p, q, k = convnet._C.conv_output_shape(x.shape, wt.shape, (1, 1), (1, 1), 2)
        yy = t(n, p, q, k)
        ops.conv_forward(x, wt, t(6), yy, (1, 1), (1, 1), 2, False, False, "winograd")
        ops.conv_backward_data(yy, wt, t(*x.shape), (1, 1), (1, 1), 2, False, "winograd")
        ops.conv_backward_filter(yy, x, t(*wt.shape), t(6), (1, 1), (1, 1), 2, False, "winograd")
    ops.lrn_forward(x, t(*x.shape), 5, 1e-2, 0.75, 2.0, False)
    ops.lrn_backward(x, t(*x.shape), t(*x.shape), t(*x.shape), 5, 1e-2, 0.75, 2.0, False)
    shape = convnet._C.pool_output_shape(x.shape, (3, 3), (2, 2), (1, 1))
    yy, arg = t(*shape), convnet.zeros(shape, dev, "int32")
    ops.max_pool_forward(x, yy, arg, (3, 3), (2, 2), (1, 1))
    ops.max_pool_backward(yy, arg, t(*x.shape), (3, 3), (2, 2), (1, 1))
    ops.avg_pool_forward(x, yy, (3, 3), (2, 2), (1, 1))
    ops.avg_pool_backward(yy, t(*x.shape), (3, 3), (2, 2), (1, 1))
    ops.fill_(y, 0.5)
    ops.add_(y, t(5, 11), -1.0)
    ops.copy_(t(5, 11), y)
    t(64, 64).to("cpu").to(dev).numpy()
    up = convnet._C.Uploader(dev, 2)  # pinned staging + upload stream (csrc/upload.h)
    for shape in ((7, 5), (7, 5), (3,)):
        up.put(rng.standard_normal(shape).astype(np.float32))
        up.get().numpy()
    for op in op_cases.generic_ops(convnet._C.op_table):  # elementwise ops with no case above
        if op["name"] not in ops.called:
            for out in op_cases.run_generic(ops, op, lambda: t(1001), lambda: t(1001)):
                out.numpy()
    convnet.synchronize(dev)
    missing = ops.missing()
    if missing:
        raise SystemExit(f"sanitizer case: no case for {missing} (add one above)")
    print(f"sanitizer case: every op ran ({len(ops.called)} of the op table)")


if __name__ == "__main__":
    run()
