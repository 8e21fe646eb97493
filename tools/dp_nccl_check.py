"""DataParallel's NCCL backend on a GPU (run by tools/device_check.sh): the small net on cuda:0,
global batch 16 in micro-batches of 4 on one process (a one-rank NCCL communicator: the all-to-all,
the device-side fixed-order sum and the grouped broadcasts all run), 5 steps, against the host
backend on the same device. The ordered reduction must give the same bytes; "fast" (ncclAllReduce)
must agree to float32 rounding. Prints one line per check, exits 1 on a mismatch."""
import sys

import numpy as np

import convnet
from convnet import distributed as dist
from convnet.models import small_config

dev = "cuda:0"
rng = np.random.default_rng(0)
x = rng.standard_normal((5, 16, 12, 12, 3)).astype(np.float32)
y = rng.integers(0, 10, (5, 16)).astype(np.int32)


def run(backend, reduction="ordered"):
    net = convnet.Net(small_config(num_classes=10, input_size=12, width=8), device=dev, seed=7)
    dp = dist.DataParallel(net, micro_batch=4, reduction=reduction, backend=backend, bucket_bytes=16 << 10)
    for s in range(5):
        dp.step(x[s], y[s], lr=0.05, step=s, seed=11)
    dp.close()
    return dp.backend, net.state()


ok = True
for reduction in ("ordered", "fast"):
    (b_host, host), (b_nccl, dev_state) = run("host", reduction), run("nccl", reduction)
    assert (b_host, b_nccl) == ("host", "nccl")
    same = all(host[k].tobytes() == dev_state[k].tobytes() for k in host)
    rel = max(float(np.abs(host[k] - dev_state[k]).max() / max(np.abs(host[k]).max(), 1e-30)) for k in host)
    good = same if reduction == "ordered" else rel < 1e-5
    ok &= good
    print(f"dp_nccl_check: reduction={reduction}: nccl vs host on {dev}: "
          f"{'byte-identical' if same else f'max rel diff {rel:.2e}'} -> {'OK' if good else 'MISMATCH'}")
sys.exit(0 if ok else 1)
