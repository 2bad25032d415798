"""Per-sample weighted cross-entropy over vocab-parallel logits.

For a batch of n samples, loss mask m, per-token cross-entropy l and weights w:

    per-sample loss  l_i = sum_t m_it l_it / M_i,     M_i = sum_t m_it   (0 when M_i = 0)
    batch loss       L   = sum_i w_i l_i / n

The training call writes dL/dlogits = w_i / (n M_i) * m_it * (softmax - onehot) into the logits
during the forward pass (no second logits-sized buffer); backward only scales it by the incoming
gradient. The loss-only call leaves the logits untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import torch
import torch.distributed as dist

from megatron_dwm.ops.kernels import row_kernels
from megatron_dwm.ops.vocab_parallel import VocabShard, combine_shard_stats, vocab_shard


class WeightedCrossEntropy(NamedTuple):
    loss: torch.Tensor  # scalar fp32, differentiable: sum_i w_i l_i / n
    per_sample_loss: torch.Tensor  # [b] fp32, detached


@dataclass(frozen=True)
class _Tokens:
    """Labels and mask of a [b, s] batch, flattened in the row order of the logits."""

    targets: torch.Tensor  # [rows] int64, relative to the shard start
    mask: torch.Tensor  # [b, s] fp32
    inv_tokens: torch.Tensor  # [b] fp32: 1 / M_i, or 0 for an empty sample
    sequence_first: bool

    def to_rows(self, per_token: torch.Tensor) -> torch.Tensor:
        """[b, s] -> [rows] in the logits' order."""
        return (per_token.t() if self.sequence_first else per_token).reshape(-1)

    def from_rows(self, per_row: torch.Tensor) -> torch.Tensor:
        """[rows] in the logits' order -> [b, s]."""
        batch, seq = self.mask.shape
        return per_row.view(seq, batch).t() if self.sequence_first else per_row.view(batch, seq)

    def per_sample_loss(self, token_loss: torch.Tensor) -> torch.Tensor:
        """Masked mean of the per-token losses of each sample; masked tokens never leak NaN."""
        token_loss = self.from_rows(token_loss)
        masked = torch.where(self.mask != 0, token_loss * self.mask, 0.0)
        return masked.sum(dim=1) * self.inv_tokens


def _tokens(
    logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, shard: VocabShard, sequence_first: bool
) -> _Tokens:
    if logits.dim() != 3 or labels.dim() != 2 or loss_mask.shape != labels.shape:
        raise ValueError("expected logits [s, b, v] (or [b, s, v]) and labels, loss_mask [b, s]")
    batch, seq = labels.shape
    if tuple(logits.shape[:2]) != ((seq, batch) if sequence_first else (batch, seq)):
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels [b, s] = {tuple(labels.shape)}")
    mask = loss_mask.float()
    tokens_per_sample = mask.sum(dim=1)
    inv_tokens = torch.where(tokens_per_sample != 0, 1.0 / tokens_per_sample, 0.0)
    targets = (labels.t() if sequence_first else labels).reshape(-1).long() - shard.start
    return _Tokens(targets, mask, inv_tokens, sequence_first)


def _rows_of(logits: torch.Tensor) -> torch.Tensor:
    """The logits as [rows, shard] without copying."""
    try:
        logits2d = logits.view(-1, logits.shape[-1])
    except RuntimeError as error:
        raise ValueError("logits must be viewable as [rows, shard] (e.g. contiguous)") from error
    if logits2d.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary dimension")
    return logits2d


def _empty_rows(logits2d: torch.Tensor) -> torch.Tensor:
    """An uninitialised fp32 value per row (the kernels' per-token outputs)."""
    return torch.empty(logits2d.shape[0], dtype=torch.float32, device=logits2d.device)


def _token_loss(logits2d: torch.Tensor, targets: torch.Tensor, kernels: ModuleType, shard: VocabShard):
    """(log-sum-exp, cross-entropy) per row over the whole vocabulary; logits untouched."""
    row_max, sum_exp, target_logit = (_empty_rows(logits2d) for _ in range(3))
    kernels.row_stats(logits2d, targets, row_max, sum_exp, target_logit)
    return combine_shard_stats(row_max, sum_exp, target_logit, shard)


