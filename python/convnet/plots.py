"""Plots of a run (matplotlib is optional): the learning curves and the first layer's filters.

    >>> plots.plot_run("runs/small-20260101-120000")   # curves.png and, where the checkpoint has
                                                        # RGB first-layer filters, conv1_filters.png
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

__all__ = ["require_matplotlib", "plot_curves", "filter_grid", "plot_filters", "plot_run"]


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend; ImportError saying how to get it otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib, an optional dependency: pip install matplotlib") from e
    return plt


def plot_curves(history, path):
    """Training/validation top-1 error and training loss per epoch -> PNG at `path`."""
    plt = require_matplotlib()
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


def plot_filters(net, path):
    """The first conv layer's filters as a grid PNG (for two towers, both towers' filters)."""
    plt = require_matplotlib()
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




def read_history(run_dir) -> list:
    """The per-epoch records of a run folder's log.jsonl (the last record of each epoch)."""
    from .checkpoint import LOG_NAME
    path = os.path.join(os.fspath(run_dir), LOG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {LOG_NAME} in {run_dir}: not a run folder")
    by_epoch = {}
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                by_epoch[int(rec["epoch"])] = rec
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path} line {i}: not a log record") from None
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_run(run_dir) -> list:
    """Draw an existing run folder: curves.png from its log, conv1_filters.png from its checkpoint."""
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    require_matplotlib()
    run_dir = os.fspath(run_dir)
    out = [plot_curves(read_history(run_dir), os.path.join(run_dir, "curves.png"))]
    if os.path.isfile(os.path.join(run_dir, CHECKPOINT_NAME)):
        f = plot_filters(load_checkpoint(run_dir, device="cpu"), os.path.join(run_dir, "conv1_filters.png"))
        if f:
            out.append(f)
    return out
