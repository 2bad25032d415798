"""A test double for Transformer Engine's context-parallel attention, on the CPU.

megatron-core's context-parallel attention exists only as TEDotProductAttention; its local
DotProductAttention refuses context parallelism. :class:`ContextParallelDotProductAttention` is the
local one over the whole sequence of the context-parallel group: each rank holds megatron-core's
load-balanced share of the tokens (chunks r and 2 CP - 1 - r of 2 CP), all-gathers the keys and
values of the group (its gradient comes back summed, by megatron-core's sequence-parallel gather),
puts the chunks back in sequence order, and masks causally by global position. For tests only: it
makes the whole sequence's keys and values on every rank, as a ring exchange would not.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.spec_utils import ModuleSpec


def zigzag_chunks(rank: int, size: int) -> list[int]:
    """The chunks of 2 x `size` that context-parallel rank `rank` holds, in its order."""
    return [rank, 2 * size - 1 - rank]


class ContextParallelDotProductAttention(DotProductAttention):
    """megatron-core's local attention, its keys and values those of the whole context-parallel group."""

    def __init__(self, config, **kwargs) -> None:
        local = copy.copy(config)
        local.context_parallel_size = 1  # the parent's assertion: this attention sees the whole sequence itself
        super().__init__(local, **kwargs)
        self.cp_group = getattr(kwargs.get("pg_collection"), "cp", None)
        if self.cp_group is None:
            self.cp_group = parallel_state.get_context_parallel_group()

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        size = self.cp_group.size()
        if size == 1:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        assert attention_mask is None, "causal attention only, as the context-parallel attention"
        chunk = query.shape[0] // 2
        gathered = [chunk_index for rank in range(size) for chunk_index in zigzag_chunks(rank, size)]
        order = torch.tensor(sorted(range(2 * size), key=gathered.__getitem__), device=query.device)
        key, value = (self._in_sequence_order(tensor, order, chunk) for tensor in (key, value))
        mine = zigzag_chunks(self.cp_group.rank(), size)
        positions = torch.cat([torch.arange(c * chunk, (c + 1) * chunk, device=query.device) for c in mine])
        masked = positions[:, None] < torch.arange(2 * size * chunk, device=query.device)[None, :]
        return super().forward(query, key, value, masked[None, None], attn_mask_type, attention_bias,
                               packed_seq_params)

    def _in_sequence_order(self, tensor: torch.Tensor, order: torch.Tensor, chunk: int) -> torch.Tensor:
        """[s / CP, b, ...] of this rank -> [s, b, ...] of the group, chunks in sequence order."""
        whole = gather_from_sequence_parallel_region(tensor, tensor_parallel_output_grad=True, group=self.cp_group)
        chunks = whole.reshape(-1, chunk, *whole.shape[1:]).index_select(0, order)
        return chunks.reshape(whole.shape)


def with_context_parallel_attention(spec: ModuleSpec) -> ModuleSpec:
    """A layer spec (or a block spec's layers) of megatron-core's local attention with the test double as
    its core attention."""
    if hasattr(spec.submodules, "layer_specs"):
        layers = [with_context_parallel_attention(layer) for layer in spec.submodules.layer_specs]
        return dataclasses.replace(spec, submodules=dataclasses.replace(spec.submodules, layer_specs=layers))
    attention = spec.submodules.self_attention
    attention = dataclasses.replace(attention, submodules=dataclasses.replace(
        attention.submodules, core_attention=ContextParallelDotProductAttention))
    return dataclasses.replace(spec, submodules=dataclasses.replace(spec.submodules, self_attention=attention))
