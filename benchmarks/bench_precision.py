"""Mixed precision on the CPU: AlexNet's conv and FC layers in our fp32 and bf16, against PyTorch CPU in
fp32 and under torch.autocast("cpu", torch.bfloat16), in the same run; and an OWT training step in our
fp32 and bf16.

    python benchmarks/bench_precision.py                       # all layers, batch 16 conv / 128 FC
    python benchmarks/bench_precision.py --layers owt.conv3,fc6 --repeat 5 --no-step

Each entry times one layer's forward + backward (backward-data and backward-filter for ours, one
autograd backward for torch: the same three products) as the median of --repeat samples after a
warm-up; torch.set_num_threads equals our thread count. Prints the machine load (os.getloadavg) before
and after: on a shared machine the absolute numbers drift, the ratios inside one run less so.
JSON at --json (default benchmarks/results/bench_precision.json).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import convnet  # the installed package (imported before bench_conv, which puts ../python on the path)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_conv import LAYERS as CONV_LAYERS, out_size  # noqa: E402

FC_LAYERS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}
_C = convnet._C


def median_time(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def ours_conv(name, batch, precision):
    H, W, C, K, R, S, st, pd, g = CONV_LAYERS[name]
    P, Q = out_size(H, R, st, pd), out_size(W, S, st, pd)
    rng = np.random.default_rng(0)
    t = lambda a: convnet.from_numpy(np.ascontiguousarray(a, dtype=np.float32), "cpu")
    x, w, b = t(rng.standard_normal((batch, H, W, C))), t(rng.standard_normal((K, R, S, C // g)) * 0.01), t(np.zeros(K))
    y, dy = convnet.empty((batch, P, Q, K), "cpu"), t(rng.standard_normal((batch, P, Q, K)))
    dx, dw, db = convnet.empty((batch, H, W, C), "cpu"), convnet.empty((K, R, S, C // g), "cpu"), convnet.empty((K,), "cpu")
    kw = dict(stride=(st, st), pad=(pd, pd), groups=g)

    def run():
        with convnet.use_precision(precision):
            convnet.ops.conv_forward(x, w, b, y, **kw)
            convnet.ops.conv_backward_data(dy, w, dx, **kw)
            convnet.ops.conv_backward_filter(dy, x, dw, db, **kw)
    return run, 3 * 2.0 * batch * P * Q * K * R * S * C / g


def ours_fc(name, batch, precision):
    inp, out = FC_LAYERS[name]
    rng = np.random.default_rng(0)
    t = lambda a: convnet.from_numpy(np.ascontiguousarray(a, dtype=np.float32), "cpu")
    x, w, b, dy = t(rng.standard_normal((batch, inp))), t(rng.standard_normal((out, inp)) * 0.01), t(np.zeros(out)), \
        t(rng.standard_normal((batch, out)))
    y, dx, dw, db = convnet.empty((batch, out), "cpu"), convnet.empty((batch, inp), "cpu"), \
        convnet.empty((out, inp), "cpu"), convnet.empty((out,), "cpu")

    def run():
        with convnet.use_precision(precision):
            convnet.ops.fc_forward(x, w, b, y)
            convnet.ops.fc_backward_data(dy, w, dx)
            convnet.ops.fc_backward_weights(dy, x, dw, db)
    return run, 3 * 2.0 * batch * inp * out


def torch_layer(torch, name, batch, autocast):
    if name in FC_LAYERS:
        inp, out = FC_LAYERS[name]
        mod = torch.nn.Linear(inp, out)
        x = torch.randn(batch, inp, requires_grad=True)
    else:
        H, W, C, K, R, S, st, pd, g = CONV_LAYERS[name]
        mod = torch.nn.Conv2d(C, K, (R, S), stride=st, padding=pd, groups=g).to(memory_format=torch.channels_last)
        x = torch.randn(batch, C, H, W).to(memory_format=torch.channels_last).requires_grad_(True)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = mod(x)
        y.float().backward(torch.ones_like(y, dtype=torch.float32))
        x.grad = None
        mod.zero_grad(set_to_none=True)
    return run


def owt_step(precision, batch, repeat):
    net = convnet.alexnet("owt", num_classes=1000, device="cpu", seed=0)
    net.precision = precision
    rng = np.random.default_rng(0)
    x = convnet.from_numpy((rng.standard_normal((batch,) + tuple(net.input_shape), dtype=np.float32) * 64.0 *
                            np.float32(net.input_scale)), "cpu")
    labels = convnet.from_numpy(rng.integers(0, 1000, batch).astype(np.int32), "cpu")
    step = [0]

    def run():
        step[0] += 1
        net.train_step(x, labels, lr=0.01, step=step[0], seed=1)
    return median_time(run, repeat)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default=",".join(["owt.conv1", "owt.conv2", "owt.conv3", "owt.conv4", "owt.conv5",
                                                   "2012.conv2", *FC_LAYERS]))
    ap.add_argument("--batch", type=int, default=16, help="conv batch (default 16)")
    ap.add_argument("--fc-batch", type=int, default=128, help="FC batch (default 128)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--step-batch", type=int, default=16, help="OWT training step batch (default 16)")
    ap.add_argument("--no-step", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--kernels", default=None, help="our bf16 kernels to time, first = the 'ours bf16' column "
                    "(default: the automatic choice, then avx512_bf16 if different)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "bench_precision.json"))
    args = ap.parse_args(argv)
    threads = _C.cpu_threads()
    auto = _C.bf16_kernel()
    kernels = args.kernels.split(",") if args.kernels else [auto] + (["avx512_bf16"] if auto == "amx" else [])
    torch = None
    if not args.no_torch:
        import torch
        torch.set_num_threads(threads)
    load0 = os.getloadavg()
    print(f"threads {threads}, bf16 kernel {_C.bf16_kernel()}, load {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}")
    rows = []
    hdr = f"{'layer':12s} {'batch':>5s} {'ours fp32':>10s} {'ours bf16':>10s} {'bf16 x':>7s} {'torch fp32':>10s} {'torch bf16':>10s}" + \
        "".join(f" {k[:10]:>10s}" for k in kernels[1:]) + "  (ms, fwd+bwd)"
    print(hdr)
    for name in args.layers.split(","):
        batch = args.fc_batch if name in FC_LAYERS else args.batch
        make = ours_fc if name in FC_LAYERS else ours_conv
        r = {"layer": name, "batch": batch}
        fn, r["flops"] = make(name, batch, "fp32")
        r["ours_fp32_s"] = median_time(fn, args.repeat)
        for k in kernels:
            _C.set_bf16_kernel(k)
            fn, _ = make(name, batch, "bf16")
            r[f"ours_bf16_{k}_s"] = median_time(fn, args.repeat)
        _C.set_bf16_kernel("auto")
        r["ours_bf16_s"] = r[f"ours_bf16_{kernels[0]}_s"]
        if torch is not None:
            for p, ac in (("fp32", False), ("bf16", True)):
                r[f"torch_{p}_s"] = median_time(torch_layer(torch, name, batch, ac), args.repeat)
        rows.append(r)
        ms = lambda k: f"{r[k] * 1e3:10.1f}" if k in r else f"{'-':>10s}"
        print(f"{name:12s} {batch:5d} {ms('ours_fp32_s')} {ms('ours_bf16_s')} {r['ours_fp32_s'] / r['ours_bf16_s']:7.2f}"
              f" {ms('torch_fp32_s')} {ms('torch_bf16_s')}" + "".join(ms(f"ours_bf16_{k}_s") for k in kernels[1:]), flush=True)
    step = None
    if not args.no_step:
        step = {p: owt_step(p, args.step_batch, args.repeat) for p in ("fp32", "bf16")}
        print(f"OWT training step, batch {args.step_batch}: fp32 {step['fp32']:.2f} s, bf16 {step['bf16']:.2f} s, "
              f"bf16 speed-up x{step['fp32'] / step['bf16']:.2f}")
    load1 = os.getloadavg()
    print(f"load after {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"threads": threads, "bf16_kernel": _C.bf16_kernel(), "load_before": load0, "load_after": load1,
                   "layers": rows, "owt_step_s": step, "step_batch": args.step_batch}, f, indent=1)


if __name__ == "__main__":
    main()
