"""train(): resolve a run (new or resumed: its hyper-parameters, data, net and folder), then loop over
its epochs. The pieces live in their own modules: hparams.py (the hyper-parameter record, its
defaults and the LR schedule), epoch.py (one training epoch, its record and line), run_folder.py (what
the run folder holds and when each file is written), checkpoint.py (atomic save, load, resume, the
lock), evaluate.py, plots.py, models.build_model, data.open_data (data names), distributed.TrainingRun
(the data-parallel hooks).

    >>> import convnet
    >>> result = convnet.train()                  # the small default net on the built-in data
    >>> result.history[-1]["val_top1_err"]
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np

from . import run_folder
from .checkpoint import (CheckpointError, best_device, find_checkpoint, load_checkpoint, net_from_meta,
                         read_checkpoint, restore, save_checkpoint)
from .data import open_data
from .epoch import NonFiniteLossError, dropout_seed, epoch_record, format_epoch, train_epoch
from .evaluate import check_fit, evaluate
from .hparams import DEFAULT_EPOCHS, HParams, Schedule
from .net import Net
from .run_folder import RunFolder

__all__ = ["train", "evaluate", "TrainResult", "Schedule", "save_checkpoint", "load_checkpoint",
           "read_checkpoint", "open_data", "CheckpointError", "NonFiniteLossError", "DEFAULT_EPOCHS"]


@dataclasses.dataclass
class TrainResult:
    """What train() returns: the trained net, one dict per epoch (epoch, lr, train_loss,
    train_top1_err, train_top5_err, val_loss, val_top1_err, val_top5_err, images_per_s, seconds),
    the output folder and the last checkpoint written."""
    net: Net
    history: list
    out_dir: str | None = None
    checkpoint: str | None = None
    seconds: float = 0.0
    rank: int = 0  # data parallel: this process's rank (rank 0 wrote the run folder)

    @property
    def test_accuracy(self) -> float:
        """Top-1 accuracy (centre crop) on the test split after the last epoch."""
        return 1.0 - self.history[-1]["val_top1_err"] if self.history else float("nan")


def train(model=None, data=None, epochs: int | None = None, batch_size: int | None = None,
          lr: float | None = None, momentum: float | None = None, weight_decay: float | None = None,
          device: str = "auto", seed: int | None = None, schedule: str | None = None, lr_steps=None,
          patience: int | None = None, out_dir=None, resume=None, workers: int = 2, progress: bool = True,
          plot: bool = False, lighting: float | None = None, eval_views: int | None = None, log_every: int = 10,
          log_seconds: float = 60.0, save_every: int | None = None, devices=None, input_size: int | None = None,
          num_classes: int | None = None, image_size: int | None = None, distributed="auto",
          micro_batch: int | None = None, reduction: str | None = None, precision: str | None = None) -> TrainResult:
    """Train a net with SGD; returns a TrainResult (the net and its per-epoch history).

    model       None (the small default net for <= 64 px images, else AlexNet 2012), a name ("default",
                "2012", "owt"), a Net, a layer-config list or a config file path (models.build_model)
    data        None/"builtin", "cifar10:<path>", "cifar100:<path>", "imagenet:<path>" or (train, test)
                (data.open_data); image_size: the side image folders are resized to (default 256 for
                the AlexNets, input x 8/7 for smaller nets: data.folder_image_size)
    epochs, batch_size, lr, momentum, weight_decay, seed, schedule, lr_steps, patience, lighting,
    eval_views, save_every, precision   see hparams.HParams (None: from the checkpoint when resuming,
                else the default there; lr defaults to 0.01 x batch_size / 128); so are micro_batch, reduction
    device      "auto" (cuda:0 if present, else cpu), "cpu", "cuda:1", ...; devices: one per tower
    input_size, num_classes   of a named model (default: from the data)
    out_dir     the run folder (checkpoint.npz = last, best.npz, log.jsonl, train.log, plots); default
                runs/<model>-<time>; False writes nothing. An existing run is refused unless `resume`.
    resume      a checkpoint, a run folder, or True for out_dir: continue from its epoch with its net,
                parameters, momentum, schedule and RNG state; bit-exact with an uninterrupted run
    progress    a tqdm bar per epoch on a terminal; epoch lines go to stdout (and train.log)
    plot        write curves.png and conv1_filters.png (needs matplotlib; checked before training)
    distributed "auto" (default): data parallel over the ranks when launched by `mpiexec -n K` (batch_size
                is then the global batch, micro_batch fixes the result for any K; rank 0 writes the run
                folder), else one process; "mpi": MPI even for one rank; False: one process. See
                convnet.distributed.
    """
    from .distributed import TrainingRun
    t_start = time.time()
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                 seed=seed, schedule=schedule, lr_steps=list(lr_steps) if lr_steps is not None else None,
                 patience=patience, lighting=lighting, eval_views=eval_views, save_every=save_every,
                 micro_batch=micro_batch, reduction=reduction, precision=precision)
    given = {k: v for k, v in given.items() if v is not None}
    HParams(**given).validate()  # bad values fail before any data is read
    run = TrainingRun(distributed)  # one process, or this rank of a data-parallel job
    locks = []
    try:  # from here every exit closes the run (its watchdog) and releases the run-folder lock
        if plot:
            from .plots import require_matplotlib
            require_matplotlib()
        ckpt_path = None
        if resume:
            if resume is True and out_dir in (None, False):
                raise ValueError("resume=True needs out_dir (where checkpoint.npz is)")
            ckpt_path = find_checkpoint(out_dir if resume is True else resume)
            if out_dir is None:
                out_dir = os.path.dirname(os.path.abspath(ckpt_path))
        # The run folder is locked before anything is read or written: a second trainer on it is refused
        # at once, naming the holder. The default folder (out_dir None) is named after the net: locked then.
        if out_dir:
            locks.append(run.on_root(run_folder.take, out_dir))
        return _train(run, locks, model, data, out_dir, resume, ckpt_path, given, devices, device, workers,
                      progress, plot, log_every, log_seconds, t_start, input_size, num_classes, image_size)
    finally:
        run.close()
        for lock in locks:
            if lock:
                lock.release()


def _train(run, locks, model, data, out_dir, resume, ckpt_path, given, devices, device, workers, progress,
           plot, log_every, log_seconds, t_start, input_size, num_classes, image_size):
    """The rest of train(), with its run folder locked (`locks`: release them all when done)."""
    from .data import BatchLoader
    from .models import build_model, input_side
    meta_in, arrays = None, None
    if resume:
        meta_in, arrays = run.read_checkpoint(ckpt_path)  # data parallel: rank 0 reads, broadcasts
        if model is None and (input_size or num_classes):
            raise ValueError(f"input_size/num_classes: resuming {ckpt_path} keeps its net; start a new run "
                             f"to change them")
    elif out_dir and run.on_root(run_folder.holds_run, out_dir, share=True):
        raise ValueError(f"out_dir {out_dir} holds an earlier run: resume it (--resume {out_dir}) or "
                         f"choose another folder")
    hp_in = dict((meta_in or {}).get("hparams", {}))
    if meta_in and hp_in.get("epochs") != given.get("epochs", hp_in.get("epochs")):
        hp_in.pop("lr_steps", None)  # a new length: the default steps of the new length
    if meta_in and "lr" not in given and "batch_size" in given and given["batch_size"] != hp_in.get("batch_size"):
        hp_in.pop("lr", None)        # a new batch: the lr of the new batch
    hp = HParams.from_dict({**hp_in, **given})

    if data is None and meta_in and isinstance(meta_in.get("data"), str):
        data = meta_in["data"]
        image_size = image_size or meta_in.get("image_size")
    arch = meta_in["config"] if meta_in and model is None else model  # what the net is built from
    train_ds, test_ds, data_name = open_data(data, input_side(arch, input_size), image_size)
    side = input_side(arch, input_size, train_ds.image_shape)
    if side:  # before building a big net
        check_fit(None, train_ds, "train", (side, side, train_ds.image_shape[2]))
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if devices is not None:
        devices = [best_device(d) for d in devices]
        device = devices[0]
    device = best_device(run.pick_device(device))  # data parallel: one GPU per rank of a machine
    classes = num_classes or train_ds.num_classes
    if meta_in is not None:
        net = net_from_meta(meta_in, ckpt_path, device, devices)
        if model is not None:
            mine = build_model(model, classes, train_ds.image_shape, device, hp.seed, devices, input_size)
            if mine.config()["layers"] != net.config()["layers"]:
                raise CheckpointError(f"checkpoint {ckpt_path} was written for a different net than model={model!r}")
            net = mine
        restore(net, arrays, ckpt_path)
    else:
        net = build_model(model, classes, train_ds.image_shape, device, hp.seed, devices, input_size)
    check_fit(net, train_ds, "train")
    check_fit(net, test_ds, "train (test split)")
    H, W, _ = net.input_shape
    if H != W:
        raise ValueError(f"train: the loader makes square crops; the net's input is {H}x{W}")
    hp = hp.resolved(big_net=max(H, W) > 64)
    net.precision = hp.precision  # the GEMMs' arithmetic; parameters and checkpoints stay fp32
    sched_state = meta_in.get("schedule") if meta_in and hp.lr == hp_in.get("lr") else None
    sched = Schedule(hp.schedule, hp.lr, hp.lr_steps, hp.patience, state=sched_state)

    if net.mean is None:
        net.mean = np.asarray(train_ds.mean, dtype=np.float32)
    crop = H if (H, W) != tuple(train_ds.image_shape[:2]) else None
    if crop and 2 * crop < min(train_ds.image_shape[:2]):  # e.g. 28x28 corners of 256x256 photos
        warnings.warn(f"train: random {crop}x{crop} crops of {train_ds.image_shape[0]}x{train_ds.image_shape[1]} "
                      f"images see a small part of each; give --image-size (image folders) or --input-size",
                      RuntimeWarning, stacklevel=2)
    run.attach(net, hp)  # data parallel: rank 0's replica everywhere, the batch split checked
    loader = BatchLoader(train_ds, hp.batch_size, train=True, crop=crop, flip=True, lighting=hp.lighting,
                         seed=hp.seed, workers=workers, scale=net.input_scale, shard=run.shard)
    if len(loader) == 0:
        raise ValueError(f"train: {len(train_ds)} training images make no batch of {hp.batch_size}")
    out_dir = run.local_out_dir(out_dir)
    if out_dir is not False:
        out_dir = out_dir or run_folder.default_path(net.meta.get("name", "net"))
    if not locks:
        locks.append(run.on_root(run_folder.take, out_dir))
    with run.guard(collective=(NonFiniteLossError,)):  # a rank's own error ends the whole job
        return _loop(net, hp, sched, loader, test_ds, out_dir, meta_in, ckpt_path, data_name, train_ds,
                     device, workers, progress and run.is_root, plot, log_every, log_seconds, t_start, run)


def _loop(net, hp, sched, loader, test_ds, out_dir, meta_in, ckpt_path, data_name, train_ds, device,
          workers, progress, plot, log_every, log_seconds, t_start, run):
    start_epoch = int((meta_in or {}).get("epoch", 0))
    history = [h for h in (meta_in or {}).get("history", []) if h["epoch"] <= start_epoch]
    step = int((meta_in or {}).get("step", 0))
    drop_seed = dropout_seed(hp.seed)
    folder = RunFolder(out_dir, history, progress)
    try:
        where = f", writing to {out_dir}" if out_dir else ""
        if meta_in and start_epoch >= hp.epochs:
            folder.say(f"convnet: {ckpt_path} is a finished run ({start_epoch}/{hp.epochs} epochs): nothing to "
                       f"train; give more epochs (--epochs) to continue it", err=True, always=True)
        else:
            what = f"resuming {ckpt_path} at epoch {start_epoch + 1}" if meta_in else "training"
            folder.say(f"convnet: {what}: {net.meta.get('name', 'net')} ({net.num_params:,} params) on {device}, "
                       f"{len(train_ds)} train / {len(test_ds)} test images, {hp.epochs} epochs of {len(loader)} "
                       f"batches of {hp.batch_size}, lr {hp.lr:g}{run.describe()}{where}", err=True)
        last_ckpt = ckpt_path if meta_in else None
        for epoch in range(start_epoch, hp.epochs):
            cur_lr = sched.lr_for(epoch)
            t0 = time.time()
            done = train_epoch(net, loader, run, hp, epoch, cur_lr, step, drop_seed, progress=progress,
                               say=folder.say, log_every=log_every, log_seconds=log_seconds,
                               last_checkpoint=last_ckpt)
            step = done.step
            val = run.evaluate(net, test_ds, views=hp.eval_views, batch_size=hp.batch_size, workers=workers,
                               progress=progress)
            sched.end_epoch(val["top1_err"])
            rec = epoch_record(epoch + 1, cur_lr, done, val, time.time() - t0)
            history.append(rec)
            folder.say(format_epoch(rec, hp.epochs))
            meta = {"epoch": epoch + 1, "step": step, "hparams": hp.to_dict(), "schedule": sched.state(),
                    "history": history, "data": data_name, "class_names": list(train_ds.class_names),
                    "image_size": getattr(train_ds, "size", None), "image_shape": list(train_ds.image_shape),
                    "loader": {"seed": hp.seed, "next_epoch": epoch + 1}, "dropout_seed": str(drop_seed),
                    "device": device}
            last_ckpt = folder.end_epoch(net, meta, rec, write_last=(epoch + 1) % hp.save_every == 0
                                         or epoch + 1 == hp.epochs) or last_ckpt
        if plot and out_dir and history:
            from .plots import plot_curves, plot_filters
            plot_curves(history, os.path.join(out_dir, "curves.png"))
            plot_filters(net, os.path.join(out_dir, "conv1_filters.png"))
        seconds = time.time() - t_start
        skipped = dict(getattr(train_ds, "skipped", []))  # path -> reason (an image folder's scan and decodes)
        skipped.update({p: "unreadable" for p in loader.skipped if p not in skipped})
        if skipped:
            listed = "; ".join(f"{p} ({why})" for p, why in list(skipped.items())[:10])
            folder.say(f"convnet: skipped {len(skipped)} bad training files: {listed}"
                       + ("; ..." if len(skipped) > 10 else ""), err=True)
        if out_dir:
            folder.say(f"convnet: done in {seconds:.1f} s; checkpoint {last_ckpt}, log {folder.log_path}", err=True)
    finally:
        folder.close()
    return TrainResult(net=net, history=history, out_dir=out_dir, checkpoint=last_ckpt, seconds=seconds,
                       rank=run.rank)
