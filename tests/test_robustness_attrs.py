"""Issue 12, integer attributes: every int, uint64_t and Pair attribute of every op of the op table
(convnet._C.op_table, iterated, not listed by hand) takes any Python int; a value its C++ type cannot
hold is a ValueError "<op>: <arg>=<value> is out of range [lo, hi]", a non-integer (float, bool,
string) a TypeError naming the op and the argument, never pybind11's "incompatible function
arguments". The same for the shape helpers, Tensor shapes, the layers' options and the run seed."""
import json
import os

import numpy as np
import pytest

import convnet
import reference as R
from conftest import poisoned, to_device
from convnet import _C, ops
from convnet.hparams import HParams
from gradcheck import assert_close
from test_robustness import run_isolated

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
INT32 = (-2**31, 2**31 - 1)
UINT64 = (0, 2**64 - 1)
RANGES = {"int": INT32, "uint64_t": UINT64, "Pair": INT32}  # the ops.def types that are integers
OTHER_ATTRIBUTE_TYPES = {"float", "bool", "String", "FloatList"}


def int_attributes():
    """(op name, argument name, ops.def type) of every integer attribute in the table."""
    out = []
    for op in _C.op_table:
        for name, role, type_, _ in op["args"]:
            if role == "attribute":
                assert type_ in RANGES or type_ in OTHER_ATTRIBUTE_TYPES, \
                    f"{op['name']}.{name}: attribute type {type_} unknown to this test: add it"
                if type_ in RANGES:
                    out.append((op["name"], name, type_))
    return out


INT_ATTRIBUTES = int_attributes()
IDS = [f"{op}.{arg}" for op, arg, _ in INT_ATTRIBUTES]


def placeholder_kwargs(op_name):
    """Every argument of `op_name` by keyword, each of its declared type (any shape: the attribute
    checks come before the op's own)."""
    op = next(o for o in _C.op_table if o["name"] == op_name)
    values = {"Tensor": lambda: _C.Tensor.zeros((2,)), "AnyTensor": lambda: _C.Tensor.zeros((2,)),
              "IntTensor": lambda: _C.Tensor.zeros((2,), "cpu", "int32"), "OptTensor": lambda: None,
              "TensorList": list, "FloatList": list, "float": lambda: 0.5, "bool": lambda: False,
              "String": lambda: "auto", "int": lambda: 1, "uint64_t": lambda: 0, "Pair": lambda: (1, 1)}
    return {name: values[type_]() for name, _, type_, _ in op["args"]}


def out_of_range_values(type_):
    lo, hi = RANGES[type_]
    ints = [lo - 1, hi + 1, 2**40 if type_ != "uint64_t" else 2**70, -2**70, 2**64]
    if type_ == "Pair":
        return [(v, 1) for v in ints] + [(1, v) for v in ints]
    return ints


def test_the_table_has_integer_attributes():
    found = {(op, arg) for op, arg, _ in INT_ATTRIBUTES}
    for expected in [("conv_forward", "stride"), ("conv_forward", "groups"), ("lrn_forward", "size"),
                     ("max_pool_forward", "window"), ("dropout_forward", "seed"),
                     ("dropout_backward", "offset")]:
        assert expected in found


@pytest.mark.parametrize("op,arg,type_", INT_ATTRIBUTES, ids=IDS)
def test_out_of_range_integer_attribute_is_value_error(op, arg, type_):
    lo, hi = RANGES[type_]
    for value in out_of_range_values(type_):
        kwargs = placeholder_kwargs(op)
        kwargs[arg] = value
        with pytest.raises(ValueError) as e:
            getattr(ops, op)(**kwargs)
        assert str(e.value) == f"{op}: {arg}={value!s} is out of range [{lo}, {hi}]"


@pytest.mark.parametrize("op,arg,type_", INT_ATTRIBUTES, ids=IDS)
def test_non_integer_attribute_is_type_error_naming_it(op, arg, type_):
    bad = [2.0, True, "3", None]
    if type_ == "Pair":
        bad = [2, (1.0, 1), (1, True), (1, 2, 3), (1,), "ab", None]
    for value in bad:
        kwargs = placeholder_kwargs(op)
        kwargs[arg] = value
        with pytest.raises(TypeError, match=f"^{op}: {arg}") as e:
            getattr(ops, op)(**kwargs)
        assert "incompatible function arguments" not in str(e.value)


