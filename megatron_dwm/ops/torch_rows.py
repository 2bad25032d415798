"""Plain PyTorch row kernels: the reference for the Triton ones in `triton_rows`.

A "row" is the logits of one token over this rank's vocabulary shard, `logits2d[row, :]`.
`targets[row]` is the token's label relative to the shard start; labels outside
`[0, shard size)` belong to another rank. Every function computes in fp32 and walks the rows in
chunks, so the temporary memory stays bounded however large the logits are.
"""

from __future__ import annotations

from typing import Iterator

import torch

CHUNK_ELEMENTS = 1 << 24  # fp32 temporaries of at most 64 MiB per chunk


def _row_chunks(logits2d: torch.Tensor) -> Iterator[slice]:
    rows, cols = logits2d.shape
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, rows_per_chunk):
        yield slice(start, min(start + rows_per_chunk, rows))


def _owned_targets(targets: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(whether this shard holds the target, the target index clamped into the shard)."""
    owned = (targets >= 0) & (targets < n_cols)
    return owned, torch.where(owned, targets, 0)


def row_stats(
    logits2d: torch.Tensor,
    targets: torch.Tensor,
    row_max: torch.Tensor,
    sum_exp: torch.Tensor,
    target_logit: torch.Tensor,
) -> None:
    """Per row: max, `sum(exp(x - max))` and the target logit (0 where not owned), into the outputs."""
    for rows in _row_chunks(logits2d):
        x = logits2d[rows].float()
        chunk_max = x.amax(dim=1)
        row_max[rows] = chunk_max
        sum_exp[rows] = torch.exp(x - chunk_max[:, None]).sum(dim=1)
        owned, index = _owned_targets(targets[rows], x.shape[1])
        picked = x.gather(1, index[:, None]).squeeze(1)
        target_logit[rows] = torch.where(owned, picked, 0.0)


def write_grad(
    logits2d: torch.Tensor,
    targets: torch.Tensor,
    log_sum_exp: torch.Tensor,
    coeff: torch.Tensor,
) -> None:
    """Overwrite every row with `coeff[row] * (softmax(row) - onehot(target))`."""
    for rows in _row_chunks(logits2d):
        grad = torch.exp(logits2d[rows].float() - log_sum_exp[rows, None])
        owned, index = _owned_targets(targets[rows], grad.shape[1])
        grad.scatter_add_(1, index[:, None], -owned.float()[:, None])
        grad.mul_(coeff[rows, None])
        logits2d[rows] = grad


def loss_and_grad(
    logits2d: torch.Tensor,
    targets: torch.Tensor,
    coeff: torch.Tensor,
    token_loss: torch.Tensor,
) -> None:
    """Unsharded vocabulary: per-row cross-entropy into `token_loss`, then the gradient in place."""
    row_max, sum_exp, target_logit = (torch.empty_like(token_loss) for _ in range(3))
    row_stats(logits2d, targets, row_max, sum_exp, target_logit)
    log_sum_exp = row_max + torch.log(sum_exp)
    torch.sub(log_sum_exp, target_logit, out=token_loss)
    write_grad(logits2d, targets, log_sum_exp, coeff)
