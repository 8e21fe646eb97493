"""The op list the tools need, from the op table (csrc/ops.def, as convnet._C.op_table).

Each tool that runs every op (tools/sanitizer_case.py, tools/cuda_emu/order_check.py) keeps hand-made
cases for the ops whose shapes need choosing, and uses this module for the rest:
  * `generic_ops(table)`: the elementwise ops whose attributes all have defaults, which any one shape
    can run (inputs and accumulated outputs random, outputs poisoned), so a new op of that kind needs
    no line in any tool;
  * `Recorder(ops)`: a stand-in for convnet.ops that notes each op called, and `missing()` the ops of
    the table a tool did not run (the tool fails then, naming them).
"""


def generic_ops(table):
    """Entries of the op table that run_generic can call: elementwise, every attribute defaulted."""
    out = []
    for op in table:
        attrs = [a for a in op["args"] if a[1] == "attribute"]
        tensors = [a for a in op["args"] if a[1] != "attribute"]
        if (op["shape_rule"] == "elementwise" and all(a[3] for a in attrs)
                and all(a[2] == "Tensor" for a in tensors) and any(a[1] == "input" for a in tensors)):
            out.append(op)
    return out


def run_generic(ops, op, random, poisoned):
    """Call `op` (an op-table entry) on one shape: random(role) gives an input or accumulated tensor,
    poisoned() an output. Returns the tensors written."""
    args, written = [], []
    for name, role, type_, _ in op["args"]:
        if role == "attribute":
            continue
        t = poisoned() if role == "output" else random()
        args.append(t)
        if role != "input":
            written.append(t)
    getattr(ops, op["name"])(*args)
    return written


class Recorder:
    """convnet.ops, noting the name of every op called through it."""

    def __init__(self, ops, table):
        self._ops, self._table, self.called = ops, table, set()

    def __getattr__(self, name):
        self.called.add(name)
        return getattr(self._ops, name)

    def missing(self):
        return sorted({op["name"] for op in self._table} - self.called)
