"""train(), evaluate(), the learning-rate schedules, checkpoints and progress.

    >>> import convnet
    >>> result = convnet.train()                  # the small default net on the built-in data
    >>> result.history[-1]["val_top1_err"]
    >>> convnet.evaluate(result.net, "builtin", views=10)

Defaults follow the paper: SGD with momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by
10 at the `lr_steps` epochs (schedule="step") or when the validation error stops improving
(schedule="plateau", the paper's rule). A step never reads the device back: the statistics
[loss, top-1 hits, top-5 hits] are summed on the device and read when logged.

Checkpoints (`<out_dir>/checkpoint.npz`, rewritten atomically every epoch) are plain .npz files:
"param/<layer>.<name>" and "velocity/<layer>.<name>" arrays, "mean" (the preprocessing mean) and
"meta", a JSON string with the net config, hyper-parameters, epoch, step, schedule state, seed, data
name and history. Loading never unpickles anything.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import sys
import time
import zipfile

import numpy as np

from . import _C
from ._C import ops
from .net import Net, softmax

__all__ = ["train", "evaluate", "TrainResult", "save_checkpoint", "load_checkpoint", "read_checkpoint",
           "resolve_data", "CheckpointError", "DEFAULT_EPOCHS"]

CHECKPOINT_NAME = "checkpoint.npz"
LOG_NAME = "log.jsonl"
FORMAT = "convnet-checkpoint-v1"
DEFAULT_EPOCHS = 10             # the small default net on the built-in data (measured: see docs)
DEFAULT_EPOCHS_ALEXNET = 90     # the paper: ~90 epochs of ImageNet
PAPER = {"batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt, not a convnet checkpoint, or written for another net."""


# --------------------------------------------------------------------------------------------------
# Data

def resolve_data(data, seed: int = 0):
    """(train, test) splits and a name for: None or "builtin", "cifar10:<path>", "cifar100:<path>",
    "imagenet:<path>", or a (train, test) pair of datasets (convnet.data.Dataset)."""
    from . import data as datamod
    if data is None:
        data = "builtin"
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], None
    if not isinstance(data, str):
        raise ValueError(f"data: want a name like 'builtin', 'cifar10:<path>' or a (train, test) pair, got {data!r}")
    kind, _, path = data.partition(":")
    kind = kind.lower()
    if kind == "builtin":
        train, test = datamod.builtin(int(path) if path else 0)
        return train, test, data
    if kind in ("cifar10", "cifar100", "imagenet"):
        if not path:
            raise ValueError(f"data {data!r}: give the folder, e.g. '{kind}:/data/{kind}'")
        full = os.path.expanduser(path)
        if not os.path.exists(full):
            raise FileNotFoundError(f"data folder not found: {full} (from data={data!r})")
        if kind == "cifar10":
            train, test = datamod.cifar10(full)
        elif kind == "cifar100":
            train, test = datamod.cifar100(full)
        else:
            train, test = datamod.imagenet_folder(full)
        return train, test, data
    raise ValueError(f"unknown data {data!r}; known: 'builtin', 'cifar10:<path>', 'cifar100:<path>', "
                     f"'imagenet:<path>', or a (train, test) pair of datasets")


def _check_fit(net: Net, ds, what: str):
    H, W, C = net.input_shape
    h, w, c = tuple(ds.image_shape)
    if h < H or w < W or c != C:
        raise ValueError(f"{what}: the model takes images of {H}x{W}x{C} (N, H, W, C) = (N, {H}, {W}, {C}) "
                         f"but the data set's images are {h}x{w}x{c} {tuple(ds.image_shape)}: use a model "
                         f"with input_size <= {min(h, w)} or larger images")
    if ds.num_classes > net.num_classes:
        raise ValueError(f"{what}: the data set has {ds.num_classes} classes, the model only {net.num_classes}")


def _best_device(device):
    if device in (None, "auto"):
        return "cuda:0" if "cuda:0" in _C.devices() else "cpu"
    if device not in _C.devices():
        raise ValueError(f"device {device!r} is not available here; devices: {_C.devices()}")
    return device


def _placement(config, device):
    """The `device` argument for Net(config): None (keep the layers' own devices) when the config
    pins layers to devices that all exist here (e.g. two towers on cuda:0 and cuda:1), else `device`."""
    from .net import load_config
    layers, _ = load_config(config)
    pinned = {d.get("device") for d in layers if isinstance(d, dict) and d.get("device")}
    return None if pinned and pinned <= set(_C.devices()) else device


