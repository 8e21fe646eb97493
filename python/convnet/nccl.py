"""NCCL for GPU buffers, loaded at run time (ctypes), so an install without it still imports.

Where libnccl.so.2 comes from, first found wins: $CONVNET_NCCL (a path to the library), the
`nvidia-nccl-cu13` wheel (`pip install nvidia-nccl-cu13`, or `pip install '.[nccl]'` in a checkout: nvidia/nccl/lib/libnccl.so.2, self-contained),
then the system's loader path. Nothing is loaded until `library()` (or NcclComm) is first called.

NcclComm wraps one communicator (ncclCommInitRank; rank 0 makes the 128-byte unique id and the MPI
communicator carries it to the others) and the collectives data parallelism needs on device
pointers and a CUDA stream (integers: Tensor.data_ptr, the stream handle):
  allreduce_sum     the engine's own order (reduction="fast")
  alltoallv         grouped ncclSend/ncclRecv: shard k of a buffer to rank k (reduction="ordered")
  allgather         equal-size shards (the ordered reduction pads its shards to ceil(n / K))
The fixed-order sum between alltoallv and allgather is ops.add_ on the device, in micro-batch order.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["NcclError", "find_library", "library", "version", "available", "NcclComm", "unique_id", "init_comms",
           "group"]

NCCL_UNIQUE_ID_BYTES = 128
_FLOAT32, _SUM = 7, 0  # ncclFloat32, ncclSum (nccl.h)
_lib = None


class NcclError(RuntimeError):
    """NCCL missing, or an NCCL call failed (names the call and NCCL's own message)."""


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * NCCL_UNIQUE_ID_BYTES)]


def find_library() -> str | None:
    """The path (or soname) of the libnccl.so.2 to load, or None when there is none."""
    env = os.environ.get("CONVNET_NCCL")
    if env:
        return env
    try:
        import nvidia.nccl  # the wheel: a namespace package with lib/libnccl.so.2
        for base in nvidia.nccl.__path__:
            p = os.path.join(base, "lib", "libnccl.so.2")
            if os.path.exists(p):
                return p
    except ImportError:
        pass
    import ctypes.util
    return ctypes.util.find_library("nccl")


def library():
    """The loaded NCCL (ctypes.CDLL); NcclError naming where it looked when there is none."""
    global _lib
    if _lib is not None:
        return _lib
    path = find_library()
    if path is None:
        raise NcclError("NCCL not found: pip install nvidia-nccl-cu13 or set CONVNET_NCCL "
                        "to a libnccl.so.2")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise NcclError(f"NCCL: cannot load {path}: {e}") from e
    lib.ncclGetErrorString.restype = ctypes.c_char_p
    lib.ncclGetErrorString.argtypes = [ctypes.c_int]
    _lib = lib
    return lib


def _check(name: str, rc: int):
    if rc != 0:
        msg = library().ncclGetErrorString(rc).decode(errors="replace")
        raise NcclError(f"{name} failed: NCCL error {rc}: {msg}")


def available() -> bool:
    try:
        library()
        return True
    except NcclError:
        return False


