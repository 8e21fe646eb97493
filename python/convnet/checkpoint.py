"""Checkpoints and run folders: atomic save, load, resume, the run-folder lock.

A checkpoint is a plain .npz file: "param/<layer>.<name>" and "velocity/<layer>.<name>" arrays,
"mean" (the preprocessing mean) and "meta", a JSON string with the net config (data, never a path),
hyper-parameters, epoch, step, schedule state, seed, class names, the data name (absolute path),
image_size (an image folder's resize side, else None), image_shape (of the training images) and
history. Loading never unpickles anything.

A run folder holds checkpoint.npz (the last epoch written), best.npz (the lowest validation top-1
error so far), log.jsonl (one JSON line per epoch), train.log (the text lines) and, while a trainer
runs, .lock (its pid and host). Writes go to ".<name>.tmp-<pid>" in the same folder, then
os.replace; temps left by a killed writer are removed when the next trainer takes the folder.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import zipfile

import numpy as np

from . import _C
from .net import Net

__all__ = ["CheckpointError", "RunLockedError", "save_checkpoint", "read_checkpoint", "load_checkpoint",
           "restore", "find_checkpoint", "RunLock", "clean_stale_temps", "CHECKPOINT_NAME", "BEST_NAME",
           "LOG_NAME", "TEXT_LOG_NAME"]

CHECKPOINT_NAME = "checkpoint.npz"
BEST_NAME = "best.npz"
LOG_NAME = "log.jsonl"
TEXT_LOG_NAME = "train.log"
LOCK_NAME = ".lock"
FORMAT = "convnet-checkpoint-v1"
TEMP_MARK = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt, not a convnet checkpoint, or written for another net."""


class RunLockedError(RuntimeError):
    """Another live trainer holds the run folder."""


def best_device(device):
    if device in (None, "auto"):
        return "cuda:0" if "cuda:0" in _C.devices() else "cpu"
    if device not in _C.devices():
        raise ValueError(f"device {device!r} is not available here; devices: {_C.devices()}")
    return device