def test_range_limits_themselves_pass_the_conversion():
    """The largest and smallest values the C++ types hold reach the op (which may refuse them as
    geometry, but not as out of range): run in a subprocess, as a kernel would see them."""
    out = run_isolated(f"""
        sys.path.insert(0, {TESTS_DIR!r})
        from test_robustness_attrs import INT_ATTRIBUTES, RANGES, placeholder_kwargs
        for op, arg, type_ in INT_ATTRIBUTES:
            for v in RANGES[type_]:
                kwargs = placeholder_kwargs(op)
                kwargs[arg] = (v, v) if type_ == "Pair" else v
                try:
                    getattr(ops, op)(**kwargs)
                except (ValueError, MemoryError) as e:
                    assert "out of range [" not in str(e), (op, arg, v, str(e))
        print("DONE", len(INT_ATTRIBUTES))
    """)
    assert f"DONE {len(INT_ATTRIBUTES)}" in out


def test_numpy_integers_and_lists_give_the_same_results(rng):
    """Valid calls are unchanged: NumPy integers, lists as pairs, and the largest seed work."""
    x = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)
    w = rng.standard_normal((6, 3, 3, 2)).astype(np.float32)
    want = R.conv_forward(x, w, None, (2, 2), (1, 1), 2)
    for stride, pad, groups in [((2, 2), (1, 1), 2), ([np.int64(2), np.int32(2)], np.array([1, 1]), np.int8(2))]:
        y = poisoned(want.shape, "cpu")
        ops.conv_forward(_C.Tensor.from_numpy(x), _C.Tensor.from_numpy(w), None, y, stride, pad, groups)
        assert_close(y.numpy(), want)
    d = rng.standard_normal((64,)).astype(np.float32)
    for seed in [2**64 - 1, np.uint64(2**64 - 1)]:
        y = poisoned((64,), "cpu")
        ops.dropout_forward(_C.Tensor.from_numpy(d), y, 0.5, seed, 2**64 - 1, 64)
        assert_close(y.numpy(), R.dropout_forward(d, 0.5, 2**64 - 1, 2**64 - 1, 64))


