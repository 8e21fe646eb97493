"""The op inventory: every op of the op table has each thing an op needs, or this test names what is missing.

For each op of csrc/ops.def (as compiled: convnet._C.op_table):
  * a NumPy float64 reference in tests/reference.py (`reference_name` says which function);
  * a test that takes the `device` fixture (so it runs on every backend) and calls `ops.<op>`;
  * where the op computes a gradient (an output named d<something>), a test on every backend that calls
    `ops.<op>` and `check_gradient`;
  * an entry in each tool that runs every op: tools/sanitizer_case.py (compute-sanitizer on a GPU) and
    tools/cuda_emu/order_check.py (the emulator's race check), either a call `ops.<op>(` or, for an
    elementwise op with defaulted attributes, the generic case of tools/op_cases.py;
  * a binding: `convnet.ops.<op>`, and no binding that is not in the table.
Static checks read the test files' syntax trees, so a test that is skipped here still counts.
"""
import ast
import pathlib
import re
import sys

import pytest

import convnet
import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = ["tools/sanitizer_case.py", "tools/cuda_emu/order_check.py"]
sys.path.insert(0, str(ROOT / "tools"))
import op_cases  # noqa: E402

TABLE = {op["name"]: op for op in convnet._C.op_table}
OPS = list(TABLE)
GENERIC = {op["name"] for op in op_cases.generic_ops(convnet._C.op_table)}


def declared_in_ops_def():
    """Names of the CONVNET_OP entries of csrc/ops.def, read as text (the table the build compiled
    must be this one)."""
    return re.findall(r"^CONVNET_OP\((\w+),", (ROOT / "csrc" / "ops.def").read_text(), re.M)


def reference_name(op):
    """tests/reference.py function of an op: its name without a trailing `_` (copy_ -> copy), and one
    `<family>_backward` for the backward ops that split by what they compute (conv_backward_data and
    conv_backward_filter -> conv_backward)."""
    return re.sub(r"_backward_(data|filter|weights)$", "_backward", op.rstrip("_"))


TENSOR_NAMES = {name for op in TABLE.values() for name, role, _, _ in op["args"] if role != "attribute"}


def computes_gradient(op):
    """An op that writes a tensor named d<t>, t a tensor argument of some op: dx, dw, db, dlogits."""
    return any(role in ("output", "accumulate") and name[:1] == "d" and name[1:] in TENSOR_NAMES
               for name, role, _, _ in TABLE[op]["args"])


def _ops_used(node):
    """Attribute names X in `ops.X` / `convnet.ops.X` inside `node`."""
    used = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute) and (
                (isinstance(n.value, ast.Name) and n.value.id == "ops") or
                (isinstance(n.value, ast.Attribute) and n.value.attr == "ops")):
            used.add(n.attr)
    return used


def _calls(node, name):
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
               for n in ast.walk(node))


def _called_names(node):
    return {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _test_functions():
    """(file, name, takes the device fixture, ops it calls, calls check_gradient) for every test. A test
    that calls a helper of its own file (run_backward_data, max_pool, ...) counts the helper's ops too."""
    out = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        funcs = {fn.name: fn for fn in tree.body if isinstance(fn, ast.FunctionDef)}

        def reach(fn, seen):
            used = set(_ops_used(fn))
            for name in _called_names(fn) - seen:
                if name in funcs:
                    seen.add(name)
                    used |= reach(funcs[name], seen)
            return used

        for fn in funcs.values():
            if fn.name.startswith("test_"):
                args = {a.arg for a in fn.args.args}
                out.append((path.name, fn.name, "device" in args, reach(fn, {fn.name}),
                            _calls(fn, "check_gradient")))
    return out


TESTS = _test_functions()


def test_op_list_is_found():
    # guards the table: an empty or short list would make every check below pass
    assert len(OPS) >= 20 and "conv_forward" in OPS and "copy_" in OPS, OPS
    assert OPS == declared_in_ops_def(), "convnet._C.op_table differs from csrc/ops.def: rebuild"
    grads = [op for op in OPS if computes_gradient(op)]
    assert "conv_backward_filter" in grads and "softmax_cross_entropy" in grads and "relu_forward" not in grads


def test_table_roles_and_rules():
    for op in TABLE.values():
        assert op["shape_rule"] and op["doc"], op["name"]
        for name, role, type_, _ in op["args"]:
            assert role in ("input", "output", "accumulate", "attribute"), (op["name"], name, role)
        assert any(role in ("output", "accumulate") for _, role, _, _ in op["args"]), f"{op['name']} writes nothing"


@pytest.mark.parametrize("op", OPS)
def test_op_has_reference(op):
    name = reference_name(op)
    assert callable(getattr(reference, name, None)), f"{op}: no NumPy reference tests/reference.py:{name}()"


@pytest.mark.parametrize("op", OPS)
def test_op_has_test_on_every_backend(op):
    found = [f"{f}::{n}" for f, n, dev, used, _ in TESTS if dev and op in used]
    assert found, f"{op}: no test takes the `device` fixture and calls ops.{op} (tests/test_*.py)"


@pytest.mark.parametrize("op", [op for op in OPS if computes_gradient(op)])
def test_op_has_gradient_check(op):
    found = [f"{f}::{n}" for f, n, dev, used, grad in TESTS if dev and grad and op in used]
    assert found, f"{op}: computes a gradient but no test on every backend calls ops.{op} and check_gradient"


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("op", OPS)
def test_op_has_tool_entry(op, tool):
    text = (ROOT / tool).read_text()
    assert "op_cases" in text, f"{tool} does not run the generic cases of tools/op_cases.py"
    assert f"ops.{op}(" in text or op in GENERIC, f"{op}: no case in {tool} (it runs every op)"


@pytest.mark.parametrize("op", OPS)
def test_op_has_binding(op):
    assert callable(getattr(convnet.ops, op, None)), f"{op}: no binding convnet.ops.{op} (csrc/bindings.cpp)"


def test_every_binding_is_in_the_op_list():
    bound = {name for name in dir(convnet.ops) if not name.startswith("__")}
    assert bound <= set(OPS), f"bound in convnet.ops but not in the op table: {sorted(bound - set(OPS))}"
