"""The networks: AlexNet as in the 2012 paper (two towers), the "one weird trick" single tower, and a
small net of the same family for the built-in 32x32 data set.

Each builder returns a `Net`; `*_config` functions return the description as data (a list of layer
dicts) so it can be edited, saved as JSON, or re-pinned to devices.

    >>> import convnet
    >>> net = convnet.alexnet("2012")            # 227x227x3 -> 1000 classes, 60,965,224 parameters
    >>> net.summary()
    >>> small = convnet.models.get_model("default", num_classes=10)
"""
from __future__ import annotations

from .net import DEFAULT_INPUT_SCALE, Net

__all__ = ["alexnet", "alexnet_2012_config", "alexnet_owt_config", "small_config", "small",
           "get_model", "MODELS"]


def _conv(name, inputs, filters, size, stride=1, pad=0, relu=True, device="cpu", **kw):
    d = {"name": name, "type": "conv", "inputs": list(inputs), "filters": filters, "size": size,
         "stride": stride, "pad": pad, "relu": relu, **kw}
    if device != "cpu":
        d["device"] = device
    return d


def _layer(name, kind, inputs, device="cpu", **kw):
    d = {"name": name, "type": kind, "inputs": list(inputs), **kw}
    if device != "cpu":
        d["device"] = device
    return d


# --------------------------------------------------------------------------------------------------

def alexnet_2012_config(num_classes: int = 1000, input_size: int = 227, devices=("cpu", "cpu"),
                        init: str = "paper") -> list:
    """The paper's network as two explicit towers, a (filters 0..half) and b, as on its two GPUs.

    Per tower: conv1 48 11x11/4 -> ReLU -> LRN -> max-pool 3/2 -> conv2 128 5x5 pad 2 (sees only
    its own tower) -> ReLU -> LRN -> pool -> conv3 192 3x3 pad 1 reading BOTH towers (a two-input
    conv: the contributions are summed) -> conv4 192 -> conv5 128 (own tower) -> pool. Then full
    fc6 4096 (two inputs: both towers' pool5), fc7 4096, fc8 num_classes, each hidden fc followed by
    ReLU and dropout 0.5 (the paper's "dropout in the first two fully-connected layers", applied to
    their outputs as cuda-convnet and Caffe do), softmax cost.

    `devices` (tower a, tower b): ("cuda:0", "cuda:1") puts each tower on its GPU; the Net inserts
    the copies where conv3 and fc6 read the other tower (fc layers live with tower a).

    init="paper": weights N(0, 0.01^2), biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere,
    for raw mean-subtracted pixels (meta input_scale = 1.0, as the paper). init="he": He's
    sqrt(2/fan_in) with the same biases, for inputs scaled by 1/64 (the loader's default).
    """
    da, db = devices
    std = 0.01 if init == "paper" else None
    if init not in ("paper", "he"):
        raise ValueError(f"alexnet: init must be 'paper' or 'he', got {init!r}")
    layers = [{"name": "data", "type": "data", "shape": [input_size, input_size, 3],
               **({"device": da} if da != "cpu" else {})}]
    for t, dev in (("a", da), ("b", db)):
        layers += [
            _conv(f"conv1{t}", ["data"], 48, 11, 4, 0, device=dev, init_std=std, bias_init=0.0),
            _layer(f"rnorm1{t}", "lrn", [f"conv1{t}"], dev),
            _layer(f"pool1{t}", "maxpool", [f"rnorm1{t}"], dev, size=3, stride=2),
            _conv(f"conv2{t}", [f"pool1{t}"], 128, 5, 1, 2, device=dev, init_std=std, bias_init=1.0),
            _layer(f"rnorm2{t}", "lrn", [f"conv2{t}"], dev),
            _layer(f"pool2{t}", "maxpool", [f"rnorm2{t}"], dev, size=3, stride=2),
        ]
    for t, dev in (("a", da), ("b", db)):
        layers += [
            _conv(f"conv3{t}", ["pool2a", "pool2b"], 192, 3, 1, 1, device=dev, init_std=std, bias_init=0.0),
            _conv(f"conv4{t}", [f"conv3{t}"], 192, 3, 1, 1, device=dev, init_std=std, bias_init=1.0),
            _conv(f"conv5{t}", [f"conv4{t}"], 128, 3, 1, 1, device=dev, init_std=std, bias_init=1.0),
            _layer(f"pool5{t}", "maxpool", [f"conv5{t}"], dev, size=3, stride=2),
        ]
    layers += [
        _layer("fc6", "fc", ["pool5a", "pool5b"], da, outputs=4096, relu=True, init_std=std, bias_init=1.0),
        _layer("drop6", "dropout", ["fc6"], da, p=0.5),
        _layer("fc7", "fc", ["drop6"], da, outputs=4096, relu=True, init_std=std, bias_init=1.0),
        _layer("drop7", "dropout", ["fc7"], da, p=0.5),
        _layer("fc8", "fc", ["drop7"], da, outputs=num_classes, init_std=std, bias_init=0.0),
        _layer("loss", "softmax", ["fc8"], da),
    ]
    return layers