def test_shape_helpers_and_tensor_shapes():
    with pytest.raises(ValueError, match=r"^conv_output_shape: stride=\(1099511627776, 1\) is out of range"):
        _C.conv_output_shape((1, 5, 5, 3), (2, 3, 3, 3), (2**40, 1))
    with pytest.raises(ValueError, match=r"^conv_output_shape: groups=1099511627776 is out of range"):
        _C.conv_output_shape((1, 5, 5, 3), (2, 3, 3, 3), (1, 1), (0, 0), 2**40)
    with pytest.raises(ValueError, match=r"^conv_output_shape: x_shape\[1\]=18446744073709551616 is out"):
        _C.conv_output_shape((1, 2**64, 5, 3), (2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"^pool_output_shape: window=\(3, 1099511627776\) is out of range"):
        _C.pool_output_shape((1, 5, 5, 3), (3, 2**40), (1, 1))
    with pytest.raises(TypeError, match=r"^pool_output_shape: pad\[0\] must be an int, got 0.5 \(float\)"):
        _C.pool_output_shape((1, 5, 5, 3), (3, 3), (1, 1), (0.5, 0))
    for make in (_C.Tensor.empty, _C.Tensor.zeros):
        with pytest.raises(ValueError, match=r"shape\[1\]=18446744073709551616 is out of range \[-9223372036854775808"):
            make((2, 2**64))
        with pytest.raises(TypeError, match=r"shape\[0\] must be an int, got 2.5 \(float\)"):
            make((2.5,))
    with pytest.raises(ValueError, match=r"^Tensor.reshape: shape\[0\]=-9223372036854775809 is out of range"):
        _C.Tensor.zeros((4,)).reshape((-2**63 - 1,))
    assert _C.Tensor.zeros((np.int64(2), 3)).shape == (2, 3)


def _net(layer):
    return [{"name": "data", "type": "data", "shape": [8, 8, 3]}, {**layer, "inputs": ["data"]},
            {"name": "fc", "type": "fc", "inputs": [layer["name"]], "outputs": 2},
            {"name": "loss", "type": "softmax", "inputs": ["fc"]}]


@pytest.mark.parametrize("layer,words", [
    ({"name": "c", "type": "conv", "filters": 4, "size": 3, "stride": 2**40}, "stride must be <= 2147483647"),
    ({"name": "c", "type": "conv", "filters": 4, "size": 3, "pad": [1, 2**31]}, "pad must be <= 2147483647"),
    ({"name": "c", "type": "conv", "filters": 4, "size": 2**40}, "size must be <= 2147483647"),
    ({"name": "c", "type": "conv", "filters": 4, "size": 3, "groups": 2**40}, "groups must be <= 2147483647"),
    ({"name": "p", "type": "maxpool", "size": 2**40}, "size must be <= 2147483647"),
    ({"name": "p", "type": "avgpool", "size": 3, "stride": 2**40}, "stride must be <= 2147483647"),
    ({"name": "n", "type": "lrn", "size": 2**31}, "size must be <= 2147483647"),
    ({"name": "n", "type": "lrn", "groups": 2**40}, "groups must be <= 2147483647"),
])
def test_layer_options_beyond_the_ops_range_name_the_layer(layer, words):
    with pytest.raises(ValueError, match=f"layer '{layer['name']}'") as e:
        convnet.Net(json.loads(json.dumps(_net(layer))), device="cpu", allocate=False)
    assert words in str(e.value)


def test_run_seed_must_fit_the_dropout_key():
    HParams(seed=2**64 - 1).validate()
    for seed in (2**64, -1):
        with pytest.raises(ValueError, match=r"seed=.*in \[0, 2\*\*64\)"):
            HParams(seed=seed).validate()


@pytest.mark.parametrize("offset,n", [(2**64 - 8, 8), (2**64 - 7, 7), (2**64 - 1, 1), (2**64 - 6, 5),
                                      (2**64 - 13, 9), (2**62, 17)])
def test_dropout_at_the_end_of_the_draw(device, rng, offset, n):
    """Regression (fuzz): with offset + n reaching 2**64 the kernels computed offset + n, which wraps
    to a small number, and left the output unwritten. Element 2**64 - 1 is the draw's last."""
    x = rng.standard_normal(n)
    want = R.dropout_forward(x, 0.5, 7, 2**64 - 1, offset)
    y, dx = poisoned((n,), device), poisoned((n,), device)
    ops.dropout_forward(to_device(x, device), y, 0.5, 7, 2**64 - 1, offset)
    ops.dropout_backward(to_device(x, device), dx, 0.5, 7, 2**64 - 1, offset)
    assert_close(y.numpy(), want, 1e-6)
    assert_close(dx.numpy(), want, 1e-6)


@pytest.mark.parametrize("offset,n", [(2**64 - 7, 8), (2**64 - 1, 2), (2**64 - 4, 5)])
def test_dropout_past_the_end_of_the_draw_is_refused(offset, n):
    x, y = _C.Tensor.zeros((n,)), _C.Tensor.zeros((n,))
    for op in (ops.dropout_forward, ops.dropout_backward):
        with pytest.raises(ValueError, match=f"offset={offset} plus the {n} elements of .* run past the end"):
            op(x, y, 0.5, 7, 0, offset)


def test_runtime_integer_arguments():
    """The runtime's integer arguments take the same checked path as the ops' attributes."""
    t = _C.Tensor.zeros((2,))
    cases = [(lambda v: _C.set_stream("cpu", v), "set_stream: slot"),
             (lambda v: _C.copy_between(t, v, t, 0), "copy_between: dst_slot"),
             (lambda v: _C.copy_between(t, 0, t, v), "copy_between: src_slot"),
             (lambda v: _C.Uploader("cpu", v), "Uploader: depth"),
             (lambda v: _C.set_cpu_threads(v), "set_cpu_threads: threads")]
    for call, words in cases:
        with pytest.raises(ValueError, match=f"^{words}=1099511627776 is out of range"):
            call(2**40)
        with pytest.raises(TypeError, match=f"^{words} must be an int, got 1.5"):
            call(1.5)
    threads = _C.cpu_threads()
    _C.set_cpu_threads(np.int64(threads))
    assert _C.cpu_threads() == threads
