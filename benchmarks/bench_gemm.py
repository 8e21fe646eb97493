"""CPU GEMM throughput: convnet.ops.gemm vs torch.matmul (if importable) on the same shapes/threads.

    python benchmarks/bench_gemm.py [--threads 2] [--reps 5] [--precision bf16] [--json PATH]

Shapes are AlexNet's fully-connected layers at batch 128 (forward y = x W^T, backward data
dx = dy W, backward weights dW = dy^T x) plus a few small / skinny ones. Prints shape, ms and
GFLOP/s (2*M*N*K / time, best of --reps). Threads: OMP_NUM_THREADS for ours (set before import),
torch.set_num_threads for torch.

Results: a table on stdout and JSON at --json (default benchmarks/results/bench_gemm-<device>.json).
"""
import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--reps", type=int, default=5)
parser.add_argument("--device", default="cpu")
parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                    help="our GEMM precision (convnet.use_precision); under bf16 torch.matmul runs inside "
                         "torch.autocast('cpu', torch.bfloat16)")
parser.add_argument("--json", default=None, help="where to write results (default benchmarks/results/...)")
args = parser.parse_args()
os.environ["OMP_NUM_THREADS"] = str(args.threads)

import numpy as np  # noqa: E402

import convnet  # noqa: E402
from common import SPEEDUP_HEADER, SPEEDUP_LEGEND, import_torch, speedup  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
torch = None if args.no_torch else import_torch()
if torch is not None:
    torch.set_num_threads(args.threads)

# (name, M, N, K, trans_a, trans_b)
SHAPES = [
    ("fc6 fwd      x W^T", 128, 4096, 9216, False, True),
    ("fc6 bwd data dy W", 128, 9216, 4096, False, False),
    ("fc6 bwd wts  dy^T x", 4096, 9216, 128, True, False),
    ("fc7 fwd", 128, 4096, 4096, False, True),
    ("fc7 bwd data", 128, 4096, 4096, False, False),
    ("fc7 bwd wts", 4096, 4096, 128, True, False),
    ("fc8 fwd", 128, 1000, 4096, False, True),
    ("fc8 bwd data", 128, 4096, 1000, False, False),
    ("fc8 bwd wts", 1000, 4096, 128, True, False),
    ("square 1024", 1024, 1024, 1024, False, False),
    ("small 64", 64, 64, 64, False, False),
    ("skinny N=1", 4096, 1, 4096, False, False),
    ("skinny M=1", 1, 4096, 4096, False, True),
    ("odd 127x65x33", 127, 65, 33, True, True),
]


def best_time(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    rng = np.random.default_rng(0)
    dev = args.device
    print(f"threads={args.threads}  device={dev}  precision={args.precision}  torch={'yes' if torch else 'no'}")
    print(f"{'shape':22s} {'M':>5s} {'N':>5s} {'K':>5s} {'ta tb':>5s} | {'ours ms':>8s} {'GFLOP/s':>8s} | "
          f"{'torch ms':>8s} {'GFLOP/s':>8s} {SPEEDUP_HEADER:>8s}")
    rows = []
    for name, M, N, K, ta, tb in SHAPES:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        A, B = convnet.from_numpy(a, dev), convnet.from_numpy(b, dev)
        C = convnet.zeros((M, N), dev)

        def ours():
            with convnet.use_precision(args.precision):
                convnet.ops.gemm(A, B, C, trans_a=ta, trans_b=tb)
            if dev != "cpu":
                convnet.synchronize(dev)

        flop = 2.0 * M * N * K
        t = best_time(ours, args.reps)
        line = f"{name:22s} {M:5d} {N:5d} {K:5d} {int(ta):2d} {int(tb):2d} | {t * 1e3:8.3f} {flop / t / 1e9:8.1f} |"
        row = dict(shape=name, M=M, N=N, K=K, trans_a=ta, trans_b=tb, ours_ms=t * 1e3, ours_gflops=flop / t / 1e9)
        if torch is not None and dev == "cpu":
            ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
            opa = ta_.T if ta else ta_
            opb = tb_.T if tb else tb_
            def theirs():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    return torch.matmul(opa, opb)
            tt = best_time(theirs, args.reps)
            row.update(torch_ms=tt * 1e3, torch_gflops=flop / tt / 1e9, speedup=speedup(tt, t))
            line += f" {tt * 1e3:8.3f} {flop / tt / 1e9:8.1f} {row['speedup']:8.2f}"
        print(line, flush=True)
        rows.append(row)
    if torch is not None and dev == "cpu":
        print(SPEEDUP_LEGEND)
    suffix = "" if args.precision == "fp32" else f"-{args.precision}"
    path = args.json or os.path.join(HERE, "results", f"bench_gemm-{dev.replace(':', '')}{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(device=dev, precision=args.precision, threads=args.threads, reps=args.reps, timing="best of reps",
                       torch=torch.__version__ if torch else None, build=convnet.build_info(), results=rows),
                  f, indent=1, default=str)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
