"""Random loss cases and the independent references the loss kernels are checked against."""

from __future__ import annotations

import os
from dataclasses import dataclass
from unittest import mock

import torch
import torch.nn.functional as F

import megatron_dwm.ops.cross_entropy as cross_entropy_module
from megatron_dwm.ops import per_sample_cross_entropy, weighted_cross_entropy

# Issue 7: relative error of the gradient <= 1e-5 (fp32) and <= 1e-2 (bf16). Losses are computed
# in fp32 from the same inputs in every implementation, hence one bound for both dtypes.
GRAD_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
LOSS_TOLERANCE = 1e-5
# Where the cases live: the CPU (kernels in Triton's interpreter) or, for bench/gpu_check.py, "cuda".
DEVICE = torch.device(os.environ.get("MEGATRON_DWM_TEST_DEVICE", "cpu"))


@dataclass
class LossCase:
    """One batch over the full vocabulary, on `DEVICE`; tensor-parallel ranks take slices of `logits`."""

    seed: int
    logits: torch.Tensor  # [s, b, V] in the case dtype
    labels: torch.Tensor  # [b, s]
    loss_mask: torch.Tensor  # [b, s]
    weights: torch.Tensor  # [b]
    normalizer: float

    @property
    def dtype(self) -> torch.dtype:
        return self.logits.dtype

    def describe(self) -> str:
        s, b, v = self.logits.shape
        return f"seed={self.seed} {str(self.dtype)[6:]} s={s} b={b} V={v}"


def random_case(seed: int, dtype: torch.dtype, vocab: int, max_seq: int = 16, max_batch: int = 4) -> LossCase:
    """Fresh random inputs: logits, labels, a mask with an empty sample when b > 1, weights, n."""
    gen = torch.Generator().manual_seed(seed)
    seq = int(torch.randint(1, max_seq + 1, (), generator=gen))
    batch = int(torch.randint(1, max_batch + 1, (), generator=gen))
    logits = (4 * torch.randn(seq, batch, vocab, generator=gen)).to(dtype)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    loss_mask = (torch.rand(batch, seq, generator=gen) < 0.7).float()
    if batch > 1:
        loss_mask[int(torch.randint(0, batch, (), generator=gen))] = 0.0
    weights = torch.exp(torch.randn(batch, generator=gen))
    normalizer = float(batch * int(torch.randint(1, 4, (), generator=gen)))
    return LossCase(seed, logits.to(DEVICE), labels.to(DEVICE), loss_mask.to(DEVICE), weights.to(DEVICE), normalizer)


def masked_weighted_loss(token_loss: torch.Tensor, case: LossCase) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit masking, per-sample mean and weighting of [b, s] token losses: (loss, per-sample)."""
    tokens = case.loss_mask.sum(dim=1)
    per_sample = (token_loss * case.loss_mask).sum(dim=1) / tokens.clamp_min(1.0)
    return (case.weights * per_sample).sum() / case.normalizer, per_sample


def autograd_reference(case: LossCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-sample losses, logits gradient [s, b, V]) from torch's cross-entropy and autograd."""
    logits = case.logits.detach().float().requires_grad_()
    token_loss = F.cross_entropy(logits.permute(1, 2, 0), case.labels, reduction="none")  # [b, s]
    loss, per_sample = masked_weighted_loss(token_loss, case)
    loss.backward()
    return loss.detach(), per_sample.detach(), logits.grad.to(case.dtype)


def megatron_reference(
    case: LossCase, shard: slice, tp_group
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-sample losses, gradient of this rank's shard) from megatron-core's
    vocab-parallel cross-entropy followed by explicit masking and weighting."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits = case.logits[..., shard].clone().requires_grad_()
    token_loss = vocab_parallel_cross_entropy(logits, case.labels.t().contiguous(), tp_group=tp_group)
    loss, per_sample = masked_weighted_loss(token_loss.t(), case)
    loss.backward()
    return loss.detach(), per_sample.detach(), logits.grad


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in fp32 (NaN anywhere gives NaN)."""
    actual, expected = actual.float(), expected.float()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _nan_rows(logits2d: torch.Tensor) -> torch.Tensor:
    return torch.full((logits2d.shape[0],), float("nan"), device=logits2d.device)


def run_weighted_cross_entropy(
    case: LossCase, kernel: str, shard: slice = slice(None), **kwargs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, per-sample losses, logits gradient) from `weighted_cross_entropy` on a shard of the
    case, with every per-token buffer the kernels write poisoned with NaN beforehand."""
    logits = case.logits[..., shard].clone().requires_grad_()
    with mock.patch.object(cross_entropy_module, "_empty_rows", _nan_rows):
        out = weighted_cross_entropy(
            logits, case.labels, case.loss_mask, case.weights, normalizer=case.normalizer, kernel=kernel, **kwargs
        )
    out.loss.backward()
    return out.loss.detach(), out.per_sample_loss, logits.grad


def run_per_sample_cross_entropy(case: LossCase, kernel: str, shard: slice = slice(None), **kwargs) -> torch.Tensor:
    """Loss-only per-sample losses on a shard, buffers poisoned; asserts the logits stay untouched."""
    logits = case.logits[..., shard].clone()
    with mock.patch.object(cross_entropy_module, "_empty_rows", _nan_rows):
        per_sample = per_sample_cross_entropy(logits, case.labels, case.loss_mask, kernel=kernel, **kwargs)
    assert torch.equal(logits, case.logits[..., shard]), "loss-only mode modified the logits"
    return per_sample
