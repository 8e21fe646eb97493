"""Net: named layers in a DAG, each pinned to a device, run forward and backward in topological order.

The net is described as data, separately from the learning hyper-parameters (as cuda-convnet did):
a list of layer dicts (see layers.py), a JSON file holding that list (or {"layers": [...]}), or a
cuda-convnet-like INI file with one section per layer::

    [conv1]
    type = conv
    inputs = data
    filters = 32
    size = 5
    pad = 2
    relu = true

Rules of the graph:
  * exactly one `data` layer (the input, shape [H, W, C]) and at most one `softmax` cost;
  * a layer with several inputs sums them (conv and fc keep a weight per input);
  * a tensor read by several layers gets the SUM of their gradients (the first writer overwrites, the
    others accumulate: accumulate=True in conv/fc, a scratch tensor and add_ for the rest);
  * every layer has a placement (device, tower). Where an input is placed differently from the layer
    reading it, the Net inserts a `Copy` layer (named "<input>@<device>/<tower>") that moves the
    activation forward and its gradient back: model parallelism (the paper's two towers, tower a on
    cuda:0 and tower b on cuda:1). Two towers on the SAME device still get their copies (the same
    graph runs on one GPU or on the CPU, so the split is tested anywhere).

Streams (CUDA). Each layer runs on its device's compute stream number `tower` (`_C.set_stream`), so
the towers of one device overlap; copies run on copy streams ordered by events (cuda/runtime/device_runtime.cu).
Every pass (forward, backward, update) starts and ends with `_C.stream_barrier` over the net's
devices: all streams wait for each other, so a pass sees everything the previous one wrote, the
parameters updated on stream 0 are seen by every tower, and the buffers the Net keeps (allocated
between passes) are safe on any stream. Inside a pass the only cross-stream edges are the copies.

Activations are (N, H, W, C); fully-connected outputs (N, features).
"""
from __future__ import annotations

import configparser
import json
import os

import numpy as np

from . import _C
from ._C import ops
from .precision import check_precision, use_precision
from .preprocess import PIXEL_SCALE, check_pixel_range, test_input
from .layers import Context, Copy, Data, Layer, SoftmaxCrossEntropy, layer_from_config
from .tensor import as_labels

__all__ = ["Net", "load_config"]

DEFAULT_INPUT_SCALE = PIXEL_SCALE  # inputs (pixel - mean) / 64, as the BatchLoader makes them
MAX_TOWERS = _C.stream_slots  # compute streams per CUDA device (csrc/streams.h)


def _parse_ini_value(text: str):
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if "," in text:
        return [_parse_ini_value(p) for p in text.split(",") if p.strip()]
    return text


def load_config(source):
    """A net description -> (list of layer dicts, meta dict). `source`: a list of dicts, a dict with
    "layers" (and optional "meta"), or a path to a .json or .ini/.cfg file."""
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"net config not found: {path}")
        try:
            with open(path) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:  # a folder, no permission, a binary file
            raise ValueError(f"net config {path}: cannot be read as text ({e})") from None
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            if path.endswith(".json"):
                raise ValueError(f"net config {path}: invalid JSON: {e}") from e
            parsed = None
        if parsed is not None:
            source = parsed
        else:
            cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
            cp.optionxform = str
            try:
                cp.read_string(text, source=path)
            except configparser.Error as e:
                raise ValueError(f"net config {path}: " + " ".join(str(e).split())) from None
            layers = []
            for section in cp.sections():
                d = {"name": section}
                for key, value in cp.items(section):
                    v = _parse_ini_value(value)
                    if key == "inputs" and not isinstance(v, list):
                        v = [v]
                    d[key] = v
                layers.append(d)
            return layers, {}
        return _checked_layers(source, f"net config {path}")
    return _checked_layers(source, "net config")


def _checked_layers(source, what):
    """(layer dicts or Layers, meta) of a parsed config; ValueError naming `what` if it has another form."""
    meta = {}
    if isinstance(source, dict):
        if not isinstance(source.get("layers"), list) or not isinstance(source.get("meta", {}), dict):
            raise ValueError(f"{what}: want a list of layers or {{\"layers\": [...], \"meta\": {{...}}}}, "
                             f"got a dict with keys {sorted(map(str, source))}")
        source, meta = source["layers"], dict(source.get("meta", {}))
    if not isinstance(source, (list, tuple)):
        raise ValueError(f"{what}: want a list of layers: a list of layer dicts, got {type(source).__name__}")
    for i, d in enumerate(source):
        if not isinstance(d, (dict, Layer)):
            raise ValueError(f"{what}: layer {i} is a {type(d).__name__} ({d!r}); every layer is a dict with "
                             f"'name' and 'type'")
    return [dict(d) if isinstance(d, dict) else d for d in source], meta


