"""One class per layer type. Each layer holds its parameters (device Tensors, with their gradients and
momentum buffers) and runs its forward and backward passes with convnet.ops only: no per-element
Python work and no host round-trip.

Shapes: a layer's output is (N, H, W, C) for image layers, (N, features) for fully-connected ones and
(3,) for the cost (the [mean loss, top-1 hits, top-5 hits] statistics, kept on the device). Shapes
below are per-sample (without N) unless said otherwise. Conv filters are (K, R, S, C/groups),
fully-connected weights (out, in) where `in` flattens the input's (H, W, C) in that order.

A layer with several inputs SUMS their contributions (cuda-convnet's way of joining two towers; there
is no concat): conv and fc keep one weight tensor per input and add the second and later products with
accumulate=True. The Net (net.py) decides the order, allocates every activation and gradient, and
sums the gradients of a tensor read by several layers.

A layer is described by a dict, e.g.::

    {"name": "conv1", "type": "conv", "inputs": ["data"], "filters": 96, "size": 11, "stride": 4,
     "relu": True, "init_std": 0.01, "bias_init": 0.0}

`layer_from_config(d)` builds it and `layer.config()` gives the dict back (what checkpoints store).
"""
from __future__ import annotations

import math

import numpy as np

from . import _C
from ._C import ops

__all__ = ["Param", "Layer", "Data", "Conv", "FC", "ReLU", "Dropout", "LRN", "MaxPool", "AvgPool",
           "SoftmaxCrossEntropy", "Copy", "LAYER_TYPES", "layer_from_config"]


INT_MAX = 2**31 - 1  # the largest value of the ops' int and Pair attributes (C++ int)