def version() -> tuple:
    """(major, minor, patch) of the loaded NCCL (needs no GPU)."""
    v = ctypes.c_int()
    _check("ncclGetVersion", library().ncclGetVersion(ctypes.byref(v)))
    code = v.value  # NCCL >= 2.9: major * 10000 + minor * 100 + patch
    return (code // 10000, code // 100 % 100, code % 100)


def unique_id() -> bytes:
    """A new communicator id (rank 0 makes it; the others receive it, e.g. by MPI bcast)."""
    uid = _UniqueId()
    _check("ncclGetUniqueId", library().ncclGetUniqueId(ctypes.byref(uid)))
    return ctypes.string_at(ctypes.addressof(uid), NCCL_UNIQUE_ID_BYTES)  # all 128 bytes, NULs too


class NcclComm:
    """One NCCL communicator: `size` ranks, this one `rank`, on the current CUDA device.

    uid: the bytes of unique_id() from rank 0 (every rank passes the same). Pointers and streams
    are integers (Tensor.data_ptr, a cudaStream_t); the calls are asynchronous on that stream."""

    def __init__(self, uid: bytes, size: int, rank: int):
        if len(uid) != NCCL_UNIQUE_ID_BYTES:
            raise ValueError(f"NcclComm: the unique id has {len(uid)} bytes, NCCL's has {NCCL_UNIQUE_ID_BYTES}")
        if not 0 <= rank < size:
            raise ValueError(f"NcclComm: rank {rank} outside [0, {size})")
        self.lib = library()
        self.size, self.rank = int(size), int(rank)
        self.comm = ctypes.c_void_p()
        uid_s = _UniqueId.from_buffer_copy(uid)
        _check("ncclCommInitRank", self.lib.ncclCommInitRank(ctypes.byref(self.comm), self.size, uid_s, self.rank))

    def close(self):
        if self.comm:
            _check("ncclCommDestroy", self.lib.ncclCommDestroy(self.comm))
            self.comm = ctypes.c_void_p()

    def allreduce_sum(self, send: int, recv: int, count: int, stream: int = 0):
        _check("ncclAllReduce", self.lib.ncclAllReduce(ctypes.c_void_p(send), ctypes.c_void_p(recv),
                                                        ctypes.c_size_t(count), _FLOAT32, _SUM, self.comm,
                                                        ctypes.c_void_p(stream)))

    def allgather(self, send: int, recv: int, count: int, stream: int = 0):
        """recv (size * count floats) <- every rank's `count` floats, in rank order."""
        _check("ncclAllGather", self.lib.ncclAllGather(ctypes.c_void_p(send), ctypes.c_void_p(recv),
                                                        ctypes.c_size_t(count), _FLOAT32, self.comm,
                                                        ctypes.c_void_p(stream)))

    def broadcast(self, send: int, recv: int, count: int, root: int, stream: int = 0):
        """recv (count floats) <- root's send, on every rank (K of them in a group: an allgatherv)."""
        _check("ncclBroadcast", self.lib.ncclBroadcast(ctypes.c_void_p(send), ctypes.c_void_p(recv),
                                                        ctypes.c_size_t(count), _FLOAT32, int(root), self.comm,
                                                        ctypes.c_void_p(stream)))

    def send(self, ptr: int, count: int, peer: int, stream: int = 0):
        _check("ncclSend", self.lib.ncclSend(ctypes.c_void_p(ptr), ctypes.c_size_t(count), _FLOAT32, int(peer),
                                              self.comm, ctypes.c_void_p(stream)))

    def recv(self, ptr: int, count: int, peer: int, stream: int = 0):
        _check("ncclRecv", self.lib.ncclRecv(ctypes.c_void_p(ptr), ctypes.c_size_t(count), _FLOAT32, int(peer),
                                              self.comm, ctypes.c_void_p(stream)))

    def alltoallv(self, send: int, bounds, recv: int, stream: int = 0):
        """Floats [bounds[k], bounds[k+1]) of send go to rank k; recv row k (c = this rank's shard
        length floats each) gets rank k's piece. One ncclGroupStart/End of sends and receives."""
        c = int(bounds[self.rank + 1] - bounds[self.rank])
        _check("ncclGroupStart", self.lib.ncclGroupStart())
        try:
            for k in range(self.size):
                n = int(bounds[k + 1] - bounds[k])
                _check("ncclSend", self.lib.ncclSend(ctypes.c_void_p(send + 4 * int(bounds[k])), ctypes.c_size_t(n),
                                                      _FLOAT32, k, self.comm, ctypes.c_void_p(stream)))
                _check("ncclRecv", self.lib.ncclRecv(ctypes.c_void_p(recv + 4 * k * c), ctypes.c_size_t(c),
                                                      _FLOAT32, k, self.comm, ctypes.c_void_p(stream)))
        finally:
            _check("ncclGroupEnd", self.lib.ncclGroupEnd())


def init_comms(uids, size: int, rank: int, devices) -> list:
    """One NcclComm per device (a tower), communicator i over `size` ranks from uids[i]: created
    together in one ncclGroupStart/End with each device made current (NCCL needs that when one
    thread creates communicators on several devices)."""
    from . import _C
    if len(uids) != len(devices):
        raise ValueError(f"init_comms: {len(uids)} unique ids for {len(devices)} devices")
    lib = library()
    comms = []
    _check("ncclGroupStart", lib.ncclGroupStart())
    try:
        for uid, dev in zip(uids, devices):
            _C.set_device(dev)
            comms.append(NcclComm(uid, size, rank))
    finally:
        _check("ncclGroupEnd", lib.ncclGroupEnd())
    return comms


class group:
    """`with nccl.group():` the calls inside are one ncclGroupStart/End (they run together)."""

    def __enter__(self):
        _check("ncclGroupStart", library().ncclGroupStart())
        return self

    def __exit__(self, *exc):
        _check("ncclGroupEnd", library().ncclGroupEnd())
        return False