MODEL_NAMES_2012 = ("2012", "alexnet", "alexnet-2012", "alexnet2012", "paper")


def _build_model(model, train_ds, device, seed, devices=None):
    from .models import get_model
    if isinstance(model, Net):
        return model
    if devices is not None:  # one device per tower (model parallelism)
        if model is None or (isinstance(model, str) and model.lower() in MODEL_NAMES_2012):
            return get_model("2012", num_classes=train_ds.num_classes, devices=devices, seed=seed)
        if isinstance(model, str) and not os.path.exists(model):
            raise ValueError(f"devices={list(devices)!r}: model {model!r} has no towers; use '2012' or a config with towers")
        return Net(model, devices=devices, seed=seed)
    if model is None:
        model = "default" if max(train_ds.image_shape[:2]) <= 64 else "2012"
    if isinstance(model, str) and not os.path.exists(model):
        size = None
        if model.lower() in ("default", "small"):
            size = min(28, *train_ds.image_shape[:2])
        return get_model(model, num_classes=train_ds.num_classes, input_size=size, device=device, seed=seed)
    return Net(model, device=_placement(model, device), seed=seed)  # a config (list of dicts) or a file


# --------------------------------------------------------------------------------------------------
# Evaluation

def _prefetch_map(fn, items, workers):
    """fn over items, in order, `workers` threads, a few items ahead (bounded memory)."""
    if workers <= 0:
        for it in items:
            yield fn(it)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        it = iter(items)
        for _ in range(workers + 2):
            try:
                pending.append(pool.submit(fn, next(it)))
            except StopIteration:
                break
        while pending:
            out = pending.popleft().result()
            try:
                pending.append(pool.submit(fn, next(it)))
            except StopIteration:
                pass
            yield out


def _views(images, mean, size, views, scale):
    """uint8 (n, H, W, 3) -> float32 (views, n, size, size, 3), preprocessed like the loader."""
    from .data import augment
    mean = np.asarray(mean, dtype=np.float32)
    if views == 1:
        crops = augment.center_crop(images, size)[None]
        means = augment.center_crop(mean, size)[None] if mean.ndim == 3 else mean[None]
    else:
        crops = augment.ten_views(images, size)
        means = augment.ten_views(mean[None], size)[:, 0] if mean.ndim == 3 else np.broadcast_to(mean, (10, 3))
    out = np.empty(crops.shape, dtype=np.float32)
    for v in range(len(crops)):
        m = means[v] if means.ndim == 4 else means[v]
        out[v] = augment.normalize(crops[v], m, scale)
    return out


def _errors(probs, labels):
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    p_label = probs[np.arange(n), labels][:, None]
    rank = (probs > p_label).sum(axis=1)
    loss = -np.log(np.maximum(p_label[:, 0], 1e-30))
    return loss.sum(), int((rank < 1).sum()), int((rank < 5).sum())


def evaluate(net: Net, data=None, views: int = 1, batch_size: int = 128, workers: int = 2,
             limit: int | None = None) -> dict:
    """Top-1 and top-5 error of `net` on a split: the centre crop (views=1) or the paper's 10 views
    (views=10: 4 corners + centre and their mirror images, softmax averaged).

    data: a Dataset split, a (train, test) pair or a data name (the test split is used). Images are
    preprocessed like the test loader: crop of the net's input size, minus the training mean
    (`net.mean` if set, else the split's), times net.input_scale.
    Returns {"top1_err", "top5_err", "loss", "top1_acc", "n", "views"}.
    """
    if views not in (1, 10):
        raise ValueError(f"evaluate: views must be 1 or 10, got {views}")
    if data is None or isinstance(data, (str, tuple, list)):
        _, ds, _ = resolve_data(data)
    else:
        ds = data
    _check_fit(net, ds, "evaluate")
    size = net.input_shape[0]
    mean = net.mean if net.mean is not None else ds.mean
    n = len(ds) if limit is None else min(limit, len(ds))
    chunks = [np.arange(k, min(k + batch_size, n)) for k in range(0, n, batch_size)]

    def prepare(idx):
        images, labels = ds.get_batch(idx)
        return _views(images, mean, size, views, net.input_scale), labels

    loss = top1 = top5 = 0.0
    for x, labels in _prefetch_map(prepare, chunks, workers):
        probs = 0.0
        for v in range(views):
            probs = probs + softmax(net.forward(x[v]).numpy())
        l, h1, h5 = _errors(probs / views, labels)
        loss, top1, top5 = loss + l, top1 + h1, top5 + h5
    n = max(n, 1)
    return {"top1_err": 1.0 - top1 / n, "top5_err": 1.0 - top5 / n, "loss": loss / n,
            "top1_acc": top1 / n, "n": n, "views": views}


