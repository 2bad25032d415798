"""The per-sample loss under context parallelism, on 2 gloo ranks, against the unsplit sequence.

megatron-core's context-parallel attention needs Transformer Engine, so a model cannot run with
CP on the CPU; the loss's part of it can: each CP rank holds megatron-core's zigzag share of every
sample's tokens (``get_batch_on_this_cp_rank``), and the per-sample mean must still be the whole
sample's, with gradients that add up over the group to the unsplit sequence's.
"""

from __future__ import annotations

import torch

from tests.distributed import run_distributed

BATCH, SEQUENCE = 4, 16


def _token_losses() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token losses, a loss mask (sample 2 masked on the first half only, which CP rank 0 holds
    part of; sample 3 masked entirely) and sample weights, the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    per_token = torch.rand(BATCH, SEQUENCE, generator=generator) * 5
    mask = (torch.rand(BATCH, SEQUENCE, generator=generator) > 0.3).long()
    mask[2, : SEQUENCE // 2] = 0
    mask[3] = 0
    weights = torch.rand(BATCH, generator=generator) * 2
    return per_token, mask, weights


def _context_parallel_rank(rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.distributed as dist
    from megatron.core.utils import get_batch_on_this_cp_rank

    from megatron_dwm.training.loss import per_sample_loss

    per_token, mask, weights = _token_losses()
    per_token.requires_grad_(True)
    local = get_batch_on_this_cp_rank({"per_token": per_token, "loss_mask": mask, "cu_seqlens": None},
                                      is_hybrid_cp=False, cp_group=dist.group.WORLD)
    assert local["per_token"].shape == (BATCH, SEQUENCE // world_size)
    losses = per_sample_loss(local["per_token"], local["loss_mask"], dist.group.WORLD)
    ((weights * losses).sum() / BATCH).backward()
    return losses.detach(), per_token.grad


def test_context_parallel_per_sample_loss_and_gradient_match_the_unsplit_sequence():
    from megatron_dwm.training.loss import per_sample_loss

    per_token, mask, weights = _token_losses()
    per_token.requires_grad_(True)
    expected = per_sample_loss(per_token, mask)
    ((weights * expected).sum() / BATCH).backward()

    ranks = run_distributed(_context_parallel_rank, world_size=2)
    for losses, _ in ranks:
        torch.testing.assert_close(losses, expected.detach(), rtol=1e-6, atol=1e-6)
    assert float(ranks[0][0][3]) == 0.0  # a fully masked sample counts 0, as without CP
    torch.testing.assert_close(ranks[0][1] + ranks[1][1], per_token.grad, rtol=1e-6, atol=1e-7)
    # each rank's gradient lies on its own tokens only: zigzag chunks (0, 3) and (1, 2) of 4
    chunk = SEQUENCE // 4
    assert ranks[0][1][:, chunk: 3 * chunk].abs().sum() == 0 and ranks[1][1][:, :chunk].abs().sum() == 0


def test_without_a_group_the_loss_is_the_masked_mean():
    from megatron_dwm.training.loss import per_sample_loss

    per_token, mask, _ = _token_losses()
    expected = [(per_token[i][mask[i] == 1].mean() if mask[i].any() else torch.tensor(0.0)) for i in range(BATCH)]
    torch.testing.assert_close(per_sample_loss(per_token, mask), torch.stack(expected))