def alexnet_owt_config(num_classes: int = 1000, input_size: int = 224) -> list:
    """Single tower, "one weird trick" (Krizhevsky 2014) as torchvision has it: conv1 64 11x11/4 pad 2,
    pool 3/2, conv2 192 5x5 pad 2, pool, conv3 384, conv4 256, conv5 256 3x3 pad 1, pool,
    dropout -> fc6 4096 -> dropout -> fc7 4096 -> fc8; no LRN. Weights N(0, 1/(3 fan_in)) (the std of
    torchvision's default init; He's 2/fan_in blows the logits up through three max-pools), zero biases."""
    return [
        {"name": "data", "type": "data", "shape": [input_size, input_size, 3]},
        _conv("conv1", ["data"], 64, 11, 4, 2, init_std="torch"),
        _layer("pool1", "maxpool", ["conv1"], size=3, stride=2),
        _conv("conv2", ["pool1"], 192, 5, 1, 2, init_std="torch"),
        _layer("pool2", "maxpool", ["conv2"], size=3, stride=2),
        _conv("conv3", ["pool2"], 384, 3, 1, 1, init_std="torch"),
        _conv("conv4", ["conv3"], 256, 3, 1, 1, init_std="torch"),
        _conv("conv5", ["conv4"], 256, 3, 1, 1, init_std="torch"),
        _layer("pool5", "maxpool", ["conv5"], size=3, stride=2),
        _layer("drop6", "dropout", ["pool5"], p=0.5),
        _layer("fc6", "fc", ["drop6"], outputs=4096, relu=True, init_std="torch"),
        _layer("drop7", "dropout", ["fc6"], p=0.5),
        _layer("fc7", "fc", ["drop7"], outputs=4096, relu=True, init_std="torch"),
        _layer("fc8", "fc", ["fc7"], outputs=num_classes, init_std="torch"),
        _layer("loss", "softmax", ["fc8"]),
    ]


def small_config(num_classes: int = 10, input_size: int = 28, width: int = 32) -> list:
    """The default net for the built-in 32x32 data (random 28x28 crops): AlexNet's family in small.

    conv1 width 5x5 pad 2 + ReLU -> LRN -> max-pool 3/2 -> conv2 2*width 5x5 pad 2 + ReLU -> LRN ->
    max-pool 3/2 -> fc3 256 + ReLU -> dropout 0.5 -> fc4 num_classes -> softmax.
    28x28 input: 28 -> 13 -> 13 -> 6; about 0.7 M parameters, 22 MFLOPs forward per image.
    """
    return [
        {"name": "data", "type": "data", "shape": [input_size, input_size, 3]},
        _conv("conv1", ["data"], width, 5, 1, 2),
        _layer("rnorm1", "lrn", ["conv1"]),
        _layer("pool1", "maxpool", ["rnorm1"], size=3, stride=2),
        _conv("conv2", ["pool1"], 2 * width, 5, 1, 2, bias_init=0.1),
        _layer("rnorm2", "lrn", ["conv2"]),
        _layer("pool2", "maxpool", ["rnorm2"], size=3, stride=2),
        _layer("fc3", "fc", ["pool2"], outputs=256, relu=True, bias_init=0.1),
        _layer("drop3", "dropout", ["fc3"], p=0.5),
        _layer("fc4", "fc", ["drop3"], outputs=num_classes),
        _layer("loss", "softmax", ["fc4"]),
    ]


# --------------------------------------------------------------------------------------------------

def alexnet(version: str = "2012", num_classes: int = 1000, input_size: int | None = None,
            device: str | None = None, devices=None, seed: int = 0, init: str = "paper",
            allocate: bool = True) -> Net:
    """AlexNet: version "2012" (the paper, two towers, 227x227 input, 60,965,224 parameters with 1000
    classes) or "owt" (single tower, 224x224, torchvision's layout). `devices=(a, b)` puts the 2012
    net's towers on two devices (model parallelism); `device` puts everything on one."""
    v = str(version).lower().replace("alexnet", "").strip("-_ ")
    if v in ("2012", "paper", ""):
        cfg = alexnet_2012_config(num_classes, input_size or 227, tuple(devices or ("cpu", "cpu")), init)
        meta = {"name": "alexnet-2012", "input_scale": 1.0 if init == "paper" else DEFAULT_INPUT_SCALE}
    elif v in ("owt", "2014"):
        cfg = alexnet_owt_config(num_classes, input_size or 224)
        meta = {"name": "alexnet-owt", "input_scale": DEFAULT_INPUT_SCALE}
    else:
        raise ValueError(f"alexnet: unknown version {version!r}; known: '2012', 'owt'")
    return Net(cfg, device=device, seed=seed, meta=meta, allocate=allocate)


def small(num_classes: int = 10, input_size: int = 28, device: str | None = None, seed: int = 0,
          allocate: bool = True) -> Net:
    return Net(small_config(num_classes, input_size), device=device, seed=seed,
               meta={"name": "small", "input_scale": DEFAULT_INPUT_SCALE}, allocate=allocate)


MODELS = {
    "default": "small net for 32x32 images (built-in data, CIFAR): 28x28 crops",
    "2012": "AlexNet as in the 2012 paper, two towers, 227x227",
    "owt": "AlexNet 'one weird trick' single tower (torchvision), 224x224",
}
_ALIASES = {"small": "default", "alexnet": "2012", "alexnet-2012": "2012", "alexnet2012": "2012",
            "paper": "2012", "alexnet-owt": "owt"}


def get_model(name: str, num_classes: int = 10, input_size: int | None = None, device: str | None = None,
              seed: int = 0, allocate: bool = True) -> Net:
    """A model by name: "default" (alias "small"), "2012" ("alexnet"), "owt"."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key == "default":
        return small(num_classes, input_size or 28, device, seed, allocate)
    if key in ("2012", "owt"):
        return alexnet(key, num_classes, input_size, device=device, seed=seed, allocate=allocate)
    raise ValueError(f"unknown model {name!r}; known models: " +
                     ", ".join(f"{k!r} ({v})" for k, v in MODELS.items()))