# --------------------------------------------------------------------------------------------------
# Checkpoints

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
    `path` atomically: a temp file in the same folder, fsync, os.replace. A failure at any point leaves
    the previous file as it was."""
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
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
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


def read_checkpoint(path):
    """-> (meta dict, {name: array}) of a checkpoint, fully read and checked. FileNotFoundError if it
    is missing, CheckpointError (a ValueError) naming the file if it is corrupt or not a checkpoint."""
    path = os.fspath(path)
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
    return meta, arrays


def _restore(net: Net, arrays: dict, path, velocities=True):
    state = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    if velocities:
        state.update({k[len("velocity/"):] + ".velocity": v for k, v in arrays.items() if k.startswith("velocity/")})
    try:
        net.load_state(state, velocities=velocities, source=f"checkpoint {path}")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if "mean" in arrays:
        net.mean = arrays["mean"]


def load_checkpoint(path, device: str | None = None) -> Net:
    """The trained Net of a checkpoint (parameters, momentum, preprocessing mean), on `device`
    (None: the devices it was saved from, if present here, else the best one). Its `checkpoint`
    attribute holds the meta (epoch, hyper-parameters, history)."""
    meta, arrays = read_checkpoint(path)
    if device is None:
        device = _placement(meta["config"], _best_device("auto"))
    try:
        net = Net(meta["config"], device=device)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: its net config does not build: {e}") from e
    _restore(net, arrays, path)
    net.checkpoint = meta
    return net


# --------------------------------------------------------------------------------------------------
# Schedules

class Schedule:
    """step: lr = base * 0.1^(number of lr_steps <= epoch). plateau: divide by 10 when the validation
    top-1 error has not improved (by more than `min_delta`) for `patience` epochs."""

    def __init__(self, kind, base_lr, lr_steps=(), patience=3, min_delta=1e-3, state=None):
        if kind not in ("step", "plateau"):
            raise ValueError(f"schedule must be 'step' or 'plateau', got {kind!r}")
        self.kind, self.base_lr = kind, float(base_lr)
        self.lr_steps = sorted(int(s) for s in (lr_steps or ()))
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.lr, self.best, self.bad = self.base_lr, math.inf, 0
        if state:
            self.lr, self.best, self.bad = float(state["lr"]), float(state["best"]), int(state["bad"])

    def lr_for(self, epoch: int) -> float:
        if self.kind == "step":
            return self.base_lr * 0.1 ** sum(1 for s in self.lr_steps if s <= epoch)
        return self.lr

    def end_epoch(self, val_err: float):
        if self.kind != "plateau":
            return
        if val_err < self.best - self.min_delta:
            self.best, self.bad = val_err, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.lr, self.bad = self.lr / 10.0, 0

    def state(self) -> dict:
        return {"kind": self.kind, "lr": self.lr, "best": self.best if math.isfinite(self.best) else 1e9,
                "bad": self.bad, "base_lr": self.base_lr, "lr_steps": self.lr_steps, "patience": self.patience}


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib is optional: pip install convnet[plot])

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot=True needs matplotlib, an optional extra: pip install 'convnet[plot]' "
                          "(or pip install matplotlib)") from e
    return plt


def plot_curves(history, path):
    """Training/validation top-1 error and training loss per epoch -> PNG at `path`."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [100 * h["train_top1_err"] for h in history], label="train top-1")
    a.plot(ep, [100 * h["val_top1_err"] for h in history], label="val top-1")
    a.plot(ep, [100 * h["val_top5_err"] for h in history], label="val top-5", linestyle="--")
    a.set_xlabel("epoch"), a.set_ylabel("error (%)"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [h["train_loss"] for h in history], label="train loss")
    b.plot(ep, [h["val_loss"] for h in history], label="val loss")
    b.set_xlabel("epoch"), b.set_ylabel("cross-entropy"), b.set_yscale("log"), b.legend(), b.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator
    for axis in (a, b):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def filter_grid(weights: np.ndarray, pad: int = 1) -> np.ndarray:
    """First-layer filters (K, R, S, 3) -> an RGB image grid, each filter scaled to [0, 1] (the paper's
    Figure 3)."""
    K, R, S, C = weights.shape
    cols = int(math.ceil(math.sqrt(K)))
    rows = int(math.ceil(K / cols))
    grid = np.ones((rows * (R + pad) + pad, cols * (S + pad) + pad, C), dtype=np.float32)
    for k in range(K):
        w = weights[k].astype(np.float32)
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
        r, c = divmod(k, cols)
        grid[pad + r * (R + pad):pad + r * (R + pad) + R, pad + c * (S + pad):pad + c * (S + pad) + S] = w
    return grid


