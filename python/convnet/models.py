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

# Each named model's default input side, in one place (the configs' defaults and get_model use it).
INPUT_SIZES = {"default": 28, "2012": 227, "owt": 224}

__all__ = ["alexnet", "alexnet_2012_config", "two_tower_config", "merge_towers", "split_towers",
           "alexnet_owt_config", "small_config", "small", "get_model", "build_model", "canonical_name",
           "input_side", "MODELS", "INPUT_SIZES"]


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

def _conv_paper_std(init):
    if init not in ("paper", "he"):
        raise ValueError(f"alexnet: init must be 'paper' or 'he', got {init!r}")
    return 0.01 if init == "paper" else None


def two_tower_config(widths=(96, 256, 384, 384, 256), hidden=(4096, 4096), num_classes: int = 1000,
                     input_size: int = INPUT_SIZES["2012"], conv1=(11, 4, 0), lrn: bool = True, dropout: float = 0.5,
                     towers: int = 2, devices=None, init_std=0.01) -> list:
    """The paper's architecture as data, for any widths: conv1 (size, stride, pad of `conv1`) ->
    [LRN] -> max-pool 3/2 -> conv2 5x5 pad 2 -> [LRN] -> pool -> conv3, conv4, conv5 3x3 pad 1 -> pool
    -> fc6 -> dropout -> fc7 -> dropout -> fc8 -> softmax; ReLU after every conv and hidden fc.
    `widths` and `hidden` are the totals over both towers (AlexNet: 96, 256, 384, 384, 256; 4096, 4096).

    towers=2: the paper's split (its figure 2; cuda-convnet's layers-145): every layer but fc8 is two
    half-width layers "<name>a" and "<name>b" with "tower": 0 / 1. Tower b's layers read only tower
    b, except where the GPUs communicate: conv3, fc6 and fc7 of each tower read BOTH towers (two
    inputs, summed), and fc8 (tower a) reads fc7a and fc7b. Each tower's LRN normalises its own
    channels. `devices=(d0, d1)` puts tower a on d0 and tower b on d1 (also the data and fc8 on d0).

    towers=1: the same function as one single-device net: conv2, conv4, conv5 and both LRNs are
    grouped (groups=2), conv1, conv3 and the fc layers are whole; `merge_towers` / `split_towers`
    convert parameters between the two forms (the fc weights of the single form are the blocks of the
    two towers' weights). Dropout masks differ between the forms (one 4096-wide layer vs two halves),
    so the two agree exactly when dropout is off (test mode, or dropout=0).
    """
    c1, c2, c3, c4, c5 = widths
    h6, h7 = hidden
    k1, s1, p1 = conv1
    std = init_std
    if towers == 1:
        dev = (devices or ["cpu"])[0]
        x = []

        def add(d):
            if dev != "cpu":
                d["device"] = dev
            x.append(d)
        add({"name": "data", "type": "data", "shape": [input_size, input_size, 3]})
        add(_conv("conv1", ["data"], c1, k1, s1, p1, init_std=std, bias_init=0.0))
        prev = "conv1"
        if lrn:
            add(_layer("rnorm1", "lrn", ["conv1"], groups=2))
            prev = "rnorm1"
        add(_layer("pool1", "maxpool", [prev], size=3, stride=2))
        add(_conv("conv2", ["pool1"], c2, 5, 1, 2, groups=2, init_std=std, bias_init=1.0))
        prev = "conv2"
        if lrn:
            add(_layer("rnorm2", "lrn", ["conv2"], groups=2))
            prev = "rnorm2"
        add(_layer("pool2", "maxpool", [prev], size=3, stride=2))
        add(_conv("conv3", ["pool2"], c3, 3, 1, 1, init_std=std, bias_init=0.0))
        add(_conv("conv4", ["conv3"], c4, 3, 1, 1, groups=2, init_std=std, bias_init=1.0))
        add(_conv("conv5", ["conv4"], c5, 3, 1, 1, groups=2, init_std=std, bias_init=1.0))
        add(_layer("pool5", "maxpool", ["conv5"], size=3, stride=2))
        add(_layer("fc6", "fc", ["pool5"], outputs=h6, relu=True, init_std=std, bias_init=1.0))
        add(_layer("drop6", "dropout", ["fc6"], p=dropout))
        add(_layer("fc7", "fc", ["drop6"], outputs=h7, relu=True, init_std=std, bias_init=1.0))
        add(_layer("drop7", "dropout", ["fc7"], p=dropout))
        add(_layer("fc8", "fc", ["drop7"], outputs=num_classes, init_std=std, bias_init=0.0))
        add(_layer("loss", "softmax", ["fc8"]))
        return x
    if towers != 2:
        raise ValueError(f"two_tower_config: towers must be 1 or 2, got {towers!r}")
    if any(w % 2 for w in widths + tuple(hidden)):
        raise ValueError(f"two_tower_config: widths {widths} and hidden {hidden} must be even (two halves)")
    devs = list(devices or ("cpu", "cpu"))
    if len(devs) != 2:
        raise ValueError(f"two towers need two devices (the same one twice is fine), got {devs!r}")
    layers = []

    def add(d, t):
        d["tower"] = t
        if devs[t] != "cpu":
            d["device"] = devs[t]
        if t == 0:
            del d["tower"]
        layers.append(d)
    add({"name": "data", "type": "data", "shape": [input_size, input_size, 3]}, 0)
    for i, t in enumerate("ab"):
        add(_conv(f"conv1{t}", ["data"], c1 // 2, k1, s1, p1, init_std=std, bias_init=0.0), i)
        prev = f"conv1{t}"
        if lrn:
            add(_layer(f"rnorm1{t}", "lrn", [prev]), i)
            prev = f"rnorm1{t}"
        add(_layer(f"pool1{t}", "maxpool", [prev], size=3, stride=2), i)
        add(_conv(f"conv2{t}", [f"pool1{t}"], c2 // 2, 5, 1, 2, init_std=std, bias_init=1.0), i)
        prev = f"conv2{t}"
        if lrn:
            add(_layer(f"rnorm2{t}", "lrn", [prev]), i)
            prev = f"rnorm2{t}"
        add(_layer(f"pool2{t}", "maxpool", [prev], size=3, stride=2), i)
    for i, t in enumerate("ab"):
        add(_conv(f"conv3{t}", ["pool2a", "pool2b"], c3 // 2, 3, 1, 1, init_std=std, bias_init=0.0), i)
        add(_conv(f"conv4{t}", [f"conv3{t}"], c4 // 2, 3, 1, 1, init_std=std, bias_init=1.0), i)
        add(_conv(f"conv5{t}", [f"conv4{t}"], c5 // 2, 3, 1, 1, init_std=std, bias_init=1.0), i)
        add(_layer(f"pool5{t}", "maxpool", [f"conv5{t}"], size=3, stride=2), i)
    for i, t in enumerate("ab"):
        add(_layer(f"fc6{t}", "fc", ["pool5a", "pool5b"], outputs=h6 // 2, relu=True, init_std=std,
                   bias_init=1.0), i)
        add(_layer(f"drop6{t}", "dropout", [f"fc6{t}"], p=dropout), i)
    for i, t in enumerate("ab"):
        add(_layer(f"fc7{t}", "fc", ["drop6a", "drop6b"], outputs=h7 // 2, relu=True, init_std=std,
                   bias_init=1.0), i)
        add(_layer(f"drop7{t}", "dropout", [f"fc7{t}"], p=dropout), i)
    add(_layer("fc8", "fc", ["drop7a", "drop7b"], outputs=num_classes, init_std=std, bias_init=0.0), 0)
    add(_layer("loss", "softmax", ["fc8"]), 0)
    return layers


def alexnet_2012_config(num_classes: int = 1000, input_size: int = INPUT_SIZES["2012"], devices=("cpu", "cpu"),
                        init: str = "paper", towers: int = 2) -> list:
    """The paper's network (`two_tower_config` with AlexNet's widths), as two towers a and b as on its
    two GPUs (towers=2), or as one grouped single-device net computing the same function (towers=1).

    Per tower: conv1 48 11x11/4 -> ReLU -> LRN -> max-pool 3/2 -> conv2 128 5x5 pad 2 (own tower)
    -> ReLU -> LRN -> pool -> conv3 192 3x3 pad 1 reading BOTH towers -> conv4 192 -> conv5 128 (own
    tower) -> pool -> fc6 2048 reading both towers' pool5 -> ReLU -> dropout 0.5 -> fc7 2048 reading
    both fc6 halves -> ReLU -> dropout -> fc8 num_classes (tower a) reading both fc7 halves -> softmax.
    The GPUs communicate only at conv3, fc6, fc7 and fc8 (the paper's figure 2); 60,965,224
    parameters with 1000 classes either way.

    `devices` (tower a, tower b): ("cuda:0", "cuda:1") puts each tower on its GPU; the Net inserts a
    Copy layer on every edge between the towers (also when both name the same device).

    init="paper": weights N(0, 0.01^2), biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere,
    for raw mean-subtracted pixels (meta input_scale = 1.0, as the paper). init="he": He's
    sqrt(2/fan_in) with the same biases, for inputs scaled by 1/64 (the loader's default).
    """
    return two_tower_config(num_classes=num_classes, input_size=input_size, towers=towers,
                            devices=list(devices) if devices else None, init_std=_conv_paper_std(init))


def merge_towers(state: dict) -> dict:
    """Parameters of a `two_tower_config` net (towers=2) -> those of its towers=1 form (a dict like
    Net.state(): "<layer>.<param>" arrays, ".velocity" entries included when present). Whole layers
    concatenate the towers' filters / output rows; cross-tower layers place each input's weights as a
    block of the single weight (conv3 along the input channels, fc6 along the channels of the
    flattened (H, W, C) input, fc7 and fc8 along the input features)."""
    import numpy as np
    out = {}
    suffixes = [s for s in ("", ".velocity") if any(k.endswith(".bias" + s) for k in state)]
    for suf in suffixes:
        def g(name):
            return np.asarray(state[name + suf])

        def put(name, value):
            out[name + suf] = np.ascontiguousarray(value, dtype=np.float32)
        for layer in ("conv1", "conv2", "conv4", "conv5"):
            put(f"{layer}.weight", np.concatenate([g(f"{layer}a.weight"), g(f"{layer}b.weight")], 0))
            put(f"{layer}.bias", np.concatenate([g(f"{layer}a.bias"), g(f"{layer}b.bias")], 0))
        put("conv3.weight", np.concatenate([np.concatenate([g(f"conv3{t}.weight0"), g(f"conv3{t}.weight1")], 3)
                                            for t in "ab"], 0))
        ca = g("conv5a.weight").shape[0]  # pool5 channels per tower
        blocks = []
        for t in "ab":
            w0, w1 = g(f"fc6{t}.weight0"), g(f"fc6{t}.weight1")
            o, hw = w0.shape[0], w0.shape[1] // ca
            blocks.append(np.concatenate([w0.reshape(o, hw, ca), w1.reshape(o, hw, ca)], 2).reshape(o, hw * 2 * ca))
        put("fc6.weight", np.concatenate(blocks, 0))
        for layer in ("conv3", "fc6", "fc7"):
            put(f"{layer}.bias", np.concatenate([g(f"{layer}a.bias"), g(f"{layer}b.bias")], 0))
        put("fc7.weight", np.concatenate([np.concatenate([g(f"fc7{t}.weight0"), g(f"fc7{t}.weight1")], 1)
                                          for t in "ab"], 0))
        put("fc8.weight", np.concatenate([g("fc8.weight0"), g("fc8.weight1")], 1))
        put("fc8.bias", g("fc8.bias"))
    return out


def split_towers(state: dict) -> dict:
    """The inverse of `merge_towers`: parameters of the towers=1 form -> those of the two towers."""
    import numpy as np
    out = {}
    suffixes = [s for s in ("", ".velocity") if any(k.endswith(".bias" + s) for k in state)]
    for suf in suffixes:
        def g(name):
            return np.asarray(state[name + suf])

        def put(name, value):
            out[name + suf] = np.ascontiguousarray(value, dtype=np.float32)

        def halves(a, axis):
            return np.split(a, 2, axis=axis)
        for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
            for t, b in zip("ab", halves(g(f"{layer}.bias"), 0)):
                put(f"{layer}{t}.bias", b)
        for layer in ("conv1", "conv2", "conv4", "conv5"):
            for t, w in zip("ab", halves(g(f"{layer}.weight"), 0)):
                put(f"{layer}{t}.weight", w)
        for t, w in zip("ab", halves(g("conv3.weight"), 0)):
            w0, w1 = halves(w, 3)
            put(f"conv3{t}.weight0", w0)
            put(f"conv3{t}.weight1", w1)
        c = g("conv5.weight").shape[0]
        for t, w in zip("ab", halves(g("fc6.weight"), 0)):
            o, hw = w.shape[0], w.shape[1] // c
            w0, w1 = halves(w.reshape(o, hw, c), 2)
            put(f"fc6{t}.weight0", w0.reshape(o, -1))
            put(f"fc6{t}.weight1", w1.reshape(o, -1))
        for t, w in zip("ab", halves(g("fc7.weight"), 0)):
            w0, w1 = halves(w, 1)
            put(f"fc7{t}.weight0", w0)
            put(f"fc7{t}.weight1", w1)
        w0, w1 = halves(g("fc8.weight"), 1)
        put("fc8.weight0", w0)
        put("fc8.weight1", w1)
        put("fc8.bias", g("fc8.bias"))
    return out


def alexnet_owt_config(num_classes: int = 1000, input_size: int = INPUT_SIZES["owt"]) -> list:
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


def small_config(num_classes: int = 10, input_size: int = INPUT_SIZES["default"], width: int = 32) -> list:
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
            allocate: bool = True, towers: int = 2) -> Net:
    """AlexNet: version "2012" (the paper, 227x227 input, 60,965,224 parameters with 1000 classes) or
    "owt" (single tower, 224x224, torchvision's layout).

    The 2012 net is the paper's two-tower split (towers=2): `devices=(d0, d1)` puts tower a on d0 and
    tower b on d1 (model parallelism with explicit copies; the same device twice runs the same graph on
    one device); `device` puts everything on one device, keeping the towers and their copies.
    towers=1 is the same function as one grouped single-device net (see `two_tower_config`)."""
    v = canonical_name(version)
    if v == "2012":
        cfg = alexnet_2012_config(num_classes, input_size or INPUT_SIZES[v], tuple(devices or ("cpu", "cpu")),
                                  init, towers=towers)
        meta = {"name": "alexnet-2012" if towers == 2 else "alexnet-2012-grouped",
                "input_scale": 1.0 if init == "paper" else DEFAULT_INPUT_SCALE}
    elif v == "owt":
        cfg = alexnet_owt_config(num_classes, input_size or INPUT_SIZES[v])
        meta = {"name": "alexnet-owt", "input_scale": DEFAULT_INPUT_SCALE}
    else:
        raise ValueError(f"alexnet: unknown version {version!r}; known: '2012', 'owt'")
    return Net(cfg, device=device, seed=seed, meta=meta, allocate=allocate)


def small(num_classes: int = 10, input_size: int = INPUT_SIZES["default"], device: str | None = None, seed: int = 0,
          allocate: bool = True) -> Net:
    return Net(small_config(num_classes, input_size), device=device, seed=seed,
               meta={"name": "small", "input_scale": DEFAULT_INPUT_SCALE}, allocate=allocate)


MODELS = {
    "default": "small net for 32x32 images (built-in data, CIFAR): 28x28 crops",
    "2012": "AlexNet as in the 2012 paper, two towers, 227x227",
    "owt": "AlexNet 'one weird trick' single tower (torchvision), 224x224",
}
# Every other spelling of a model name, in one place (get_model, alexnet(), build_model, the CLI).
_ALIASES = {"small": "default", "alexnet": "2012", "alexnet-2012": "2012", "alexnet2012": "2012",
            "alexnet_2012": "2012", "paper": "2012", "alexnet-owt": "owt", "alexnet_owt": "owt",
            "alexnetowt": "owt", "2014": "owt", "alexnet-2014": "owt"}


def get_model(name: str, num_classes: int = 10, input_size: int | None = None, device: str | None = None,
              seed: int = 0, allocate: bool = True, devices=None) -> Net:
    """A model by name: "default" (alias "small"), "2012" ("alexnet"), "owt". `devices` (d0, d1):
    the 2012 net's two towers on two devices (model parallelism)."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if devices is not None and key != "2012":
        raise ValueError(f"devices={list(devices)!r}: only the two-tower '2012' model splits over devices")
    if key == "default":
        return small(num_classes, input_size or INPUT_SIZES[key], device, seed, allocate)
    if key in ("2012", "owt"):
        return alexnet(key, num_classes, input_size, device=device, devices=devices, seed=seed, allocate=allocate)
    raise ValueError(f"unknown model {name!r}; known models: " +
                     ", ".join(f"{k!r} ({v})" for k, v in MODELS.items()))


def canonical_name(name: str) -> str | None:
    """A model name or alias -> its key in MODELS ("default", "2012", "owt"); None if unknown."""
    key = _ALIASES.get(str(name).lower().strip(), str(name).lower().strip())
    return key if key in MODELS else None


def input_side(model, input_size: int | None = None, image_shape=None) -> int | None:
    """The input side of the net `model` (any build_model argument) will build, without building it:
    input_size if given, a named model's default (INPUT_SIZES; the small net takes smaller images
    whole: min(28, H, W) of `image_shape`), a Net's or a config's data layer; None for model None
    (the default model depends on the data)."""
    import os
    if input_size is not None:
        return int(input_size)
    if model is None:
        return None
    if isinstance(model, Net):
        return int(model.input_shape[0])
    if isinstance(model, str) and not os.path.exists(model):
        key = canonical_name(model)
        if key == "default" and image_shape is not None:
            return min(INPUT_SIZES[key], *image_shape[:2])
        return INPUT_SIZES[key] if key else None  # unknown: build_model names the known ones
    # A config: the Net's own shape inference on the CPU, no parameters allocated, so a bad config
    # fails here naming its layer, as building it would.
    return int(Net(model, device="cpu", allocate=False).input_shape[0])


def build_model(model, num_classes: int, image_shape, device=None, seed: int = 0, devices=None,
                input_size: int | None = None) -> Net:
    """The one builder for every kind of `model` argument: None (the small default net for images
    <= 64 px, else AlexNet 2012), a name or alias, a Net (returned as is), a layer-config list/dict
    or a config file path. image_shape (H, W, C) of the data picks the default net and its input
    size (the default net: min(28, H, W)); input_size overrides it. devices: one per tower."""
    import os
    from .checkpoint import placement
    if isinstance(model, Net):
        return model
    if model is None:
        model = "2012" if devices is not None or max(image_shape[:2]) > 64 else "default"
    if isinstance(model, str) and not os.path.exists(model):
        key = canonical_name(model)
        if key is None:
            get_model(model)  # raises: unknown model, naming the known ones
        size = input_side(key, input_size, image_shape)
        if devices is not None and key != "2012":
            raise ValueError(f"devices={list(devices)!r}: model {model!r} has no towers; use '2012' or a "
                             f"config with towers")
        return get_model(key, num_classes=num_classes, input_size=size, device=device, seed=seed, devices=devices)
    if input_size is not None:
        raise ValueError(f"input_size={input_size}: a net config fixes its own input size (its data layer)")
    if devices is not None:
        return Net(model, devices=devices, seed=seed)
    return Net(model, device=placement(model, device), seed=seed)
