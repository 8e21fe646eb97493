"""One rank of the data-parallel tests (tests/test_distributed.py), run as
``mpiexec -n K python -m mpi4py tests/dp_worker.py MODE OUT [options]`` or, for K = 1, plainly.

The small net (models.small_config) at a 12x12 input with dropout 0.5, on the built-in data set,
global batch 16 in micro-batches of 4, each rank loading only its shard of each batch.

MODE  train: `--steps` steps, then rank 0 saves the parameters and momentum to OUT (npz) and every
             rank prints its digest;
      fail:  rank `--bad-rank` raises at step 3;
      kill:  rank `--bad-rank` SIGKILLs itself at step 3;
      drift: rank `--bad-rank` perturbs one weight after step 2; the digest check every step stops it.
"""
import argparse
import os
import signal
import sys

import numpy as np

import convnet
from convnet import distributed as dist
from convnet.data import BatchLoader, builtin
from convnet.models import small_config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "fail", "kill", "drift"])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--reduction", default="ordered")
    ap.add_argument("--bucket-bytes", type=int, default=16 << 10)  # several buckets even in this small net
    ap.add_argument("--bad-rank", type=int, default=1)
    ap.add_argument("--start", default=None, help="npz state to start from (resume)")
    ap.add_argument("--first-step", type=int, default=0)
    ap.add_argument("--two-tower", action="store_true", help="conv2, rnorm2, pool2 in tower 1 (its own communicator)")
    a = ap.parse_args()

    comm = dist.world("auto")
    dist.announce(comm)
    with dist.guard(comm):
        run(a, comm)


def config(two_tower=False):
    cfg = small_config(num_classes=10, input_size=12, width=8)
    if two_tower:
        cfg = [dict(d, tower=1) if d["name"] in ("conv2", "rnorm2", "pool2") else d for d in cfg]
    return cfg


def run(a, comm):
    train, _ = builtin(n_train=400, n_test=10, seed=1)
    net = convnet.Net(config(a.two_tower), device="cpu", seed=7)
    if a.start and comm.rank == 0:  # only rank 0 reads the checkpoint; the broadcast carries it
        with np.load(a.start) as z:
            net.load_state({k: z[k] for k in z.files})
    if comm.rank != 0:  # the broadcast must make the replicas equal
        for _, p in net.named_params():
            p.value.fill_(0.25)
    dp = dist.DataParallel(net, comm, micro_batch=a.micro, reduction=a.reduction, bucket_bytes=a.bucket_bytes,
                           check_every=1 if a.mode == "drift" else 5)
    dp.broadcast()
    loader = BatchLoader(train, a.batch, train=True, crop=12, lighting=0.1, seed=3, workers=0,
                         shard=(comm.rank, comm.size))
    step, epoch = 0, 0
    losses = []
    while step < a.first_step + a.steps:
        for x, y in loader.epoch(epoch):
            if step >= a.first_step:
                if a.mode == "fail" and step == 3 and comm.rank == a.bad_rank:
                    raise RuntimeError("planted failure")
                if a.mode == "kill" and step == 3 and comm.rank == a.bad_rank:
                    os.kill(os.getpid(), signal.SIGKILL)
                stats = dp.step(x, y, lr=0.05, momentum=0.9, weight_decay=5e-4, step=step, seed=11,
                                global_batch=a.batch)
                losses.append(stats[0])
                if a.mode == "drift" and step == 2 and comm.rank == a.bad_rank:
                    p = net.named_params()[0][1]
                    v = p.value.numpy()
                    v.flat[0] += 1e-3
                    p.value.copy_(convnet._C.Tensor.from_numpy(v, "cpu"))
            step += 1
            if step >= a.first_step + a.steps:
                break
        epoch += 1
    dp.close()
    digest = dist.param_digest(net)
    print(f"rank {comm.rank}/{comm.size} digest {digest} loss {losses[-1]:.6f}", flush=True)
    if comm.rank == 0:
        np.savez(a.out, **net.state())


if __name__ == "__main__":
    sys.exit(main())
