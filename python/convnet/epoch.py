"""One training epoch of train(): the SGD steps over the loader with their progress display, and the
epoch's record (the line of log.jsonl and of the history) with its printed form.

A step never reads the device back except the loss (one scalar, checked to be finite): the
statistics [loss, top-1 hits, top-5 hits] are summed on the device and read when displayed.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np

from . import _C
from ._C import ops
from .tensor import upload_batches

__all__ = ["NonFiniteLossError", "EpochPass", "train_epoch", "epoch_record", "format_epoch", "dropout_seed"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; nothing was written from the broken state."""


@dataclasses.dataclass
class EpochPass:
    """What one pass over the training set measured: sums = [loss, top-1 hits, top-5 hits] over its
    `batches` batches and `images` images (global, all ranks), `step` the global step after it."""
    sums: np.ndarray
    batches: int
    images: int
    step: int
    seconds: float


def dropout_seed(seed: int) -> int:
    """The dropout masks' Philox key of a run, derived from its seed (independent of the loader's draws)."""
    return int(np.random.SeedSequence([int(seed), 0xD0]).generate_state(1, np.uint64)[0])


CHECK_EVERY_CUDA = 16  # steps between reads of the loss on a GPU (train_epoch)


def loss_check_every(device) -> int:
    """Steps between two reads of the training loss on `device`: 1 on the CPU, CHECK_EVERY_CUDA on a GPU."""
    return 1 if str(device) == "cpu" else CHECK_EVERY_CUDA


def train_epoch(net, loader, run, hp, epoch: int, lr: float, step: int, drop_seed: int, *, progress: bool,
                say, log_every: int = 10, log_seconds: float = 60.0, last_checkpoint=None) -> EpochPass:
    """One epoch of SGD steps (run.train_step: one process or this rank of a data-parallel job).

    progress    a tqdm bar on a terminal (postfix refreshed every `log_every` batches), else a plain
                line through `say` every `log_seconds`
    Raises NonFiniteLossError naming the step, the first layer whose output is not finite and
    `last_checkpoint` (the last good one) when the loss is NaN or Inf. The loss is read back every
    step on the CPU (free) and every CHECK_EVERY_CUDA steps on a GPU (loss_check_every: a read waits
    for the step, so the host could not queue the next one meanwhile); there the error names the
    window of steps."""
    loader.set_epoch(epoch)
    acc = _C.Tensor.zeros((3,), net.cost_layer.device, "float32")
    check_every = loss_check_every(net.cost_layer.device)
    checked = step  # the steps before this one are known finite
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{hp.epochs}", unit="batch", leave=False,
                   dynamic_ncols=True)
    t0 = last_line = time.time()
    nb = images = 0
    # one process: batch k+1 is uploaded while step k computes (tensor.upload_batches); data
    # parallel: run.train_step slices the NumPy batch into its micro-batches itself
    batches = loader if run.dp is not None else upload_batches(loader, net.data_layer.device,
                                                                 net.cost_layer.num_classes, net.cost_layer.device)
    try:
        for x, y in batches:
            stats = run.train_step(net, x, y, lr, hp.momentum, hp.weight_decay, step=step, seed=drop_seed)
            ops.add_(acc, stats, 1.0)
            step, nb, images = step + 1, nb + 1, images + len(y) * run.size  # the global batch
            if nb % check_every == 0 or nb == len(loader):
                loss = float((stats if check_every == 1 else acc).numpy()[0])
                if not math.isfinite(loss):
                    layer = net.first_nonfinite_output(x, y, step=step - 1, seed=drop_seed)
                    at = f"step {step - 1}" if step - checked == 1 else f"one of steps {checked}..{step - 1}"
                    raise NonFiniteLossError(
                        f"train: the loss is {loss} at {at} (epoch {epoch + 1}, batch {nb}, lr {lr:g})"
                        + (f"; the first layer whose output is not finite: {layer}" if layer else "")
                        + f"; the last good checkpoint: {last_checkpoint or 'none written'} (nothing was saved "
                          f"from this state); try a smaller --lr")
                checked = step
            if progress and bar is None and time.time() - last_line > log_seconds:
                last_line = time.time()  # no TTY (a log file): a plain line now and then
                st = acc.numpy()
                say(f"  epoch {epoch + 1}/{hp.epochs}  batch {nb}/{len(loader)}  loss {st[0] / nb:.4f}  "
                    f"acc {100 * st[1] / images:.1f}%  {images / max(last_line - t0, 1e-9):.0f} img/s", err=True)
            if bar is not None:
                bar.update(1)
                if nb % log_every == 0 or nb == len(loader):
                    s = acc.numpy()
                    bar.set_postfix_str(f"loss {s[0] / nb:.3f} acc {100 * s[1] / images:.1f}% "
                                        f"{images / max(time.time() - t0, 1e-9):.0f} img/s", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return EpochPass(acc.numpy().astype(np.float64), nb, images, step, time.time() - t0)


def epoch_record(epoch: int, lr: float, done: EpochPass, val: dict, seconds: float) -> dict:
    """The history entry of an epoch (1-based `epoch`): its lr, training and validation loss and
    errors, images/s of the training pass, `seconds` (training and validation) and the step after it."""
    s, nb, images = done.sums, done.batches, done.images
    return {"epoch": epoch, "lr": lr, "train_loss": s[0] / nb, "train_top1_err": 1 - s[1] / images,
            "train_top5_err": 1 - s[2] / images, "val_loss": val["loss"], "val_top1_err": val["top1_err"],
            "val_top5_err": val["top5_err"], "images_per_s": images / max(done.seconds, 1e-9),
            "seconds": seconds, "step": done.step}


def format_epoch(h: dict, epochs: int) -> str:
    """The printed line of a history entry."""
    return (f"epoch {h['epoch']}/{epochs}  lr {h['lr']:.3g}  loss {h['train_loss']:.4f}  "
            f"train top-1 err {100 * h['train_top1_err']:.2f}%  val top-1 err {100 * h['val_top1_err']:.2f}%  "
            f"top-5 err {100 * h['val_top5_err']:.2f}%  {h['images_per_s']:.0f} img/s  {h['seconds']:.1f} s")