def _whole(v, what: str, low: int = 0, high: int | None = None) -> int:
    """An integer option in [low, high]: an int, a float without a fraction or a numeric string (JSON
    and INI spell numbers all three ways). ValueError for 2.5, True, "ten" or a value out of range,
    where int() would round, count True as 1 or fail without naming the option. Options passed to an
    op's int or Pair attribute take high=INT_MAX, so they are refused here, naming the layer."""
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise ValueError(f"{what} must be a whole number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"{what} must be a whole number, got {v!r}")
    if v < low:
        raise ValueError(f"{what} must be >= {low}, got {v!r}")
    if high is not None and v > high:
        raise ValueError(f"{what} must be <= {high}, got {v!r}")
    return int(v)


def _number(v, what: str, low: float = 0.0) -> float:
    """A finite float option >= low; ValueError naming it otherwise (NaN, inf, a string, a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
        raise ValueError(f"{what} must be a finite number >= {low:g}, got {v!r}")
    return float(v)


def _flag(v, what: str) -> bool:
    """A boolean option: true/false (or 1/0, as INI files write them)."""
    if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise ValueError(f"{what} must be true or false, got {v!r}")


def _pair(v, what: str = "value") -> tuple:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"{what}: expected an int or a pair, got {v!r}")
        return _whole(v[0], what, high=INT_MAX), _whole(v[1], what, high=INT_MAX)
    return _whole(v, what, high=INT_MAX), _whole(v, what, high=INT_MAX)


def _check_learned(layer):
    """The options conv and fc share (_LEARNED): multipliers finite >= 0, flags booleans."""
    for name in ("lr_mult", "bias_lr_mult", "wd_mult", "bias_wd_mult"):
        _number(getattr(layer, name), name)
    _number(layer.bias_init, "bias_init", -math.inf)
    _flag(layer.bias, "bias")
    _flag(layer.relu, "relu")
    if layer.init_std is not None and not isinstance(layer.init_std, str):
        _number(layer.init_std, "init_std")


class Param:
    """A learned tensor with its gradient and momentum buffer, all on the layer's device.

    init: Gaussian N(0, init_std^2) when init_std > 0, else the constant `init_const`.
    lr_mult / wd_mult scale the run's learning rate and weight decay for this tensor.
    """

    def __init__(self, name: str, shape, init_std: float = 0.0, init_const: float = 0.0,
                 lr_mult: float = 1.0, wd_mult: float = 1.0):
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.init_std = float(init_std)
        self.init_const = float(init_const)
        self.lr_mult = float(lr_mult)
        self.wd_mult = float(wd_mult)
        self.value = self.grad = self.velocity = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def initial_value(self, rng: np.random.Generator) -> np.ndarray:
        if self.init_std > 0:
            w = rng.standard_normal(self.shape, dtype=np.float32)
            w *= np.float32(self.init_std)
            return w
        return np.full(self.shape, self.init_const, dtype=np.float32)

    def allocate(self, device: str, value: np.ndarray):
        self.value = _C.Tensor.from_numpy(np.ascontiguousarray(value, dtype=np.float32), device)
        self.grad = _C.Tensor.zeros(self.shape, device, "float32")
        self.velocity = _C.Tensor.zeros(self.shape, device, "float32")

    def __repr__(self):
        return f"Param({self.name}, {self.shape}, lr_mult={self.lr_mult}, wd_mult={self.wd_mult})"


class Context:
    """What a pass needs besides tensors: train or test, the step (for dropout counters), the run's
    dropout seed, the labels (int32 (N,) on the cost's device), whether a backward pass follows, and
    sample_offset: the index of this pass's first sample in the step's whole (global) batch, so a
    micro-batch or one rank's slice draws the dropout masks the whole batch would have."""

    def __init__(self, train: bool, step: int = 0, seed: int = 0, labels=None, backward: bool = False,
                 sample_offset: int = 0):
        self.train = train
        self.step = int(step)
        self.seed = int(seed)
        self.labels = labels
        self.backward = backward
        if int(sample_offset) < 0:
            raise ValueError(f"Context: sample_offset must be >= 0, got {sample_offset}")
        self.sample_offset = int(sample_offset)


class Layer:
    """Base class. Subclasses define `type`, `_options` (config keys and defaults), `setup`,
    `forward` and `backward`.

    accumulates: the backward pass can ADD into an input gradient (accumulate=True); otherwise the Net
    gives it a scratch tensor and adds that (a tensor read by several layers).
    max_inputs: how many inputs it takes (None: any number >= 1).
    """
    type = "layer"
    accumulates = False
    max_inputs = 1
    _options: dict = {}

    def __init__(self, name: str, inputs=(), device: str = "cpu", tower: int = 0, **options):
        self.name = str(name)
        if isinstance(inputs, str):
            inputs = [inputs]
        self.inputs = [str(i) for i in inputs]
        self.device = str(device)
        # The layer's placement is (device, tower): a tower is one of the model-parallel halves (the
        # paper's two GPUs) and on CUDA runs on its own stream of the device (stream slot = tower).
        # An edge between two placements gets a Copy layer, also when both name the same device.
        self.tower = int(tower)
        unknown = set(options) - set(self._options)
        if unknown:
            raise ValueError(f"layer '{name}' ({self.type}): unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(self._options)}")
        for key, default in self._options.items():
            setattr(self, key, options.get(key, default))
        if self.max_inputs is not None and len(self.inputs) > self.max_inputs:
            raise ValueError(f"layer '{name}' ({self.type}) takes at most {self.max_inputs} input(s), "
                             f"got {self.inputs}")
        if self.type not in ("data",) and not self.inputs:
            raise ValueError(f"layer '{name}' ({self.type}) needs inputs=[...]")
        self.params: list[Param] = []
        self.in_shapes: list[tuple] = []
        self.out_shape: tuple = ()
        self.index = 0  # position in the Net (dropout counters use it)

    def config(self) -> dict:
        d = {"name": self.name, "type": self.type}
        inputs = getattr(self, "source_inputs", self.inputs)
        if inputs:
            d["inputs"] = list(inputs)
        if self.device != "cpu":
            d["device"] = self.device
        if self.tower:
            d["tower"] = self.tower
        for key, default in self._options.items():
            v = getattr(self, key)
            if isinstance(v, tuple):
                v = list(v)
            if v != default:
                d[key] = v
        return d

    # -- to override ---------------------------------------------------------------------------
    def setup(self, in_shapes: list) -> tuple:
        """Check the per-sample input shapes, create the Params' specs, return the output shape."""
        raise NotImplementedError

    def forward(self, xs, y, ctx: Context):
        raise NotImplementedError

    def backward(self, xs, y, dy, dxs, accumulate, ctx: Context):
        """Write each dxs[i] (None: not needed) with accumulate[i] (=/+=), and every param grad."""
        raise NotImplementedError

    def flops(self) -> int:
        """Forward floating-point operations per sample (2 x multiply-adds of conv and fc)."""
        return 0

    def buffers(self, n: int):
        """Allocate any per-batch buffers (e.g. max-pool argmax) for batch size n."""
        self.commit_buffers(self.new_buffers(n))

    def new_buffers(self, n: int) -> dict:
        """The per-batch buffers for batch size n, allocated but not installed: {attribute: Tensor}
        (only those that change). Net allocates every layer's before installing any, so a
        MemoryError leaves the layers as they were."""
        return {}

    def commit_buffers(self, buffers: dict):
        for name, value in buffers.items():
            setattr(self, name, value)

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params)

    def __repr__(self):
        tower = f", tower={self.tower}" if self.tower else ""
        return f"{type(self).__name__}({self.name!r}, inputs={self.inputs}, device={self.device!r}{tower})"

    def _fail(self, msg):
        raise ValueError(f"layer '{self.name}' ({self.type}): {msg}")


# --------------------------------------------------------------------------------------------------

class Data(Layer):
    """The input: images (N, H, W, C) float32, preprocessed like the loader (see Net.predict)."""
    type = "data"
    max_inputs = 0
    _options = {"shape": None}

    def setup(self, in_shapes):
        ok = isinstance(self.shape, (list, tuple)) and len(self.shape) == 3 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in self.shape)
        if not ok:
            self._fail(f"needs shape=[H, W, C] of whole numbers >= 1 (positive sizes), got {self.shape!r}")
        self.shape = tuple(int(s) for s in self.shape)
        return self.shape

    def forward(self, xs, y, ctx):
        pass  # the Net puts the batch in place of the output

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        pass


