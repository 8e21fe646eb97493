"""What the benchmarks share: how PyTorch is found, and the one ratio they all print.

Run the benchmarks against the installed package (`pip install .`): no benchmark puts the checkout's
python/ folder on sys.path, because that folder has no compiled convnet._C.
"""

# The one ratio every benchmark prints: PyTorch's time over ours for the same work.
SPEEDUP_HEADER = "speed-up"
SPEEDUP_LEGEND = ("speed-up = PyTorch time / our time for the same work "
                  "(above 1: ours is faster; below 1: PyTorch is faster)")
TORCH_HINT = ("PyTorch is not installed, so the comparison columns are left out; for them run "
              "pip install '.[bench]' from the checkout (a CPU build of torch)")


def speedup(torch_seconds, our_seconds):
    """PyTorch time / our time (> 1: ours is faster)."""
    return torch_seconds / our_seconds


def import_torch(required=False):
    """torch, or None (after saying how to get it) when it is not installed; `required` raises instead."""
    try:
        import torch
    except ImportError as e:
        if required:
            raise SystemExit(TORCH_HINT.split(", so")[0] + "; this script needs it: run "
                             "pip install '.[bench]' from the checkout (a CPU build of torch)") from e
        print(TORCH_HINT)
        return None
    return torch
