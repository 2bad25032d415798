"""The tensor-parallel side of the loss: which vocabulary shard this rank holds, and the
per-token combination of the shards' statistics (two all-reduces, as in megatron-core)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice `[start, start + size)` of the vocabulary in its tensor-parallel group."""

    group: dist.ProcessGroup | None
    world_size: int
    start: int
    size: int


def _default_tp_group() -> dist.ProcessGroup | None:
    """megatron-core's tensor-parallel group when model parallelism is initialised, else None."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None
    return parallel_state.get_tensor_model_parallel_group()


def vocab_shard(
    shard_size: int, tp_group: dist.ProcessGroup | None = None, vocab_start_index: int | None = None
) -> VocabShard:
    """Describe this rank's shard. `tp_group=None` takes megatron-core's tensor-parallel group if
    there is one (else: no tensor parallelism); the start defaults to megatron-core's layout of
    equal shards, `rank * shard_size`."""
    group = tp_group if tp_group is not None else _default_tp_group()
    world_size = dist.get_world_size(group) if group is not None else 1
    if vocab_start_index is None:
        vocab_start_index = (dist.get_rank(group) if group is not None else 0) * shard_size
    return VocabShard(group, world_size, vocab_start_index, shard_size)


def combine_shard_stats(
    row_max: torch.Tensor, sum_exp: torch.Tensor, target_logit: torch.Tensor, shard: VocabShard
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (log-sum-exp over the whole vocabulary, cross-entropy), from each shard's max,
    sum of exp(x - max) and target logit (0 on shards not owning the target)."""
    if shard.world_size > 1:
        global_max = row_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=shard.group)
        sums = torch.stack([sum_exp * torch.exp(row_max - global_max), target_logit])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=shard.group)
        row_max, (sum_exp, target_logit) = global_max, sums
    log_sum_exp = row_max + torch.log(sum_exp)
    return log_sum_exp, log_sum_exp - target_logit