class _WeightedCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, logits, weights, tokens: _Tokens, kernels: ModuleType, shard: VocabShard, normalizer: float,
        write_grad: bool,
    ):
        logits2d = _rows_of(logits)
        sample_coeff = weights.detach().float() * tokens.inv_tokens / normalizer
        coeff = tokens.to_rows(tokens.mask * sample_coeff[:, None]).contiguous()
        if not write_grad:  # loss only, logits untouched
            _, token_loss = _token_loss(logits2d, tokens.targets, kernels, shard)
        elif shard.world_size == 1:
            token_loss = _empty_rows(logits2d)
            kernels.loss_and_grad(logits2d, tokens.targets, coeff, token_loss)
            torch.autograd.graph.increment_version(logits)  # the kernels wrote through raw pointers
        else:
            log_sum_exp, token_loss = _token_loss(logits2d, tokens.targets, kernels, shard)
            kernels.write_grad(logits2d, tokens.targets, log_sum_exp, coeff)
            torch.autograd.graph.increment_version(logits)
        per_sample = tokens.per_sample_loss(token_loss)
        loss = (weights.detach().float() * per_sample).sum() / normalizer
        ctx.logits_grad = logits if write_grad else None  # holds dloss/dlogits when written
        ctx.save_for_backward(per_sample)
        ctx.normalizer = normalizer
        ctx.mark_non_differentiable(per_sample)
        return loss, per_sample

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_sample):
        logits_grad, ctx.logits_grad = ctx.logits_grad, None
        (per_sample,) = ctx.saved_tensors
        if logits_grad is not None:
            # One host sync on a scalar saves a pass over the logits when the incoming gradient is 1.
            scale = grad_loss.item()
            if scale != 1.0:
                logits_grad.mul_(scale)
        weights_grad = grad_loss * per_sample / ctx.normalizer if ctx.needs_input_grad[1] else None
        return logits_grad, weights_grad, None, None, None, None, None


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    normalizer: float | None = None,
    kernel: str = "auto",
    tp_group: dist.ProcessGroup | None = None,
    vocab_start_index: int | None = None,
    sequence_first: bool = True,
) -> WeightedCrossEntropy:
    """Weighted batch loss `sum_i w_i l_i / n` and the per-sample losses `l_i`.

    logits: [s, b, v/TP] (megatron-core's layout; [b, s, v/TP] with `sequence_first=False`),
        fp32, bf16 or fp16, contiguous. OVERWRITTEN with the gradient during this call when they
        require grad and grad mode is on (else left untouched, as in `per_sample_cross_entropy`).
    labels, loss_mask: [b, s]. weights: [b] (default all ones); a weight that requires grad
        receives `l_i / n`. normalizer: n, default b (the local batch size).
    kernel: "auto" (Triton on CUDA, else PyTorch), "fused" or "torch".
    tp_group: the tensor-parallel group over which the vocabulary is split (default:
        megatron-core's, if initialised). vocab_start_index: this rank's first vocabulary id
        (default `rank * v/TP`).
    """
    shard = vocab_shard(logits.shape[-1], tp_group, vocab_start_index)
    tokens = _tokens(logits, labels, loss_mask, shard, sequence_first)
    if weights is None:
        weights = torch.ones(labels.shape[0], device=logits.device)
    normalizer = float(labels.shape[0] if normalizer is None else normalizer)
    kernels = row_kernels(kernel, logits.device)
    write_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, per_sample = _WeightedCrossEntropyFunction.apply(
        logits, weights, tokens, kernels, shard, normalizer, write_grad
    )
    return WeightedCrossEntropy(loss, per_sample)


@torch.no_grad()
def per_sample_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    kernel: str = "auto",
    tp_group: dist.ProcessGroup | None = None,
    vocab_start_index: int | None = None,
    sequence_first: bool = True,
) -> torch.Tensor:
    """Loss-only mode: the per-sample losses `l_i` [b] fp32; the logits stay untouched.

    Arguments as in `weighted_cross_entropy`."""
    shard = vocab_shard(logits.shape[-1], tp_group, vocab_start_index)
    tokens = _tokens(logits, labels, loss_mask, shard, sequence_first)
    _, token_loss = _token_loss(_rows_of(logits), tokens.targets, row_kernels(kernel, logits.device), shard)
    return tokens.per_sample_loss(token_loss)

