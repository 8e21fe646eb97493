"""The run's hyper-parameters: one record shared by the CLI (`convnet train --help` shows these
defaults), train() and the checkpoint (meta["hparams"]), so each default lives here once.

Paper defaults: SGD with momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by 10 at the
`lr_steps` epochs. The default lr follows the batch size by the linear rule, lr = 0.01 x batch / 128
(AlexNet-2012 at batch 16 and lr 0.01 diverges)."""
from __future__ import annotations

import dataclasses
import math

__all__ = ["HParams", "Schedule", "default_lr", "DEFAULT_EPOCHS", "DEFAULT_EPOCHS_ALEXNET", "parse_lr_steps"]

DEFAULT_EPOCHS = 10             # the small default net on the built-in data (measured: see docs)
DEFAULT_EPOCHS_ALEXNET = 90     # the paper: ~90 epochs of ImageNet
BASE_LR, BASE_BATCH = 0.01, 128  # the paper's lr at its batch size


def default_lr(batch_size: int) -> float:
    """The linear scaling rule: 0.01 x batch / 128."""
    return BASE_LR * batch_size / BASE_BATCH


def _field(default, help):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class HParams:
    """One run's learning hyper-parameters. None means "derived": see `resolved`."""
    epochs: int | None = _field(None, f"epochs (default {DEFAULT_EPOCHS} for the small net, "
                                      f"{DEFAULT_EPOCHS_ALEXNET} for AlexNet)")
    batch_size: int = _field(128, "images per SGD step")
    lr: float | None = _field(None, "learning rate (default 0.01 x batch-size / 128, the linear rule)")
    momentum: float = _field(0.9, "SGD momentum, 0 <= m < 1")
    weight_decay: float = _field(5e-4, "L2 weight decay, >= 0")
    seed: int = _field(0, "initialisation, data order, augmentation and dropout masks")
    schedule: str = _field("step", "step (lr / 10 at each --lr-steps epoch) | plateau (lr / 10 when the "
                                   "val top-1 error stops improving for --patience epochs: the paper's rule)")
    lr_steps: list | None = _field(None, "epochs at which lr /= 10, comma separated (default 50%% and 75%% "
                                         "of the epochs)")
    patience: int = _field(3, "plateau schedule: epochs without improvement before lr /= 10")
    lighting: float = _field(0.1, "std of the PCA colour augmentation (paper 0.1; 0 = off)")
    eval_views: int = _field(1, "views per validation image: 1 (centre) or 10 (corners, centre, mirrored)")
    save_every: int = _field(1, "write the last checkpoint every N epochs (and at the end)")
    # Data parallelism (convnet.distributed; under `mpiexec -n K`, batch_size is the global batch).
    micro_batch: int | None = _field(None, "images per micro-batch (data parallel): a fixed value makes the "
                                           "parameters bit-identical for any number of processes, one included "
                                           "(default: batch-size / processes; one process: the whole batch)")
    reduction: str = _field("ordered", "data parallel gradient sum: ordered (one fixed order, the same bytes "
                                       "for any number of processes) | fast (the MPI allreduce, not bit-identical)")
    precision: str = _field("fp32", "fp32 | tf32 | bf16: arithmetic of the conv and FC GEMMs; weights, "
                                    "momentum and checkpoints stay fp32 (docs/architecture.md, Precision)")

    def resolved(self, big_net: bool) -> "HParams":
        """A copy with the derived values filled in (epochs, lr, lr_steps), validated."""
        hp = dataclasses.replace(self)
        if hp.epochs is None:
            hp.epochs = DEFAULT_EPOCHS_ALEXNET if big_net else DEFAULT_EPOCHS
        if hp.lr is None:
            hp.lr = default_lr(int(hp.batch_size))
        if hp.lr_steps is None:
            hp.lr_steps = [math.ceil(hp.epochs * 0.5), math.ceil(hp.epochs * 0.75)]
        hp.validate()
        return hp

    def validate(self, flags: bool = False):
        """ValueError naming the hyper-parameter that is out of range (as a CLI flag if `flags`)."""
        def bad(name, want):
            shown = "--" + name.replace("_", "-") + " " if flags else name + "="
            raise ValueError(f"{shown}{getattr(self, name)!r}: must be {want}")

        for name in ("epochs", "batch_size", "seed", "patience", "save_every", "eval_views"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                bad(name, "an integer")
        for name in ("lr", "momentum", "weight_decay", "lighting"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                bad(name, "a finite number")
        if self.epochs is not None and self.epochs < 1:
            bad("epochs", ">= 1")
        if self.batch_size < 1:
            bad("batch_size", ">= 1")
        if self.lr is not None and not self.lr > 0:
            bad("lr", "> 0")
        if not 0 <= self.momentum < 1:
            bad("momentum", "in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", ">= 0")
        if self.lighting < 0:
            bad("lighting", ">= 0")
        if not 0 <= self.seed < 2**64:
            bad("seed", "in [0, 2**64) (the dropout masks' Philox key is 64 bits)")
        if self.patience < 1:
            bad("patience", ">= 1")
        if self.save_every < 1:
            bad("save_every", ">= 1")
        if self.eval_views not in (1, 10):
            bad("eval_views", "1 or 10")
        if self.precision not in ("fp32", "tf32", "bf16"):
            bad("precision", "'fp32', 'tf32' or 'bf16'")
        if self.schedule not in ("step", "plateau"):
            bad("schedule", "'step' or 'plateau'")
        if self.lr_steps is not None:
            if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.lr_steps):
                bad("lr_steps", "a list of epochs >= 1")
        if self.micro_batch is not None and (isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int)
                                             or self.micro_batch < 1):
            bad("micro_batch", "an integer >= 1")
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            bad("micro_batch", f"a divisor of the batch size {self.batch_size}")
        if self.reduction not in ("ordered", "fast"):
            bad("reduction", "'ordered' or 'fast'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HParams":
        """The known fields of a checkpoint's meta["hparams"] (older checkpoints have extra keys)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


def parse_lr_steps(text: str, flag: str = "--lr-steps") -> list:
    """'6,9' -> [6, 9]; ValueError naming the flag otherwise."""
    try:
        return [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: want whole epochs separated by commas, e.g. 6,9") from None


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
