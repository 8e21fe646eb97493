"""convnet: AlexNet from scratch, with hand-written CUDA and C++ kernels under a thin Python layer.

Layouts: activations (N, H, W, C); conv filters (K, R, S, C/groups); fully-connected weights (out, in).

    >>> import convnet
    >>> convnet.devices()          # ['cpu'] plus 'cuda:0', ... where a GPU is present
    >>> convnet.build_info()       # CUDA compiled in?, architectures, CPU threads
    >>> result = convnet.train()   # the small default net on the built-in data set
    >>> convnet.evaluate(result.net, "builtin", views=10)
    >>> convnet.alexnet("2012").summary()
"""
from . import _C
from ._C import build_info, can_access_peer, devices, empty_cache, memory_stats, synchronize
from ._C import ops
from .tensor import Tensor, empty, from_numpy, full, upload_batches, zeros
from . import data, layers
from .net import Net
from .precision import PRECISIONS, use_precision
from . import models
from .models import alexnet, get_model
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate
from .hparams import HParams
from .train import TrainResult, train

__version__ = build_info()["version"]

__all__ = ["Tensor", "build_info", "can_access_peer", "devices", "empty", "empty_cache", "from_numpy",
           "full", "memory_stats", "ops", "synchronize", "upload_batches", "zeros",
           "Net", "data", "layers", "models", "alexnet", "get_model",
           "train", "evaluate", "TrainResult", "HParams", "load_checkpoint", "save_checkpoint",
           "PRECISIONS", "use_precision"]