def plot_filters(net: Net, path):
    """The first conv layer's filters as a grid PNG (for two towers, both towers' filters)."""
    plt = _pyplot()
    convs = [l for l in net.layers if l.type == "conv" and net.data_layer.name in l.inputs]
    if not convs:
        return None
    w = np.concatenate([l.weights[0].value.numpy() for l in convs])
    if w.shape[-1] != 3:
        return None
    grid = filter_grid(w)
    fig = plt.figure(figsize=(max(4, grid.shape[1] / 12), max(4, grid.shape[0] / 12)))
    plt.imshow(grid, interpolation="nearest")
    plt.axis("off")
    plt.title(f"{', '.join(l.name for l in convs)} filters ({len(w)})")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Training

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

    @property
    def test_accuracy(self) -> float:
        """Top-1 accuracy (centre crop) on the test split after the last epoch."""
        return 1.0 - self.history[-1]["val_top1_err"] if self.history else float("nan")


def _dropout_seed(seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0xD0]).generate_state(1, np.uint64)[0])


def _out_dir(out_dir, net):
    if out_dir is False:
        return None
    if out_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = os.path.join("runs", f"{net.meta.get('name', 'net')}-{stamp}")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def _fmt_epoch(h, epochs):
    return (f"epoch {h['epoch']}/{epochs}  lr {h['lr']:.3g}  loss {h['train_loss']:.4f}  "
            f"train top-1 err {100 * h['train_top1_err']:.2f}%  val top-1 err {100 * h['val_top1_err']:.2f}%  "
            f"top-5 err {100 * h['val_top5_err']:.2f}%  {h['images_per_s']:.0f} img/s  {h['seconds']:.1f} s")


