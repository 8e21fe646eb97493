"""The run folder train() writes: what is in it, who may write it, and the lines printed beside it.

    runs/<model>-<time>/
        checkpoint.npz   the last epoch written (every `save_every` epochs and at the end)
        best.npz         the epoch with the lowest validation top-1 error so far
        log.jsonl        one JSON line per epoch, always agreeing with checkpoint.npz
        train.log        the lines printed (epoch lines, start and end lines)
        .lock            held while a trainer writes here (checkpoint.RunLock)

Only rank 0 of a data-parallel job writes it (distributed.TrainingRun). The file formats and the lock
are checkpoint.py's; this module decides when each file is written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from .checkpoint import (BEST_NAME, CHECKPOINT_NAME, LOG_NAME, TEXT_LOG_NAME, RunLock, clean_stale_temps,
                         save_checkpoint)

__all__ = ["RunFolder", "default_path", "holds_run", "take"]


def default_path(name: str) -> str:
    """runs/<name>-<YYYYmmdd-HHMMSS>: a new run's folder when none is given."""
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def holds_run(path) -> bool:
    """Whether `path` holds an earlier run (a checkpoint or a log, even of a run that died before its
    first checkpoint); train() refuses such a folder unless resuming it."""
    return any(os.path.exists(os.path.join(path, f)) for f in (CHECKPOINT_NAME, BEST_NAME, LOG_NAME, TEXT_LOG_NAME))


def take(path):
    """Take the folder's lock, creating the folder (RunLockedError if another trainer holds it; a
    folder the lock created and nothing filled is removed again on release); None for no folder."""
    if not path:
        return None
    return RunLock(path).acquire()


class RunFolder:
    """The writer of one run folder during training (path False or None: nothing is written, lines
    are only printed).

    Opening it removes temps left by a killed writer and rewrites log.jsonl from `history` (the epochs
    of the checkpoint being resumed), so the log never repeats an epoch the checkpoint does not have."""

    def __init__(self, path, history: list, progress: bool):
        self.path = path or None
        self.progress = progress
        self.best_err = min((h["val_top1_err"] for h in history), default=math.inf)
        self.text_log = None
        if self.path:
            clean_stale_temps(self.path)
            with open(os.path.join(self.path, LOG_NAME), "w") as f:
                f.writelines(json.dumps(h) + "\n" for h in history)
            self.text_log = open(os.path.join(self.path, TEXT_LOG_NAME), "a")

    @property
    def log_path(self) -> str | None:
        return os.path.join(self.path, LOG_NAME) if self.path else None

    def say(self, line: str, err: bool = False, always: bool = False):
        """Print `line` (stdout, or stderr when `err`) if progress is on or `always`; train.log gets every line."""
        if self.progress or always:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)
        if self.text_log:
            self.text_log.write(line + "\n")
            self.text_log.flush()

    def end_epoch(self, net, meta: dict, record: dict, write_last: bool) -> str | None:
        """After an epoch: best.npz if its validation error is the lowest yet, checkpoint.npz when
        `write_last`, then its line in log.jsonl (after the checkpoint, so a crash between the two
        repeats nothing on resume). Returns the path of checkpoint.npz if written, else None."""
        if not self.path:
            return None
        if record["val_top1_err"] < self.best_err:
            self.best_err = record["val_top1_err"]
            save_checkpoint(os.path.join(self.path, BEST_NAME), net, meta)
        written = save_checkpoint(os.path.join(self.path, CHECKPOINT_NAME), net, meta) if write_last else None
        with open(os.path.join(self.path, LOG_NAME), "a") as f:
            f.write(json.dumps(record) + "\n")
        return written

    def close(self):
        if self.text_log:
            self.text_log.close()
            self.text_log = None