class Net:
    """A network: `Net(layers, device=None, seed=0, meta=None)`.

    layers  list of layer dicts or Layer objects, a {"layers": [...], "meta": {...}} dict, or a path
    device  put every layer on this device (None keeps each layer's "device", default "cpu"); the
            layers keep their towers, so a two-tower net keeps its copies
    devices put the layers of tower t on devices[t] (e.g. ["cuda:0", "cuda:1"], or ["cpu", "cpu"])
    seed    seed of the parameter initialisation (numpy Generator, in topological order)
    meta    free-form information kept with the net (e.g. "input_scale", "name")
    allocate  False builds the graph and shapes only (for summary()): no parameter tensors

    forward(x, labels, train, step) runs the layers; backward() the gradients; update(lr, ...) one
    SGD step with momentum over all parameters. predict(images) returns class probabilities.
    """

    def __init__(self, layers, device: str | None = None, seed: int = 0, meta: dict | None = None,
                 allocate: bool = True, devices=None, precision: str = "fp32"):
        self.precision = precision  # fp32 | tf32 | bf16 of its GEMMs (convnet/precision.py)
        configs, file_meta = load_config(layers)
        self.meta = {**file_meta, **(meta or {})}
        user = [c if isinstance(c, Layer) else layer_from_config(c, device) for c in configs]
        if device is not None and devices is not None:
            raise ValueError("Net: give device= (everything on one) or devices= (one per tower), not both")
        if device is not None:
            for layer in user:
                layer.device = device
        if devices is not None:
            devices = [str(d) for d in ([devices] if isinstance(devices, str) else devices)]
            for layer in user:
                if layer.tower >= len(devices):
                    raise ValueError(f"Net: layer '{layer.name}' is in tower {layer.tower} but devices={devices} "
                                     f"names {len(devices)}")
                layer.device = devices[layer.tower]
        for layer in user:
            if not 0 <= layer.tower < MAX_TOWERS:
                raise ValueError(f"Net: layer '{layer.name}': tower {layer.tower} outside [0, {MAX_TOWERS})")
        names = [l.name for l in user]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"Net: duplicate layer name(s) {sorted(dup)}")
        for i, layer in enumerate(user):
            layer.index = i
        self._user_layers = user
        self.layers = self._sort(user)
        self._insert_copies()
        self._setup_shapes()
        self.mean = None          # preprocessing: the training split's mean (image (H, W, 3) or (3,))
        self._n = None            # batch size the buffers are allocated for
        self._ctx = None
        self._slot = {}           # device -> the compute stream selected last (CUDA)
        if allocate:  # allocate=False: shapes only (summary, inspection), no parameter tensors
            self.init_params(seed)

    @property
    def precision(self) -> str:
        """fp32 | tf32 | bf16: the arithmetic of the conv and FC GEMMs in this net's passes
        (python/convnet/precision.py). Parameters, gradients and activations stay float32."""
        return self._precision

    @precision.setter
    def precision(self, value: str):
        self._precision = check_precision(value, "Net")

    # -- graph -------------------------------------------------------------------------------------
    @staticmethod
    def _sort(layers):
        by_name = {l.name: l for l in layers}
        for l in layers:
            for i in l.inputs:
                if i not in by_name:
                    raise ValueError(f"Net: layer '{l.name}' reads unknown input {i!r}; layers: {list(by_name)}")
        order, done = [], set()
        pending = list(layers)
        while pending:  # Kahn's algorithm, stable in the config's order
            progressed = False
            for l in list(pending):
                if all(i in done for i in l.inputs):
                    order.append(l)
                    done.add(l.name)
                    pending.remove(l)
                    progressed = True
            if not progressed:
                raise ValueError(f"Net: the graph has a cycle among {[l.name for l in pending]}")
        return order

    @staticmethod
    def needs_copy(src: Layer, dst: Layer) -> bool:
        """Whether the edge src -> dst gets a Copy layer: when their placements (device, tower)
        differ, also for two towers on the same device."""
        return (src.device, src.tower) != (dst.device, dst.tower)

    def _insert_copies(self):
        by_name = {l.name: l for l in self.layers}
        out, made = [], {}
        for layer in self.layers:
            new_inputs = []
            for i in layer.inputs:
                src = by_name[i]
                if not isinstance(layer, Copy) and not isinstance(src, Copy) and self.needs_copy(src, layer):
                    key = (i, layer.device, layer.tower)
                    if key not in made:
                        copy = Copy(f"{i}@{layer.device}/{layer.tower}", [i], layer.device, tower=layer.tower)
                        copy.src_device, copy.src_tower = src.device, src.tower
                        copy.index = 1023
                        made[key] = copy
                        out.append(copy)  # after its source (already in `out`), before its reader
                    new_inputs.append(made[key].name)
                else:
                    new_inputs.append(i)
            layer.source_inputs = list(layer.inputs)  # as described (config() gives these back)
            layer.inputs = new_inputs
            out.append(layer)
        self.layers = out
        self.copies = list(made.values())
        self._by_name = {l.name: l for l in self.layers}

    def _setup_shapes(self):
        datas = [l for l in self.layers if isinstance(l, Data)]
        if len(datas) != 1:
            raise ValueError(f"Net: need exactly one 'data' layer, got {[l.name for l in datas]}")
        self.data_layer = datas[0]
        costs = [l for l in self.layers if isinstance(l, SoftmaxCrossEntropy)]
        if len(costs) > 1:
            raise ValueError(f"Net: at most one 'softmax' cost layer, got {[l.name for l in costs]}")
        self.cost_layer = costs[0] if costs else None
        for layer in self.layers:
            layer.in_shapes = [self._by_name[i].out_shape for i in layer.inputs]
            try:
                layer.out_shape = tuple(layer.setup(layer.in_shapes))
            except (TypeError, ValueError, ArithmeticError) as e:  # a value of the wrong type or range
                if str(e).startswith(f"layer '{layer.name}'"):
                    raise
                raise ValueError(f"layer '{layer.name}' ({layer.type}): {e}") from None
        self.output_name = self.cost_layer.inputs[0] if self.cost_layer else self.layers[-1].name
        consumers = {l.name: [] for l in self.layers}
        for l in self.layers:
            for i in l.inputs:
                consumers[i].append(l.name)
        self.consumers = consumers
        needs = {}
        for l in self.layers:
            needs[l.name] = not isinstance(l, Data) and (bool(l.params) or any(needs[i] for i in l.inputs))
        self.needs_grad = needs
        for c in self.copies:  # a gradient copied back into a tensor other layers also read: add it
            c.needs_recv = needs[c.inputs[0]] and len(consumers[c.inputs[0]]) > 1

    # -- properties ---------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple:
        """(H, W, C) of the images the net takes."""
        return tuple(self.data_layer.out_shape)

    @property
    def num_classes(self) -> int:
        return int(self._by_name[self.output_name].out_shape[-1])

    @property
    def input_scale(self) -> float:
        return float(self.meta.get("input_scale", DEFAULT_INPUT_SCALE))

    @property
    def devices(self) -> list:
        return sorted({l.device for l in self.layers})

    @property
    def placements(self) -> list:
        """The (device, tower) pairs the layers run on."""
        return sorted({(l.device, l.tower) for l in self.layers})

    # -- copies and streams -------------------------------------------------------------------------
    def copy_plan(self, n: int) -> list:
        """[(copy name, source placement, destination placement, forward bytes, backward bytes)] of
        one training step at batch n, from the layer shapes: what the copy layers move."""
        plan = []
        for c in self.copies:
            b = 4 * n * int(np.prod(c.out_shape))
            plan.append((c.name, (c.src_device, c.src_tower), (c.device, c.tower), b,
                         b if self.needs_grad[c.inputs[0]] else 0))
        return plan

    def copy_stats(self) -> dict:
        """{copy name: (bytes forward, bytes backward)} moved since reset_copy_stats()."""
        return {c.name: (c.bytes_forward, c.bytes_backward) for c in self.copies}

    def reset_copy_stats(self):
        for c in self.copies:
            c.bytes_forward = c.bytes_backward = 0

    def _cuda_devices(self):
        return sorted({l.device for l in self.layers if l.device.startswith("cuda")})

    def _barrier(self):
        """All streams of the net's CUDA devices wait for each other (see the module docstring)."""
        devs = self._cuda_devices()
        if devs:
            _C.stream_barrier(devs)
        self._slot = {}

    def _use(self, layer: Layer):
        """Launch what follows on the layer's stream (its device's compute stream number `tower`)."""
        if layer.device != "cpu" and self._slot.get(layer.device) != layer.tower:
            _C.set_stream(layer.device, layer.tower)
            self._slot[layer.device] = layer.tower
        if isinstance(layer, Copy):
            self._slot.pop(layer.src_device, None)  # its backward may switch the source's stream

    def _end_pass(self):
        self._barrier()
        for d in self._cuda_devices():
            _C.set_stream(d, 0)  # work outside a pass (uploads, read-backs, the loop's sums) on stream 0

    def layer(self, name: str) -> Layer:
        return self._by_name[name]

    def config(self) -> dict:
        """The net as data: {"layers": [layer dicts in the original order], "meta": {...}}."""
        return {"layers": [l.config() for l in self._user_layers], "meta": dict(self.meta)}

    def named_params(self):
        """[(f"{layer}.{param}", Param)] in topological order."""
        return [(f"{l.name}.{p.name}", p) for l in self.layers for p in l.params]

    @property
    def num_params(self) -> int:
        return sum(p.size for _, p in self.named_params())

    # -- parameters ---------------------------------------------------------------------------------
    def init_params(self, seed: int = 0):
        """(Re)initialise every parameter from `seed` and zero the momentum buffers."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            for p in layer.params:
                p.allocate(layer.device, p.initial_value(rng))

    def state(self) -> dict:
        """{f"{layer}.{param}": float32 array} of the values and {...+".velocity"}: of the momentum."""
        out = {}
        for name, p in self.named_params():
            out[name] = p.value.numpy()
            out[name + ".velocity"] = p.velocity.numpy()
        return out

    def load_state(self, state: dict, velocities: bool = True, source: str = "state"):
        """Set the parameters (and momentum buffers) from a dict like `state()` gives."""
        for name, p in self.named_params():
            keys = [name] + ([name + ".velocity"] if velocities else [])
            for key in keys:
                if key not in state:
                    raise ValueError(f"{source}: no entry for parameter {key!r}")
                arr = np.asarray(state[key])
                if arr.shape != p.shape:
                    raise ValueError(f"{source}: parameter {key!r} has shape {arr.shape}, the net wants {p.shape}")
            p.value = _C.Tensor.from_numpy(np.ascontiguousarray(state[name], dtype=np.float32), p.value.device)
            if velocities:
                p.velocity = _C.Tensor.from_numpy(np.ascontiguousarray(state[name + ".velocity"], dtype=np.float32),
                                                  p.value.device)

    # -- passes -------------------------------------------------------------------------------------
    def _allocate(self, n: int):
        """Every per-batch buffer for batch size n. Allocate all first, then commit: a MemoryError
        (a batch too large) leaves the net exactly as it was, usable at its earlier batch size."""
        if self._n == n:
            return
        out, grad, layer_buffers = {}, {}, []
        for l in self.layers:
            if isinstance(l, Data):
                continue
            out[l.name] = _C.Tensor.empty((n,) + l.out_shape if not isinstance(l, SoftmaxCrossEntropy)
                                          else l.out_shape, l.device, "float32")
            if self.needs_grad[l.name] and self.consumers[l.name]:
                grad[l.name] = _C.Tensor.empty((n,) + l.out_shape, l.device, "float32")
            layer_buffers.append((l, l.new_buffers(n)))
        for l, buffers in layer_buffers:
            l.commit_buffers(buffers)
        self._out, self._grad = out, grad
        self._n = n

    def forward(self, x, labels=None, train: bool = False, step: int = 0, seed: int = 0,
                backward: bool | None = None, sample_offset: int = 0):
        """Run the net on x (N, H, W, C) float32 (numpy or Tensor) -> the cost's statistics (3,)
        [mean loss, top-1 hits, top-5 hits] as a device Tensor when labels are given (int32 (N,)),
        else the logits (N, classes) Tensor. `train` turns dropout on (masks keyed by (seed, step)
        and each sample's index sample_offset + n in the step's global batch, so x may be a slice of
        it); `backward` (default: train) keeps what backward() needs."""
        data = self.data_layer
        if isinstance(x, np.ndarray):
            if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(f"Net.forward: input shape {x.shape}, the net takes (N,) + {self.input_shape}")
            x = _C.Tensor.from_numpy(np.ascontiguousarray(x, dtype=np.float32), data.device)
        elif x.device != data.device:
            x = x.to(data.device)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"Net.forward: input shape {tuple(x.shape)}, the net takes (N,) + {self.input_shape}")
        n = int(x.shape[0])
        self._allocate(n)
        self._out[data.name] = x
        if labels is not None and self.cost_layer is not None:
            if isinstance(labels, _C.Tensor):
                if labels.dtype != "int32" or labels.shape != (n,):
                    raise ValueError(f"Net.forward: labels must be int32 ({n},), got {labels!r}")
            else:
                labels = _C.Tensor.from_numpy(as_labels(labels, self.cost_layer.num_classes, "Net.forward"),
                                              self.cost_layer.device)
            if labels.device != self.cost_layer.device:
                labels = labels.to(self.cost_layer.device)
        backward = train if backward is None else backward
        if backward and (labels is None or self.cost_layer is None):
            raise ValueError("Net.forward: a training pass needs labels and a softmax cost layer")
        ctx = Context(train, step, seed, labels, backward, sample_offset)
        self._ctx = ctx
        self._barrier()
        try:
            with use_precision(self.precision):
                for l in self.layers:
                    if isinstance(l, Data) or (isinstance(l, SoftmaxCrossEntropy) and labels is None):
                        continue
                    self._use(l)
                    l.forward([self._out[i] for i in l.inputs], self._out[l.name], ctx)
        finally:
            self._end_pass()
        if labels is not None and self.cost_layer is not None:
            return self._out[self.cost_layer.name]
        return self._out[self.output_name]

    def backward(self, on_layer=None):
        """Gradients of the mean loss of the last forward(..., backward=True) pass: every Param.grad.
        on_layer(layer), if given, is called after each layer's backward, in backward order, once
        that layer's Param.grad are final (data parallelism starts reducing them there, overlapping
        the rest of the pass; on CUDA the caller synchronises before reading them)."""
        ctx = self._ctx
        if ctx is None or not ctx.backward:
            raise RuntimeError("Net.backward: call forward(x, labels, train=True) first")
        self._barrier()
        try:
            with use_precision(self.precision):
                self._backward_layers(ctx, on_layer)
        finally:
            self._end_pass()

    def _backward_layers(self, ctx, on_layer=None):
        written = set()
        for l in reversed(self.layers):
            if isinstance(l, Data) or not self.needs_grad[l.name]:
                continue
            self._use(l)
            dy = None
            if l is not self.cost_layer:
                if l.name not in self._grad:
                    continue  # a dead end: nothing reads it
                dy = self._grad[l.name]
                if l.name not in written:
                    ops.fill_(dy, 0.0)  # no consumer sent a gradient (a branch not reaching the cost)
            dxs, acc, pending = [], [], []
            for i in l.inputs:
                if not self.needs_grad[i]:
                    dxs.append(None)
                    acc.append(False)
                    continue
                target = self._grad[i]
                accumulate = i in written
                if accumulate and not l.accumulates:
                    scratch = _C.Tensor.empty(target.shape, target.device, "float32")
                    pending.append((target, scratch))
                    dxs.append(scratch)
                    acc.append(False)
                else:
                    dxs.append(target)
                    acc.append(accumulate)
                written.add(i)
            l.backward([self._out[i] for i in l.inputs], self._out[l.name], dy, dxs, acc, ctx)
            for target, scratch in pending:
                ops.add_(target, scratch, 1.0)
            if on_layer is not None:
                on_layer(l)

    def update(self, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        """One SGD step, the paper's rule v <- m v - wd lr w - lr g; w <- w + v, with each Param's
        lr_mult and wd_mult; one sgd_update call per device."""
        groups = {}
        for l in self.layers:
            for p in l.params:
                g = groups.setdefault(l.device, ([], [], [], [], []))
                g[0].append(p.value)
                g[1].append(p.grad)
                g[2].append(p.velocity)
                g[3].append(float(lr) * p.lr_mult)
                g[4].append(float(weight_decay) * p.wd_mult)
        self._barrier()  # the gradients of every tower are complete; the update runs on stream 0
        try:
            for params, grads, vels, lrs, wds in groups.values():
                ops.sgd_update(params, grads, vels, lrs, wds, float(momentum))
        finally:
            self._end_pass()

    def train_step(self, x, labels, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                   step: int = 0, seed: int = 0):
        """forward + backward + update; returns the (3,) statistics Tensor (still on the device)."""
        stats = self.forward(x, labels, train=True, step=step, seed=seed)
        self.backward()
        self.update(lr, momentum, weight_decay)
        return stats

    def first_nonfinite_output(self, x, labels=None, step: int = 0, seed: int = 0):
        """The name of the first layer (topological order) whose training-mode forward output on x
        is not finite, or None: a diagnosis for a diverged run (reads every activation back)."""
        try:
            self.forward(x, labels, train=True, step=step, seed=seed)
            for l in self.layers:
                out = self._out.get(l.name)
                if out is not None and not np.isfinite(out.numpy()).all():
                    return l.name
        except Exception:  # a diagnosis only: never hide the real error behind a second one
            return None
        return None

    # -- inference ----------------------------------------------------------------------------------
    def preprocess(self, images) -> np.ndarray:
        """Images (N, H, W, C) uint8 (pixels 0..255) or float in pixel units [0, 255] -> the net's input:
        the centre crop of the net's size, minus the training mean (`net.mean`, cropped the same way),
        times `net.input_scale` (1/64 by default), exactly as the test-time loader does
        (preprocess.test_input). Float images in [0, 1] and values outside [0, 255] are refused."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        H, W, C = self.input_shape
        if x.ndim != 4 or x.shape[3] != C or x.shape[1] < H or x.shape[2] < W:
            raise ValueError(f"predict: images of shape {x.shape} do not fit the net's input (N, {H}, {W}, {C}): "
                             f"need (N, >={H}, >={W}, {C})")
        check_pixel_range(x, "predict")
        return test_input(x, self.mean, H, self.input_scale)[0]

    def logits(self, x, batch_size: int = 256) -> np.ndarray:
        """Logits (N, classes) of already preprocessed inputs x (N, H, W, C) float32."""
        out = []
        for k in range(0, len(x), batch_size):
            out.append(self.forward(np.ascontiguousarray(x[k:k + batch_size], dtype=np.float32)).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def predict(self, images, batch_size: int = 256, preprocess: bool = True) -> np.ndarray:
        """Class probabilities (N, classes) float32 for images (N, H, W, C) NHWC.

        preprocess=True (default): uint8 or float images in pixel units [0, 255], at least the net's
        input size; see `preprocess` (centre crop, mean subtraction, scale). preprocess=False: x is
        already the net's input (float32, exactly (N,) + input_shape)."""
        x = self.preprocess(images) if preprocess else np.asarray(images, dtype=np.float32)
        return softmax(self.logits(x, batch_size)).astype(np.float32)

    # -- summary ------------------------------------------------------------------------------------
    def summary(self, print_it: bool = True) -> str:
        """A table: layer, type, output shape (N, H, W, C), parameters, forward FLOPs per image
        (2 x multiply-adds of conv and fc; ReLU/LRN/pool are comparatively free and count 0), totals."""
        multi = len(self.placements) > 1
        rows = []
        for l in self.layers:
            shape = "(N, " + ", ".join(str(s) for s in l.out_shape) + ")" if not isinstance(l, SoftmaxCrossEntropy) \
                else "(3,) stats"
            kind = l.type + ("+relu" if getattr(l, "relu", False) else "")
            if getattr(l, "groups", 1) != 1:
                kind += f" g={l.groups}"
            row = [l.name, kind, ",".join(l.inputs), shape, f"{l.num_params:,}", f"{l.flops():,}"]
            if multi:
                row.append(f"{l.device}/{l.tower}")
            rows.append(row)
        head = ["layer", "type", "inputs", "output", "params", "FLOPs"] + (["device"] if multi else [])
        total = ["total", "", "", "", f"{self.num_params:,}", f"{sum(l.flops() for l in self.layers):,}"] + \
            ([""] if multi else [])
        widths = [max(len(r[c]) for r in rows + [head, total]) for c in range(len(head))]
        right = {4, 5}

        def fmt(r):
            return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip()
        sep = "-" * len(fmt(head))
        name = self.meta.get("name", "net")
        lines = [f"{name}: input (N, {', '.join(map(str, self.input_shape))}), {self.num_classes} classes",
                 fmt(head), sep] + [fmt(r) for r in rows] + [sep, fmt(total),
                 f"{self.num_params / 1e6:.2f} M parameters, {sum(l.flops() for l in self.layers) / 1e9:.3f} GFLOPs "
                 f"forward per image"]
        text = "\n".join(lines)
        if print_it:
            print(text)
        return text

    def __repr__(self):
        return f"Net({self.meta.get('name', '')!r}, {len(self._user_layers)} layers, {self.num_params:,} params, " \
               f"devices={self.devices}, copies={len(self.copies)})"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
