"""The precision setting: which arithmetic the GEMMs under the FC layers and convolutions use.

    fp32  float32 products and sums (the default).
    tf32  on the CPU the same as fp32 (no TF32 unit there; full FP32 is at least as accurate). On
          CUDA the FC GEMMs and the convolutions run on tensor cores (mma.sync TF32): their operands
          rounded to TF32 while staged, exact products, float32 sums (docs/architecture.md, Precision).
    bf16  the GEMM operands are rounded to bfloat16 (round to nearest even) while they are packed
          (CUDA: while staged for the tensor cores, FC GEMMs and convolutions),
          products are exact and every sum is float32 (AVX512-BF16 `vdpbf16ps` where the CPU has it,
          else a portable kernel with the same rounding). Weights, velocities, the SGD update,
          checkpoints, activations and gradients between layers stay float32; LRN, pooling, ReLU,
          dropout, softmax and the loss are float32 in every mode.

The setting is process-wide in the C++ library (convnet._C.set_precision); a Net applies its own
`precision` around each forward and backward pass with `use_precision`, so nets of different
precisions can be used one after the other in one process (not from two threads at once).
"""
import contextlib

from . import _C

PRECISIONS = ("fp32", "tf32", "bf16")

__all__ = ["PRECISIONS", "check_precision", "use_precision", "bf16_kernel"]


def check_precision(precision, where: str = "precision") -> str:
    """The precision name, or ValueError naming `where` and the allowed values."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def use_precision(precision: str):
    """Run the block's GEMMs (FC layers, convolutions) in `precision`; restores the previous one."""
    check_precision(precision, "use_precision")
    previous = _C.precision()
    _C.set_precision(precision)
    try:
        yield
    finally:
        _C.set_precision(previous)


def bf16_kernel() -> str:
    """The CPU kernel a bf16 GEMM runs on here: 'avx512_bf16' or 'portable' (no AVX512-BF16)."""
    return _C.bf16_kernel()