def placement(config, device):
    """The `device` argument for Net(config): None (keep the layers' own devices) when the config
    pins layers to devices that all exist here (e.g. two towers on cuda:0 and cuda:1), else `device`."""
    from .net import load_config
    layers, _ = load_config(config)
    pinned = {d.get("device") for d in layers if isinstance(d, dict) and d.get("device")}
    return None if pinned and pinned <= set(_C.devices()) else device


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, net: Net, meta: dict):
    """Write net's parameters, momentum buffers, preprocessing mean and `meta` (+ the net config) to
    `path` atomically: a temp file ".<name>.tmp-<pid>" in the same folder, fsync, os.replace. A failure
    at any point leaves the previous file as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for name, p in net.named_params():
        arrays["param/" + name] = p.value.numpy()
        arrays["velocity/" + name] = p.velocity.numpy()
    if net.mean is not None:
        arrays["mean"] = np.asarray(net.mean, dtype=np.float32)
    full_meta = {"format": FORMAT, "config": net.config(), **meta}
    arrays["meta"] = np.array(json.dumps(full_meta))
    tmp = os.path.join(folder, f".{os.path.basename(path)}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def clean_stale_temps(folder) -> list:
    """Remove checkpoint temps (".*.npz.tmp-<pid>") whose writer is gone; -> the paths removed."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(os.fspath(folder)), f".*.npz{TEMP_MARK}*")):
        pid = tmp.rsplit(TEMP_MARK, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        try:
            os.remove(tmp)
            removed.append(tmp)
        except OSError:
            pass
    return removed


def find_checkpoint(path) -> str:
    """A checkpoint file, or a run folder (-> its checkpoint.npz)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    return path


def read_checkpoint(path):
    """-> (meta dict, {name: array}) of a checkpoint (a file or a run folder), fully read and checked.
    FileNotFoundError if it is missing, CheckpointError (a ValueError) naming the file if it is
    corrupt or not a checkpoint."""
    path = find_checkpoint(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads (and CRC-checks) every member
        meta = json.loads(str(arrays.pop("meta")))
    except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a convnet checkpoint "
                              f"({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"checkpoint {path} is not a convnet checkpoint (format {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"checkpoint {path}: bad meta")
    # The config is data inside the checkpoint, never a path to follow (Net() would open a string).
    if not isinstance(meta["config"], (dict, list)):
        raise CheckpointError(f"checkpoint {path}: its net config is a {type(meta['config']).__name__}, "
                              f"not a layer list")
    return meta, arrays


def restore(net: Net, arrays: dict, path, velocities=True):
    """Load a checkpoint's arrays into `net` (CheckpointError if they do not fit)."""
    state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    if velocities:
        state.update({k[len("velocity/"):] + ".velocity": v for k, v in arrays.items() if k.startswith("velocity/")})
    try:
        net.load_state(state, velocities=velocities, source=f"checkpoint {path}")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if "mean" in arrays:
        net.mean = arrays["mean"]


def net_from_meta(meta, path, device=None, devices=None, keep_pinned=True) -> Net:
    """The Net of a checkpoint's config on `devices` (a tower list), else on `device`; with
    `keep_pinned`, layers pinned to devices that exist here stay there (see placement)."""
    try:
        if devices is not None:
            return Net(meta["config"], devices=devices)
        return Net(meta["config"], device=placement(meta["config"], device) if keep_pinned else device)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its net config does not build: {e}") from e


def load_checkpoint(path, device: str | None = None) -> Net:
    """The trained Net of a checkpoint (a file or a run folder): parameters, momentum, preprocessing
    mean, on `device` (None: the devices it was saved from, if present here, else the best one). Its
    `checkpoint` attribute holds the meta (epoch, hyper-parameters, class names, history)."""
    path = find_checkpoint(path)
    meta, arrays = read_checkpoint(path)
    # An explicit device moves every layer there (a two-tower checkpoint loads onto one device).
    if device is None:
        net = net_from_meta(meta, path, best_device("auto"))
    else:
        net = net_from_meta(meta, path, best_device(device), keep_pinned=False)
    restore(net, arrays, path)
    net.checkpoint = meta
    return net


# --------------------------------------------------------------------------------------------------
# The run-folder lock

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


_HELD = set()  # the lock files held by RunLocks of this process (its own pid in them is no stale lock)


class RunLock:
    """An exclusive lock on a run folder: the file .lock holding {"pid", "host"}, created with O_EXCL
    (the folder too, if it does not exist). A lock whose holder is a dead pid on this host is stale
    and is taken over; a live holder (another process, another host, or another RunLock of this
    process: a second train() in a thread) makes `acquire` raise RunLockedError naming it. `release`
    removes the file, and the folder if acquire created it and nothing else was written there."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.held = False
        self.created = False

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        key = os.path.abspath(self.path)
        if not os.path.isdir(self.folder):
            os.makedirs(self.folder, exist_ok=True)
            self.created = True
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    with open(self.path) as f:
                        holder = json.load(f)
                    pid, host = int(holder["pid"]), str(holder["host"])
                except (OSError, ValueError, KeyError, TypeError):
                    holder, pid, host = None, None, None   # half-written or garbage: stale
                mine = pid == me["pid"] and host == me["host"]
                if holder is not None and (key in _HELD if mine else host != me["host"] or _pid_alive(pid)):
                    who = "another trainer in this process" if mine else "another trainer"
                    raise RunLockedError(f"run folder {self.folder} is in use by {who} (pid {pid} on {host}); "
                                         f"wait for it, or remove {self.path} if that process is gone") from None
                try:
                    os.remove(self.path)          # stale: its holder is dead
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            _HELD.add(key)
            return self
        raise RunLockedError(f"could not take the lock {self.path}")

    def release(self):
        if self.held:
            self.held = False
            _HELD.discard(os.path.abspath(self.path))
            try:
                os.remove(self.path)
                if self.created:
                    os.rmdir(self.folder)  # only if empty: a run that failed before writing anything
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