_LEARNED = {"init_std": None, "bias_init": 0.0, "lr_mult": 1.0, "bias_lr_mult": 2.0, "wd_mult": 1.0,
            "bias_wd_mult": 0.0, "bias": True, "relu": False}


def _init_std(spec, fan_in: int) -> float:
    """init_std of a conv/fc layer: a number, None or "he" (sqrt(2 / fan_in), for ReLU nets) or
    "torch" (sqrt(1 / (3 fan_in)): the std of PyTorch's default kaiming_uniform(a=sqrt(5)))."""
    if fan_in < 1:
        raise ValueError(f"fan-in {fan_in}: the layer has no inputs to weigh")
    if spec is None or spec == "he":
        return math.sqrt(2.0 / fan_in)
    if spec == "torch":
        return math.sqrt(1.0 / (3.0 * fan_in))
    if isinstance(spec, str):
        raise ValueError(f"init_std must be a number, 'he' or 'torch', got {spec!r}")
    return float(spec)


def _weight_names(n):
    return ["weight"] if n == 1 else [f"weight{i}" for i in range(n)]


class Conv(Layer):
    """Convolution: y (N, P, Q, K) = sum over inputs of conv(x_i, w_i) + b, optional fused ReLU.

    filters K, size R or (R, S), stride, pad, groups (each of `groups` channel groups of the input
    feeds K/groups filters); init_std: a number, None/"he" (sqrt(2 / fan_in)) or "torch". Biases train at
    bias_lr_mult x the rate with bias_wd_mult x the decay (cuda-convnet: 2x, no decay). algorithm: "auto"
    (the backend picks per shape and pass), "direct" or "winograd" (stride-1 3x3 or 5x5, pad < size; CPU and CUDA).
    """
    type = "conv"
    accumulates = True
    max_inputs = None
    _options = {"filters": None, "size": None, "stride": 1, "pad": 0, "groups": 1, "algorithm": "auto", **_LEARNED}
    ALGORITHMS = ("auto", "direct", "winograd")

    def setup(self, in_shapes):
        if not self.filters or not self.size:
            self._fail("needs filters= and size=")
        _check_learned(self)
        if self.algorithm not in self.ALGORITHMS:
            self._fail(f"algorithm={self.algorithm!r}: must be one of {', '.join(self.ALGORITHMS)}")
        self.size, self.stride, self.pad = _pair(self.size, "size"), _pair(self.stride, "stride"), _pair(self.pad, "pad")
        K, (R, S), g = _whole(self.filters, "filters", 1), self.size, _whole(self.groups, "groups", 1, INT_MAX)
        if self.algorithm == "winograd" and not (self.stride == (1, 1) and R == S and R in (3, 5)
                                                 and max(self.pad) < R):
            self._fail(f"algorithm='winograd' needs stride 1 and a 3x3 or 5x5 filter with pad < size, got "
                       f"size {self.size}, stride {self.stride}, pad {self.pad}")
        out = None
        self.params = []
        for i, shp in enumerate(in_shapes):
            if len(shp) != 3:
                self._fail(f"input {self.inputs[i]!r} has shape {shp}, want (H, W, C)")
            H, W, C = shp
            if C % g or K % g:
                self._fail(f"groups={g} must divide input channels {C} and filters {K}")
            w_shape = (K, R, S, C // g)
            try:
                o = _C.conv_output_shape((1, H, W, C), w_shape, self.stride, self.pad, g)[1:]
            except ValueError as e:
                self._fail(f"input {self.inputs[i]!r} {shp}: {e}")
            if out is not None and tuple(o) != out:
                self._fail(f"inputs give different output shapes {out} and {tuple(o)}; they must agree to be summed")
            out = tuple(o)
            fan_in = R * S * (C // g) * len(in_shapes)
            std = _init_std(self.init_std, fan_in)
            self.params.append(Param(_weight_names(len(in_shapes))[i], w_shape, std, 0.0,
                                     self.lr_mult, self.wd_mult))
        self.bias_param = None
        if self.bias:
            self.bias_param = Param("bias", (K,), 0.0, self.bias_init, self.bias_lr_mult, self.bias_wd_mult)
            self.params.append(self.bias_param)
        self.weights = self.params[:len(in_shapes)]
        return out

    def forward(self, xs, y, ctx):
        b = self.bias_param.value if self.bias_param else None
        last = len(self.weights) - 1
        for i, (x, w) in enumerate(zip(xs, self.weights)):  # ReLU fused into the last input's epilogue
            ops.conv_forward(x, w.value, b if i == 0 else None, y, self.stride, self.pad, self.groups, i > 0,
                             bool(self.relu) and i == last, self.algorithm)

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if self.relu:
            ops.relu_backward(y, dy, dy)  # dy is this layer's own gradient buffer: safe in place
        db = self.bias_param.grad if self.bias_param else None
        for i, (x, w) in enumerate(zip(xs, self.weights)):
            ops.conv_backward_filter(dy, x, w.grad, db if i == 0 else None, self.stride, self.pad,
                                     self.groups, False, self.algorithm)
            if dxs[i] is not None:
                ops.conv_backward_data(dy, w.value, dxs[i], self.stride, self.pad, self.groups, accumulate[i],
                                       self.algorithm)

    def flops(self):
        P, Q, K = self.out_shape
        return sum(2 * P * Q * K * w.shape[1] * w.shape[2] * w.shape[3] for w in self.weights)


class FC(Layer):
    """Fully connected: y (N, out) = sum over inputs of x_i (N, in_i) w_i^T + b, optional fused ReLU.
    An image input (N, H, W, C) is flattened in (H, W, C) order."""
    type = "fc"
    accumulates = True
    max_inputs = None
    _options = {"outputs": None, **_LEARNED}

    def setup(self, in_shapes):
        if not self.outputs:
            self._fail("needs outputs=")
        _check_learned(self)
        out = _whole(self.outputs, "outputs", 1)
        fan_in = sum(math.prod(s) for s in in_shapes)  # Python ints: no int64 wrap-around
        if out * fan_in > 2**60:  # 2^62 bytes of float32, what a Tensor may hold
            self._fail(f"weights of {out} x {fan_in} elements: more than any memory holds")
        std = _init_std(self.init_std, fan_in)
        names = _weight_names(len(in_shapes))
        self.params = [Param(names[i], (out, math.prod(s)), std, 0.0, self.lr_mult, self.wd_mult)
                       for i, s in enumerate(in_shapes)]
        self.weights = list(self.params)
        self.bias_param = None
        if self.bias:
            self.bias_param = Param("bias", (out,), 0.0, self.bias_init, self.bias_lr_mult, self.bias_wd_mult)
            self.params.append(self.bias_param)
        return (out,)

    @staticmethod
    def _flat(t):
        shape = t.shape
        return t if len(shape) == 2 else t.reshape((shape[0], int(np.prod(shape[1:]))))

    def forward(self, xs, y, ctx):
        b = self.bias_param.value if self.bias_param else None
        last = len(self.weights) - 1
        for i, (x, w) in enumerate(zip(xs, self.weights)):  # ReLU fused into the last input's epilogue
            ops.fc_forward(self._flat(x), w.value, b if i == 0 else None, y, i > 0, bool(self.relu) and i == last)

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if self.relu:
            ops.relu_backward(y, dy, dy)
        for i, (x, w) in enumerate(zip(xs, self.weights)):
            db = self.bias_param.grad if (self.bias_param and i == 0) else None
            ops.fc_backward_weights(dy, self._flat(x), w.grad, db)
            if dxs[i] is not None:
                ops.fc_backward_data(dy, w.value, self._flat(dxs[i]), accumulate[i])

    def flops(self):
        return sum(2 * w.shape[0] * w.shape[1] for w in self.weights)


class ReLU(Layer):
    type = "relu"

    def setup(self, in_shapes):
        return tuple(in_shapes[0])

    def forward(self, xs, y, ctx):
        ops.relu_forward(xs[0], y)

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is not None:
            ops.relu_backward(y, dy, dxs[0])


class Dropout(Layer):
    """Inverted dropout (drop with probability p, scale the kept by 1/(1-p)) while training; the
    identity at test time. The mask is Philox4x32-10 keyed by (run seed, counter) with counter =
    step * 1024 + layer index, regenerated in the backward pass: CPU and CUDA draw the same mask and a
    resumed run draws the masks the uninterrupted run would have. Sample n of the pass takes the
    draw's elements from (ctx.sample_offset + n) * features on: the mask belongs to the sample's index
    in the global batch, not its place in a micro-batch, so splitting a batch across micro-batches or
    data-parallel ranks draws the same masks as one pass over the whole batch."""
    type = "dropout"
    _options = {"p": 0.5}

    def setup(self, in_shapes):
        if not 0.0 <= float(self.p) < 1.0:
            self._fail(f"p must be in [0, 1), got {self.p}")
        return tuple(in_shapes[0])

    def counter(self, step: int) -> int:
        return dropout_counter(step, self.index)

    def offset(self, ctx) -> int:
        """The draw's element index of this pass's first element: sample_offset * features."""
        return ctx.sample_offset * int(np.prod(self.out_shape))

    def forward(self, xs, y, ctx):
        if ctx.train and self.p > 0:
            ops.dropout_forward(xs[0], y, float(self.p), ctx.seed, self.counter(ctx.step), self.offset(ctx))
        else:
            ops.copy_(y, xs[0])

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is None:
            return
        if ctx.train and self.p > 0:
            ops.dropout_backward(dy, dxs[0], float(self.p), ctx.seed, self.counter(ctx.step), self.offset(ctx))
        else:
            ops.copy_(dxs[0], dy)


def dropout_counter(step: int, layer_index: int) -> int:
    """The Philox counter of dropout layer `layer_index` at training step `step`."""
    if not 0 <= layer_index < 1024:
        raise ValueError(f"dropout counter: layer index {layer_index} out of [0, 1024)")
    return int(step) * 1024 + int(layer_index)


class LRN(Layer):
    """Local response normalisation across channels, the paper's b = a / (k + alpha sum a^2)^beta
    over `size` neighbouring channels (k=2, n=5, alpha=1e-4, beta=0.75). cuda-convnet and PyTorch
    divide alpha by size: set alpha_over_size=True for theirs.

    groups=g normalises each of g channel groups on its own (the single-device form of the two-tower
    net, where each tower's LRN sees only its own channels): the (N, H, W, C) tensor is viewed as
    (N, H, W * g, C / g), no copy."""
    type = "lrn"
    _options = {**_C.lrn_defaults, "alpha_over_size": False, "groups": 1}  # csrc/ops.h LrnDefaults

    def setup(self, in_shapes):
        if len(in_shapes[0]) != 3:
            self._fail(f"input shape {in_shapes[0]} is not (H, W, C)")
        if _whole(self.groups, "groups", 1, INT_MAX) < 1 or in_shapes[0][2] % int(self.groups):
            self._fail(f"groups={self.groups} must divide the {in_shapes[0][2]} channels")
        _whole(self.size, "size", 1, INT_MAX)
        if _number(self.k, "k") <= 0:
            self._fail(f"k must be > 0, got {self.k!r}")
        _number(self.alpha, "alpha")
        _number(self.beta, "beta")
        _flag(self.alpha_over_size, "alpha_over_size")
        return tuple(in_shapes[0])

    def _args(self):
        return int(self.size), float(self.alpha), float(self.beta), float(self.k), bool(self.alpha_over_size)

    def _view(self, t):
        g = int(self.groups)
        if g == 1:
            return t
        n, h, w, c = t.shape
        return t.reshape((n, h, w * g, c // g))

    def forward(self, xs, y, ctx):
        ops.lrn_forward(self._view(xs[0]), self._view(y), *self._args())

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is not None:
            v = self._view
            ops.lrn_backward(v(xs[0]), v(y), v(dy), v(dxs[0]), *self._args())


class _Pool(Layer):
    _options = dict(_C.pool_defaults)  # csrc/ops.h PoolDefaults: the paper's overlapping 3/2

    def setup(self, in_shapes):
        self.size, self.stride, self.pad = _pair(self.size, "size"), _pair(self.stride, "stride"), _pair(self.pad, "pad")
        shp = in_shapes[0]
        if len(shp) != 3:
            self._fail(f"input shape {shp} is not (H, W, C)")
        try:
            return tuple(_C.pool_output_shape((1,) + tuple(shp), self.size, self.stride, self.pad)[1:])
        except ValueError as e:
            self._fail(f"input {shp}: {e}")


class MaxPool(_Pool):
    """Max-pooling; size 3 stride 2 is the paper's overlapping pooling. Keeps the argmax (int32) of
    the last forward pass for the backward pass."""
    type = "maxpool"

    def new_buffers(self, n):
        shape = (n,) + tuple(self.out_shape)
        if getattr(self, "_argmax", None) is None or self._argmax.shape != shape \
                or self._argmax.device != self.device:
            return {"_argmax": _C.Tensor.empty(shape, self.device, "int32")}
        return {}

    def forward(self, xs, y, ctx):
        self.buffers(xs[0].shape[0])
        ops.max_pool_forward(xs[0], y, self._argmax, self.size, self.stride, self.pad)

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is not None:
            ops.max_pool_backward(dy, self._argmax, dxs[0], self.size, self.stride, self.pad)


class AvgPool(_Pool):
    type = "avgpool"

    def forward(self, xs, y, ctx):
        ops.avg_pool_forward(xs[0], y, self.size, self.stride, self.pad)

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is not None:
            ops.avg_pool_backward(dy, dxs[0], self.size, self.stride, self.pad)


class SoftmaxCrossEntropy(Layer):
    """The cost: softmax of the logits (N, classes) and cross-entropy with the labels. Its output is
    the (3,) statistics [mean loss, top-1 hits, top-5 hits], on the device. The gradient of the mean
    loss is computed in the same call when a backward pass follows."""
    type = "softmax"

    def setup(self, in_shapes):
        if len(in_shapes[0]) != 1:
            self._fail(f"input shape {in_shapes[0]} is not (classes,): feed it an fc layer")
        self.num_classes = int(in_shapes[0][0])
        return (3,)

    def forward(self, xs, y, ctx):
        if ctx.labels is None:
            self._fail("forward needs labels")
        dlogits = None
        if ctx.backward:
            buf = getattr(self, "_buf", None)
            if buf is None or buf.shape != xs[0].shape:
                self._buf = buf = _C.Tensor.empty(xs[0].shape, self.device, "float32")
            dlogits = buf
        self._dlogits = dlogits
        ops.softmax_cross_entropy(xs[0], ctx.labels, dlogits, y)

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is None:
            return
        if self._dlogits is None:
            self._fail("backward without a forward pass that asked for it")
        ops.copy_(dxs[0], self._dlogits)


class Copy(Layer):
    """y <- x between two placements (device, tower): the Net inserts one on every edge whose ends are
    placed differently (model parallelism), also between two towers on the same device. Its own
    placement is the reader's; `src_device` / `src_tower` are the input's (set by the Net).

    Forward copies the activation to the reader's placement, backward copies the gradient back. On
    CUDA both go through `_C.copy_between`: a dedicated copy stream per (source, destination) device
    pair, ordered with events after the producer's stream and before the consumer's (cuda/runtime/device_runtime.cu).
    When the input's gradient already holds another reader's contribution (accumulate), the gradient
    lands in a receive buffer on the input's placement and is added there.

    bytes_forward / bytes_backward count the bytes moved since the Net's reset_copy_stats()."""
    type = "copy"
    accumulates = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.src_device, self.src_tower = self.device, self.tower
        self.needs_recv = False  # set by the Net: the input has other readers (gradients accumulate)
        self._recv = None
        self.bytes_forward = self.bytes_backward = 0

    def setup(self, in_shapes):
        return tuple(in_shapes[0])

    def new_buffers(self, n):
        # Allocated with the other per-batch buffers, before a pass starts: a block reused here is
        # then safe for the copy stream and the source tower's stream alike (see Net).
        shape = (n,) + tuple(self.out_shape)
        if self.needs_recv:
            if self._recv is None or tuple(self._recv.shape) != shape or self._recv.device != self.src_device:
                return {"_recv": _C.Tensor.empty(shape, self.src_device, "float32")}
            return {}
        return {"_recv": None}

    def forward(self, xs, y, ctx):
        _C.copy_between(y, self.tower, xs[0], self.src_tower)
        self.bytes_forward += y.nbytes

    def backward(self, xs, y, dy, dxs, accumulate, ctx):
        if dxs[0] is None:
            return
        if accumulate[0]:
            if self._recv is None or self._recv.shape != dy.shape:
                self._fail("no receive buffer for an accumulated gradient (the Net allocates it)")
            _C.copy_between(self._recv, self.src_tower, dy, self.tower)
            _C.set_stream(self.src_device, self.src_tower)  # the add runs on the input's tower
            ops.add_(dxs[0], self._recv, 1.0)
        else:
            _C.copy_between(dxs[0], self.src_tower, dy, self.tower)
        self.bytes_backward += dy.nbytes


LAYER_TYPES = {cls.type: cls for cls in (Data, Conv, FC, ReLU, Dropout, LRN, MaxPool, AvgPool,
                                         SoftmaxCrossEntropy, Copy)}
_ALIASES = {"input": "data", "pool": "maxpool", "max_pool": "maxpool", "avg_pool": "avgpool",
            "cost": "softmax", "softmax_cross_entropy": "softmax", "fullyconnected": "fc", "fc_layer": "fc"}


def layer_from_config(d: dict, device: str | None = None) -> Layer:
    """A layer from its dict {"name", "type", "inputs", options...}; `device` overrides d["device"]."""
    if not isinstance(d, dict):
        raise ValueError(f"layer config {d!r}: want a dict with 'name' and 'type'")
    d = dict(d)
    try:
        name, kind = d.pop("name"), str(d.pop("type")).lower()
    except KeyError as e:
        raise ValueError(f"layer config {d!r} needs 'name' and 'type'") from e
    kind = _ALIASES.get(kind, kind)
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer '{name}': unknown type {kind!r}; known: {sorted(LAYER_TYPES)}")
    inputs = d.pop("inputs", [])
    dev = d.pop("device", "cpu")
    tower = d.pop("tower", 0)
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, str) for i in inputs):
        raise ValueError(f"layer '{name}' ({kind}): inputs must be a list of layer names, got {inputs!r}")
    try:
        return LAYER_TYPES[kind](name, inputs, device or dev, tower=tower, **d)
    except (TypeError, ValueError) as e:
        if str(e).startswith(f"layer '{name}'"):
            raise
        raise ValueError(f"layer '{name}' ({kind}): {e}") from None