def train(model=None, data=None, epochs: int | None = None, batch_size: int | None = None,
          lr: float | None = None, momentum: float | None = None, weight_decay: float | None = None,
          device: str = "auto", seed: int | None = None, schedule: str | None = None, lr_steps=None,
          patience: int = 3, out_dir=None, resume=None, workers: int = 2, progress: bool = True,
          plot: bool = False, lighting: float = 0.1, eval_views: int = 1, log_every: int = 10,
          log_seconds: float = 60.0, checkpoint_every: int = 1, devices=None) -> TrainResult:
    """Train a net with SGD; returns a TrainResult (the net and its per-epoch history).

    model         None (the small default net for <= 64 px images, else AlexNet 2012), a name
                  ("default", "2012", "owt"), a Net, a layer-config list or a config file path
    data          None/"builtin", "cifar10:<path>", "cifar100:<path>", "imagenet:<path>" or (train, test)
    epochs        default: 10 for the default net, 90 for AlexNet
    batch_size, lr, momentum, weight_decay   the paper's 128, 0.01, 0.9, 5e-4
    device        "auto" (cuda:0 if present, else cpu), "cpu", "cuda:1", ...
    seed          initialisation, data order/augmentation and dropout masks (default 0)
    schedule      "step" (lr / 10 at each epoch of lr_steps; default steps at 50% and 75% of the
                  epochs) or "plateau" (lr / 10 when validation top-1 error has not improved for
                  `patience` epochs: the paper's rule)
    out_dir       where checkpoint.npz (every epoch, atomic), log.jsonl and plots go; default
                  runs/<model>-<time>; False writes nothing
    resume        a checkpoint path, or True for <out_dir>/checkpoint.npz: continue from its epoch
                  with its net, parameters, momentum, schedule and RNG state (the hyper-parameters
                  not given here come from the checkpoint); bit-exact with an uninterrupted run on the
                  same device
    workers       loader threads
    progress      a tqdm bar per epoch on a terminal (stats read back every `log_every` batches);
                  without a TTY, one line per epoch plus a line every `log_seconds` within an epoch
    plot          write curves.png and conv1_filters.png to out_dir (needs matplotlib)
    lighting      std of the PCA colour augmentation (paper 0.1); eval_views: 1 or 10 per epoch
    devices       one device per tower, e.g. ["cuda:0", "cuda:1"] or "cuda:0,cuda:1" (the same one
                  twice works too): the two-tower 2012 net (or a config with towers) split over them
    """
    from .data import BatchLoader
    t_start = time.time()
    meta_in, arrays, ckpt_path = None, None, None
    if resume:
        if resume is True:
            if out_dir in (None, False):
                raise ValueError("resume=True needs out_dir (where checkpoint.npz is)")
            ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
        else:
            ckpt_path = os.fspath(resume)
            if os.path.isdir(ckpt_path):
                ckpt_path = os.path.join(ckpt_path, CHECKPOINT_NAME)
        meta_in, arrays = read_checkpoint(ckpt_path)
        if out_dir is None:
            out_dir = os.path.dirname(os.path.abspath(ckpt_path))
    hp_in = (meta_in or {}).get("hparams", {})

    def pick(value, key, default):
        if value is not None:
            return value
        return hp_in.get(key, default)

    seed = int(pick(seed, "seed", 0))
    if data is None and meta_in and isinstance(meta_in.get("data"), str):
        data = meta_in["data"]
    train_ds, test_ds, data_name = resolve_data(data)
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if devices is not None:
        devices = [_best_device(d) for d in devices]
        device = devices[0]
    device = _best_device(device)

    if meta_in is not None:
        try:
            if devices is not None:
                net = Net(meta_in["config"], devices=devices)
            else:
                net = Net(meta_in["config"], device=_placement(meta_in["config"], device))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ckpt_path}: its net config does not build: {e}") from e
        if model is not None:
            given = _build_model(model, train_ds, device, seed, devices)
            if given.config()["layers"] != net.config()["layers"]:
                raise CheckpointError(f"checkpoint {ckpt_path} was written for a different net than model={model!r}")
            net = given
        _restore(net, arrays, ckpt_path)
    else:
        net = _build_model(model, train_ds, device, seed, devices)
    _check_fit(net, train_ds, "train")
    _check_fit(net, test_ds, "train (test split)")
    H, W, _ = net.input_shape
    if H != W:
        raise ValueError(f"train: the loader makes square crops; the net's input is {H}x{W}")

    big = max(net.input_shape[:2]) > 64
    epochs = int(pick(epochs, "epochs", DEFAULT_EPOCHS_ALEXNET if big else DEFAULT_EPOCHS))
    batch_size = int(pick(batch_size, "batch_size", PAPER["batch_size"]))
    lr = float(pick(lr, "lr", PAPER["lr"]))
    momentum = float(pick(momentum, "momentum", PAPER["momentum"]))
    weight_decay = float(pick(weight_decay, "weight_decay", PAPER["weight_decay"]))
    schedule = pick(schedule, "schedule", "step")
    if lr_steps is None:
        lr_steps = hp_in.get("lr_steps") if (meta_in and lr_steps is None and "lr_steps" in hp_in
                                             and hp_in.get("epochs") == epochs) else None
    if lr_steps is None:
        lr_steps = [math.ceil(epochs * 0.5), math.ceil(epochs * 0.75)]
    sched_state = (meta_in or {}).get("schedule") if (meta_in and lr == hp_in.get("lr")) else None
    sched = Schedule(schedule, lr, lr_steps, patience, state=sched_state)
    hparams = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum,
               "weight_decay": weight_decay, "seed": seed, "schedule": schedule, "lr_steps": list(lr_steps),
               "patience": patience, "lighting": lighting, "device": device}

    if net.mean is None:
        net.mean = np.asarray(train_ds.mean, dtype=np.float32)
    crop = H if (H, W) != tuple(train_ds.image_shape[:2]) else None
    loader = BatchLoader(train_ds, batch_size, train=True, crop=crop, flip=True, lighting=lighting,
                         seed=seed, workers=workers, scale=net.input_scale)
    if len(loader) == 0:
        raise ValueError(f"train: {len(train_ds)} training images make no batch of {batch_size}")
    out_dir = _out_dir(out_dir, net)
    history = list((meta_in or {}).get("history", []))
    start_epoch = int((meta_in or {}).get("epoch", 0))
    step = int((meta_in or {}).get("step", 0))
    drop_seed = _dropout_seed(seed)
    tty = progress and sys.stderr.isatty()
    if progress:
        where = f", writing to {out_dir}" if out_dir else ""
        what = f"resuming {ckpt_path} at epoch {start_epoch + 1}" if meta_in else "training"
        print(f"convnet: {what}: {net.meta.get('name', 'net')} ({net.num_params:,} params) on {device}, "
              f"{len(train_ds)} train / {len(test_ds)} test images, {epochs} epochs of "
              f"{len(loader)} batches of {batch_size}{where}", file=sys.stderr, flush=True)

    cost_dev = net.cost_layer.device
    acc = _C.Tensor.zeros((3,), cost_dev, "float32")
    last_ckpt = ckpt_path if meta_in else None
    for epoch in range(start_epoch, epochs):
        cur_lr = sched.lr_for(epoch)
        loader.set_epoch(epoch)
        ops.fill_(acc, 0.0)
        bar = None
        if tty:
            from tqdm import tqdm
            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                       dynamic_ncols=True)
        t0 = last_line = time.time()
        nb = images = 0
        for x, y in loader:
            stats = net.train_step(x, y, cur_lr, momentum, weight_decay, step=step, seed=drop_seed)
            ops.add_(acc, stats, 1.0)
            step += 1
            nb += 1
            images += len(y)
            if progress and bar is None and time.time() - last_line > log_seconds:
                # No TTY (a log file): a plain line now and then instead of a bar.
                last_line = time.time()
                st = acc.numpy()
                print(f"  epoch {epoch + 1}/{epochs}  batch {nb}/{len(loader)}  loss {st[0] / nb:.4f}  "
                      f"acc {100 * st[1] / images:.1f}%  {images / max(last_line - t0, 1e-9):.0f} img/s",
                      file=sys.stderr, flush=True)
            if bar is not None:
                bar.update(1)
                if nb % log_every == 0 or nb == len(loader):
                    s = acc.numpy()  # the only read-back: when the bar shows it
                    bar.set_postfix_str(f"loss {s[0] / nb:.3f} acc {100 * s[1] / images:.1f}% "
                                        f"{images / max(time.time() - t0, 1e-9):.0f} img/s", refresh=False)
        s = acc.numpy().astype(np.float64)
        train_secs = time.time() - t0
        if bar is not None:
            bar.close()
        val = evaluate(net, test_ds, views=eval_views, batch_size=batch_size, workers=workers)
        sched.end_epoch(val["top1_err"])
        rec = {"epoch": epoch + 1, "lr": cur_lr, "train_loss": s[0] / nb, "train_top1_err": 1 - s[1] / images,
               "train_top5_err": 1 - s[2] / images, "val_loss": val["loss"], "val_top1_err": val["top1_err"],
               "val_top5_err": val["top5_err"], "images_per_s": images / max(train_secs, 1e-9),
               "seconds": time.time() - t0, "step": step}
        history.append(rec)
        if progress:
            print(_fmt_epoch(rec, epochs), file=sys.stderr, flush=True)
        if out_dir:
            with open(os.path.join(out_dir, LOG_NAME), "a") as f:
                f.write(json.dumps(rec) + "\n")
            if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
                meta = {"epoch": epoch + 1, "step": step, "hparams": hparams, "schedule": sched.state(),
                        "history": history, "data": data_name, "loader": {"seed": seed, "next_epoch": epoch + 1},
                        "dropout_seed": str(drop_seed)}
                last_ckpt = save_checkpoint(os.path.join(out_dir, CHECKPOINT_NAME), net, meta)
    if plot and out_dir and history:
        plot_curves(history, os.path.join(out_dir, "curves.png"))
        plot_filters(net, os.path.join(out_dir, "conv1_filters.png"))
    seconds = time.time() - t_start
    if progress and out_dir:
        print(f"convnet: done in {seconds:.1f} s; checkpoint {last_ckpt}, log {os.path.join(out_dir, LOG_NAME)}",
              file=sys.stderr, flush=True)
    return TrainResult(net=net, history=history, out_dir=out_dir, checkpoint=last_ckpt, seconds=seconds)
