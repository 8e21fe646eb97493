"""Data parallelism on MPI: training images/s and scaling efficiency for K ranks, the overlap of the
gradient reduction with backward, and the reduction time of AlexNet's 61 M parameters, ours (fixed
order: all-to-all of shards, micro-batch-order sum, all-gather) against the engine's own allreduce.

    python benchmarks/bench_dp.py                     # K = 1, 2 on this machine
    python benchmarks/bench_dp.py --ranks 1,2,4 --steps 20 --per-rank 32

What is measured, per K (launched as `mpiexec -n K python -m mpi4py benchmarks/bench_dp.py --inner`,
one OpenMP thread per rank so K ranks use K cores):
  * images/s of DataParallel.step on the small default net (28x28 built-in data, one micro-batch of
    --per-rank images per rank: weak scaling, global batch = K x per-rank), median of --steps steps
    after 2 warm-up steps, with the reduction overlapped with backward and (overlap=False) after it;
    scaling efficiency = images/s(K) / (K x images/s(1));
  * convnet.train(..., distributed=comm) end to end on one epoch of the built-in data (loader,
    steps, sharded validation), images/s as the history reports it;
  * for K >= 2: the reduction of 60,965,224 float32 (AlexNet 2012's parameters) in 4 MB buckets,
    ours vs MPI_Allreduce, median of 3.
Data loading is not timed (one synthetic batch). Output: a table and JSON at --json (default
benchmarks/results/bench_dp.json).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ALEXNET_PARAMS = 60_965_224


def inner(a):
    import convnet
    from convnet import distributed as dist
    from convnet.models import small_config
    comm = dist.world("mpi")
    K, r = comm.size, comm.rank
    out = {"ranks": K}
    net = convnet.Net(small_config(), device="cpu", seed=0)
    rng = np.random.default_rng(r)
    B = a.per_rank * K
    x = rng.standard_normal((a.per_rank, 28, 28, 3)).astype(np.float32)
    y = rng.integers(0, 10, a.per_rank).astype(np.int32)
    for overlap in (True, False):
        dp = dist.DataParallel(net, comm, micro_batch=a.per_rank, overlap=overlap, check_every=0)
        dp.broadcast()
        times = []
        for s in range(a.steps + 2):
            comm.barrier()
            t0 = time.perf_counter()
            dp.step(x, y, lr=0.001, step=s, global_batch=B)
            times.append(time.perf_counter() - t0)
        dp.close()
        med = statistics.median(times[2:])
        key = "overlap" if overlap else "serial"
        out[f"step_s_{key}"] = med
        out[f"images_per_s_{key}"] = B / med
        out[f"comm_busy_s_per_step_{key}"] = dp.timing["comm_busy_s"] / len(times)
        out[f"wait_s_per_step_{key}"] = dp.timing["wait_s"] / len(times)
    if K > 1:
        from mpi4py import MPI
        n = ALEXNET_PARAMS
        g = np.random.default_rng(r).standard_normal(n).astype(np.float32)
        bucket = (4 << 20) // 4
        starts = range(0, n, bucket)
        ours, engine = [], []
        for _ in range(3):
            comm.barrier()
            t0 = time.perf_counter()
            for s0 in starts:  # the ordered reduction of DataParallel, one micro-batch per rank
                piece = g[s0:s0 + bucket]
                bounds = dist.shard_bounds(len(piece), K)
                c = int(bounds[r + 1] - bounds[r])
                recv = np.empty((K, c), np.float32)
                comm.alltoallv(piece, bounds, recv)
                acc = recv[0].copy()
                for k in range(1, K):
                    np.add(acc, recv[k], out=acc)
                acc *= np.float32(1.0 / K)
                res = np.empty(len(piece), np.float32)
                comm.allgatherv(acc, bounds, res)
            ours.append(time.perf_counter() - t0)
            buf = g.copy()
            comm.barrier()
            t0 = time.perf_counter()
            for s0 in starts:
                comm.comm.Allreduce(MPI.IN_PLACE, [buf[s0:s0 + bucket], MPI.FLOAT], op=MPI.SUM)
            engine.append(time.perf_counter() - t0)
        out["reduce61M_ours_s"] = statistics.median(ours)
        out["reduce61M_allreduce_s"] = statistics.median(engine)
    # convnet.train() end to end (loader, steps, sharded validation; rank 0 writes nothing here):
    # one epoch of (steps + 2) global batches of the built-in data, micro-batches of per-rank.
    from convnet.data import builtin
    tr, te = builtin(n_train=B * (a.steps + 2), n_test=2 * B)
    res = convnet.train(model="default", data=(tr, te), epochs=1, batch_size=B, micro_batch=a.per_rank, out_dir=False,
                        workers=1, progress=False, distributed=comm)
    out["train_images_per_s"] = res.history[0]["images_per_s"]
    if r == 0:
        print("BENCH_DP " + json.dumps(out), flush=True)


def mpiexec():
    for d in (os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)):
        p = os.path.join(d, "mpiexec")
        if d and os.access(p, os.X_OK):
            return p
    sys.exit("bench_dp: no mpiexec (pip install mpi4py mpich)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--per-rank", type=int, default=32)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.inner:
        return inner(a)
    exe = mpiexec()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version else []
    rows = []
    for k in (int(v) for v in a.ranks.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [exe, "-n", str(k), *extra, sys.executable, "-m", "mpi4py", os.path.abspath(__file__), "--inner",
               "--steps", str(a.steps), "--per-rank", str(a.per_rank)]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        line = [ln for ln in run.stdout.splitlines() if ln.startswith("BENCH_DP ")]
        if run.returncode or not line:
            sys.exit(f"bench_dp: K={k} failed:\n{run.stdout}\n{run.stderr}")
        rows.append(json.loads(line[0][len("BENCH_DP "):]))
    base = rows[0]["images_per_s_overlap"] / rows[0]["ranks"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load "
          f"{os.getloadavg()[0]:.1f}; small net, {a.per_rank} images per rank, 1 thread per rank")
    print(f"{'K':>3} {'img/s':>8} {'eff.':>6} {'img/s serial':>13} {'step ms':>8} {'serial ms':>10} "
          f"{'comm ms/step':>13} {'61M ours s':>11} {'61M allreduce s':>16} {'train() img/s':>14}")
    for r in rows:
        r["scaling_efficiency"] = r["images_per_s_overlap"] / (r["ranks"] * base)
        print(f"{r['ranks']:>3} {r['images_per_s_overlap']:>8.0f} {100 * r['scaling_efficiency']:>5.0f}% "
              f"{r['images_per_s_serial']:>13.0f} {1e3 * r['step_s_overlap']:>8.1f} {1e3 * r['step_s_serial']:>10.1f} "
              f"{1e3 * r['comm_busy_s_per_step_overlap']:>13.1f} {r.get('reduce61M_ours_s', float('nan')):>11.3f} "
              f"{r.get('reduce61M_allreduce_s', float('nan')):>16.3f} {r['train_images_per_s']:>14.0f}")
    path = a.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_dp.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "load": os.getloadavg()[0], "per_rank": a.per_rank, "rows": rows}, f, indent=1)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
