"""NCCL on a GPU (run by tools/device_check.sh): a one-rank communicator on cuda:0 runs the three
collectives convnet.distributed needs on convnet Tensors and checks the bytes that come back."""
import numpy as np

import convnet
from convnet import nccl

print("NCCL", nccl.version(), nccl.find_library())
dev = "cuda:0"
comm = nccl.NcclComm(nccl.unique_id(), 1, 0)
rng = np.random.default_rng(0)
x = rng.standard_normal(1000).astype(np.float32)
src = convnet.from_numpy(x, dev)
dst = convnet.full((1000,), float("nan"), dev)
convnet.synchronize(dev)
comm.allreduce_sum(src.data_ptr, dst.data_ptr, 1000)
convnet.synchronize(dev)
assert dst.numpy().tobytes() == x.tobytes(), "allreduce of one rank is the identity"
dst2 = convnet.full((1000,), float("nan"), dev)
comm.alltoallv(src.data_ptr, np.array([0, 1000]), dst2.data_ptr)
convnet.synchronize(dev)
assert dst2.numpy().tobytes() == x.tobytes(), "alltoallv to oneself"
dst3 = convnet.full((1000,), float("nan"), dev)
comm.allgather(src.data_ptr, dst3.data_ptr, 1000)
convnet.synchronize(dev)
assert dst3.numpy().tobytes() == x.tobytes(), "allgather of one rank"
comm.close()
print("nccl_check: allreduce, alltoallv, allgather OK on", dev)
