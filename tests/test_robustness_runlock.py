"""Issue 12, run folders: train() locks its run folder before it reads data or a checkpoint, so a
second trainer on the folder is refused at once (RunLockedError naming the holder's pid and host),
before its data is opened; the lock is released on every way out of train()."""
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import convnet
from convnet.checkpoint import LOCK_NAME, RunLock, RunLockedError
from convnet.data import ArrayDataset

T = sys.modules["convnet.train"]  # the module (convnet.train is also the function)

MODEL = [{"name": "data", "type": "data", "shape": [8, 8, 3]},
         {"name": "fc", "type": "fc", "inputs": ["data"], "outputs": 4},
         {"name": "loss", "type": "softmax", "inputs": ["fc"]}]


def tiny_data(seed=0):
    rng = np.random.default_rng(seed)

    def split(n, stats_from=None):
        return ArrayDataset(rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8), (np.arange(n) % 4).astype(np.int32),
                            list("abcd"), stats_from=stats_from)
    train = split(32)
    return train, split(8, train)


def run(out, **kw):
    kw = {"model": MODEL, "data": tiny_data(), "epochs": 1, "batch_size": 16, "workers": 0, "progress": False,
          "out_dir": out, **kw}
    return convnet.train(**kw)


class DataRecorder:
    """Stands in for train.open_data: records each call; `block` makes the first call wait."""

    def __init__(self, block=False):
        self.calls = 0
        self.entered, self.go = threading.Event(), threading.Event()
        self.block = block
        self.real = T.open_data

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.block and self.calls == 1:
            self.entered.set()
            assert self.go.wait(60)
        return self.real(*args, **kwargs)


def test_second_train_on_one_folder_is_refused_before_its_data_is_opened(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    data = DataRecorder(block=True)
    monkeypatch.setattr(T, "open_data", data)
    first = {}
    thread = threading.Thread(target=lambda: first.setdefault("result", run(out)))
    thread.start()
    try:
        assert data.entered.wait(60)            # the first trainer holds the folder, loading its data
        with open(os.path.join(out, LOCK_NAME)) as f:
            assert json.load(f) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            run(out)
        assert data.calls == 1                  # the second never opened its data
        with pytest.raises(RunLockedError, match="in use by another trainer"):
            run(out, resume=out)                # nor read a checkpoint
        assert data.calls == 1
    finally:
        data.go.set()
        thread.join(120)
    assert first["result"].history and sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "log.jsonl",
                                                                     "train.log"]
    run(out, resume=out, epochs=2)              # released: the folder is free again


def test_trainer_in_another_process_is_named(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    tests = os.path.dirname(os.path.abspath(__file__))
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {tests!r})
import test_robustness_runlock as M
T = M.T
def open_data(*a, **k):
    print("HOLDING", flush=True)
    time.sleep(60)
T.open_data = open_data
M.run({out!r})
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLDING", holder.stderr.read() if holder.poll() else ""
        data = DataRecorder()
        monkeypatch.setattr(T, "open_data", data)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on {socket.gethostname()}"):
            run(out)
        assert data.calls == 0
        assert sorted(os.listdir(out)) == [LOCK_NAME]   # nothing written by the second
    finally:
        holder.kill()
        holder.wait()
    data = DataRecorder()
    monkeypatch.setattr(T, "open_data", data)
    run(out)                                    # the killed holder's lock is stale: taken over
    assert data.calls == 1 and LOCK_NAME not in os.listdir(out)


class Boom(Exception):
    pass


def raise_in_data(*args, **kwargs):
    raise Boom("the data could not be read")


@pytest.mark.parametrize("how", ["data error", "interrupt", "bad model", "earlier run", "missing checkpoint",
                                 "nan loss"])
def test_lock_is_released_on_every_exit(tmp_path, monkeypatch, how):
    out = str(tmp_path / "run")
    if how == "earlier run":
        run(out)
        before = sorted(os.listdir(out))
    if how == "data error":
        monkeypatch.setattr(T, "open_data", raise_in_data)
        with pytest.raises(Boom):
            run(out)
    elif how == "interrupt":
        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(T, "open_data", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(out)
    elif how == "bad model":
        with pytest.raises(ValueError, match="unknown type"):
            run(out, model=[{"name": "data", "type": "data", "shape": [8, 8, 3]}, {"name": "x", "type": "zzz"}])
    elif how == "earlier run":
        with pytest.raises(ValueError, match="holds an earlier run"):
            run(out)
        assert sorted(os.listdir(out)) == before
    elif how == "missing checkpoint":
        with pytest.raises(FileNotFoundError):
            run(None, resume=os.path.join(out, "checkpoint.npz"))
    elif how == "nan loss":
        deep = [MODEL[0], {"name": "fc1", "type": "fc", "inputs": ["data"], "outputs": 16, "relu": True},
                {**MODEL[1], "inputs": ["fc1"]}, MODEL[2]]
        with pytest.raises(T.NonFiniteLossError):
            run(out, model=deep, lr=1e30, epochs=3)
    if how in ("data error", "interrupt", "bad model", "missing checkpoint"):
        assert not os.path.exists(out)          # the folder the lock made, empty, is gone again
    else:
        assert LOCK_NAME not in os.listdir(out)
    monkeypatch.undo()
    data = DataRecorder()
    monkeypatch.setattr(T, "open_data", data)
    if how == "earlier run":
        run(out, resume=out, epochs=2)      # the next trainer gets the folder
    elif how == "nan loss":
        RunLock(out).acquire().release()
    else:
        run(out)
    assert data.calls == (0 if how == "nan loss" else 1)


def test_lock_of_this_process_not_held_is_stale(tmp_path):
    """A .lock naming this pid that no RunLock of this process holds (left by a fork, a reused pid)
    is taken over; one a RunLock here holds is not."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    lock = RunLock(folder).acquire()
    with pytest.raises(RunLockedError, match="another trainer in this process"):
        RunLock(folder).acquire()
    lock.release()
    assert not (folder / LOCK_NAME).exists() and folder.exists()  # not made by the lock: kept
    (folder / LOCK_NAME).write_text("{half")                       # garbage: stale
    RunLock(folder).acquire().release()
