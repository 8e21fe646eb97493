"""Convolution throughput: forward, backward-data and backward-filter time of every conv layer of
AlexNet-2012 (two-tower, groups 2) and of the one-weird-trick variant, ours against PyTorch.

    python benchmarks/bench_conv.py                         # CPU, small batch, all layers
    python benchmarks/bench_conv.py --device cuda:0         # GPU, batch 128
    python benchmarks/bench_conv.py --layers 2012.conv2,owt.conv3 --repeat 10 --batch 4
    python benchmarks/bench_conv.py --algorithms direct,winograd   # our conv ops' algorithm= side by side
    python benchmarks/bench_conv.py --precision bf16        # ours in bf16, PyTorch on bfloat16 tensors

Timing: median over --repeat samples after warm-up runs. Each sample is a host timer around
`iters` back-to-back calls bracketed by convnet.synchronize(device) (our _C module has no CUDA event
API, so GPU samples run several iterations to amortise the synchronisation; CPU samples are one call).
PyTorch is timed the same way (torch.cuda.synchronize on the GPU). GFLOP/s counts 2*N*P*Q*K*R*S*C/groups
per pass (backward-filter's bias sum is not counted).

The PyTorch comparison does the same work: same shapes, NCHW / KCRS tensors converted once outside
the timing, torch.set_num_threads equal to our thread count on the CPU; on the GPU cuDNN in strict
fp32 (allow_tf32 False for cuDNN and matmul) with cudnn.benchmark on. backward-data is
aten.convolution_backward with output_mask (True, False, False); backward-filter with (False, True, True)
(filters and bias, as ours computes dw and db).

speed-up = torch time / our time (above 1: ours faster); ours/torch is its inverse.

Results: a table on stdout and JSON at --json (default benchmarks/results/bench_conv-<device>.json).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from common import SPEEDUP_HEADER, SPEEDUP_LEGEND, import_torch, speedup

HERE = os.path.dirname(os.path.abspath(__file__))

import convnet  # noqa: E402

# name: (H, W, C, K, R, S, stride, pad, groups)
LAYERS = {
    "2012.conv1": (227, 227, 3, 96, 11, 11, 4, 0, 1),
    "2012.conv2": (27, 27, 96, 256, 5, 5, 1, 2, 2),
    "2012.conv3": (13, 13, 256, 384, 3, 3, 1, 1, 1),
    "2012.conv4": (13, 13, 384, 384, 3, 3, 1, 1, 2),
    "2012.conv5": (13, 13, 384, 256, 3, 3, 1, 1, 2),
    "owt.conv1": (224, 224, 3, 64, 11, 11, 4, 2, 1),
    "owt.conv2": (27, 27, 64, 192, 5, 5, 1, 2, 1),
    "owt.conv3": (13, 13, 192, 384, 3, 3, 1, 1, 1),
    "owt.conv4": (13, 13, 384, 256, 3, 3, 1, 1, 1),
    "owt.conv5": (13, 13, 256, 256, 3, 3, 1, 1, 1),
}
PASSES = ("fwd", "bwd_data", "bwd_filter")


def out_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def time_it(fn, sync, repeat, warmup, iters):
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / iters)
    return statistics.median(samples)


def ours(name, N, device, repeat, warmup, iters, rng, algorithm="auto", precision="fp32"):
    H, W, C, K, R, S, st, pd, g = LAYERS[name]
    P, Q = out_size(H, R, st, pd), out_size(W, S, st, pd)
    x = convnet.from_numpy(rng.standard_normal((N, H, W, C), dtype=np.float32), device)
    w = convnet.from_numpy((rng.standard_normal((K, R, S, C // g)) * 0.05).astype(np.float32), device)
    b = convnet.from_numpy(rng.standard_normal(K).astype(np.float32), device)
    y = convnet.empty((N, P, Q, K), device)
    dy = convnet.from_numpy(rng.standard_normal((N, P, Q, K), dtype=np.float32), device)
    dx = convnet.empty((N, H, W, C), device)
    dw = convnet.empty((K, R, S, C // g), device)
    db = convnet.empty((K,), device)
    kw = dict(stride=(st, st), pad=(pd, pd), groups=g, algorithm=algorithm)
    fns = {
        "fwd": lambda: convnet.ops.conv_forward(x, w, b, y, relu=False, **kw),
        "bwd_data": lambda: convnet.ops.conv_backward_data(dy, w, dx, **kw),
        "bwd_filter": lambda: convnet.ops.conv_backward_filter(dy, x, dw, db, **kw),
    }
    sync = (lambda: convnet.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    with convnet.use_precision(precision):
        return {p: time_it(fns[p], sync, repeat, warmup, iters) for p in PASSES}


def theirs(torch, name, N, device, repeat, warmup, iters, rng, precision="fp32"):
    H, W, C, K, R, S, st, pd, g = LAYERS[name]
    dev = torch.device(device)
    P, Q = out_size(H, R, st, pd), out_size(W, S, st, pd)
    # NCHW / KCRS, made once, outside the timing.
    x = torch.from_numpy(rng.standard_normal((N, C, H, W), dtype=np.float32)).to(dev)
    w = torch.from_numpy((rng.standard_normal((K, C // g, R, S)) * 0.05).astype(np.float32)).to(dev)
    b = torch.from_numpy(rng.standard_normal(K).astype(np.float32)).to(dev)
    dy = torch.from_numpy(rng.standard_normal((N, K, P, Q), dtype=np.float32)).to(dev)
    if precision == "bf16":  # what torch.autocast(..., torch.bfloat16) runs a convolution in, channels_last
        # (NHWC like ours: oneDNN's bf16 kernels want it; bench_precision.py does the same)
        x, w, b, dy = x.bfloat16(), w.bfloat16(), b.bfloat16(), dy.bfloat16()
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    conv_bwd = torch.ops.aten.convolution_backward
    args = ([st, st], [pd, pd], [1, 1], False, [0, 0], g)
    fns = {
        "fwd": lambda: torch.nn.functional.conv2d(x, w, b, stride=st, padding=pd, groups=g),
        "bwd_data": lambda: conv_bwd(dy, x, w, [K], *args, [True, False, False]),
        "bwd_filter": lambda: conv_bwd(dy, x, w, [K], *args, [False, True, True]),
    }
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.no_grad():
        return {p: time_it(fns[p], sync, repeat, warmup, iters) for p in PASSES}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    ap.add_argument("--batch", type=int, default=None, help="default: 128 on a GPU, 8 on the CPU")
    ap.add_argument("--layers", default="all", help="comma-separated names (2012.conv1,owt.conv3) or 'all'")
    ap.add_argument("--repeat", type=int, default=None, help="timed samples per pass (default: 3 CPU, 20 GPU)")
    ap.add_argument("--iters", type=int, default=None, help="calls per timed sample (default: 1 CPU, 5 GPU)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--algorithms", default="auto",
                    help="comma-separated algorithm= values of our conv ops to time (auto, direct, winograd); "
                         "winograd is skipped on the layers it does not support")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                    help="our GEMM precision (convnet.use_precision); under bf16 PyTorch gets bfloat16 tensors, "
                         "as torch.autocast('cpu', torch.bfloat16) runs a convolution")
    ap.add_argument("--json", default=None, help="where to write results (default benchmarks/results/...)")
    args = ap.parse_args(argv)

    device = args.device
    if device not in convnet.devices():
        ap.error(f"device {device!r} not available here (have {convnet.devices()})")
    on_gpu = device.startswith("cuda")
    N = args.batch or (128 if on_gpu else 8)
    repeat = args.repeat or (20 if on_gpu else 3)
    iters = args.iters or (5 if on_gpu else 1)
    names = list(LAYERS) if args.layers == "all" else [n.strip() for n in args.layers.split(",")]
    for n in names:
        if n not in LAYERS:
            ap.error(f"unknown layer {n!r}; choose from {', '.join(LAYERS)}")
    threads = convnet.build_info().get("cpu_threads") or os.cpu_count()

    torch = None
    if not args.no_torch:
        torch = import_torch()
        if torch is not None and on_gpu:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
        elif torch is not None:
            torch.set_num_threads(threads)

    rng = np.random.default_rng(0)
    rows = []
    print(f"conv benchmark: device {device}, precision {args.precision}, batch {N}, median of {repeat} (x{iters} calls), "
          f"{threads} CPU threads, torch {torch.__version__ if torch else 'absent'}")
    algorithms = [a.strip() for a in args.algorithms.split(",")]
    header = (f"{'layer':<11} {'pass':<10} {'algorithm':<9} {'ours ms':>9} {'GFLOP/s':>8} {'torch ms':>9} {'GFLOP/s':>8} "
              f"{SPEEDUP_HEADER:>10}")
    print(header)
    print("-" * len(header))
    for name in names:
        H, W, C, K, R, S, st, pd, g = LAYERS[name]
        P, Q = out_size(H, R, st, pd), out_size(W, S, st, pd)
        flops = 2.0 * N * P * Q * K * R * S * (C // g)
        winograd_ok = st == 1 and R == S and R in (3, 5) and pd < R
        mine = {a: ours(name, N, device, repeat, args.warmup, iters, rng, a, args.precision) for a in algorithms
                if a != "winograd" or winograd_ok}
        ref = theirs(torch, name, N, device, repeat, args.warmup, iters, rng, args.precision) if torch else None
        for p in PASSES:
            for a, t in mine.items():
                row = dict(layer=name, pass_=p, algorithm=a, batch=N, gflop=flops / 1e9, ours_ms=t[p] * 1e3,
                           ours_gflops=flops / t[p] / 1e9)
                line = f"{name:<11} {p:<10} {a:<9} {row['ours_ms']:9.2f} {row['ours_gflops']:8.1f}"
                if ref:
                    row.update(torch_ms=ref[p] * 1e3, torch_gflops=flops / ref[p] / 1e9, speedup=speedup(ref[p], t[p]))
                    line += f" {row['torch_ms']:9.2f} {row['torch_gflops']:8.1f} {row['speedup']:10.2f}"
                print(line, flush=True)
                rows.append({("pass" if k == "pass_" else k): v for k, v in row.items()})

    if torch:
        print(SPEEDUP_LEGEND)
    suffix = "" if args.precision == "fp32" else f"-{args.precision}"
    path = args.json or os.path.join(HERE, "results", f"bench_conv-{device.replace(':', '')}{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(device=device, precision=args.precision, batch=N, repeat=repeat, iters=iters, threads=threads,
                       torch=torch.__version__ if torch else None, build=convnet.build_info(), results=rows),
                  f, indent=1, default=str)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
