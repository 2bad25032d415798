"""Loss operators: per-sample weighted cross-entropy over vocab-parallel logits.

`weighted_cross_entropy` (training: loss, per-sample losses, gradient written into the logits)
and `per_sample_cross_entropy` (loss-only, for the finite-difference passes), each with a fused
Triton kernel and a PyTorch reference, chosen by their `kernel` argument (`--loss-kernel`). Triton
is imported only when the fused kernel is used.
"""

from megatron_dwm.ops.kernels import LOSS_KERNELS, resolve_loss_kernel
from megatron_dwm.ops.cross_entropy import (
    WeightedCrossEntropy,
    per_sample_cross_entropy,
    weighted_cross_entropy,
)

__all__ = [
    "LOSS_KERNELS",
    "WeightedCrossEntropy",
    "per_sample_cross_entropy",
    "resolve_loss_kernel",
    "weighted_cross_entropy",
]
