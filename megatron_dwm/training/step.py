"""One global batch through megatron-core's pipeline schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_dwm.training.build import model_chunks

if TYPE_CHECKING:
    from megatron_dwm.training.loss import WeightedLoss


def run_global_batch(
    model,
    microbatches: list[dict[str, torch.Tensor]],
    weights: list[torch.Tensor] | None,
    loss: "WeightedLoss",
    forward_only: bool = False,
    force_all_reduce: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """This DP rank's micro batches through megatron-core's pipeline schedule with the weighted loss.

    `model`: the DDP-wrapped model chunk, or the list of this rank's chunks (the interleaved schedule
    runs each chunk on every micro batch, in order; each chunk reads its own iterator of them).
    ``weights[k]`` weighs the samples of ``microbatches[k]`` (None: all ones). Gradients are
    accumulated into the DDP buffers and reduced over data-parallel ranks unless ``forward_only``;
    ``force_all_reduce``: every rank gets the whole reduced gradient, also under the distributed
    optimizer (whose reduce-scatter leaves each rank its own shard's).
    Returns (per-sample losses, domain ids) of this rank's samples on the last pipeline stage,
    None elsewhere.
    """
    tokens = microbatches[0]["tokens"]
    chunks = model_chunks(model)
    loss.reset()

    def step(data_iterator, chunk):
        index = next(data_iterator)
        return loss.forward_step(chunk, microbatches[index], None if weights is None else weights[index], forward_only)

    indices = [iter(range(len(microbatches))) for _ in chunks]
    # With --overlap-grad-reduce, DDP's backward hooks start each bucket's reduction themselves: the
    # all-reduce is asked of them too (megatron-core's DDP.force_all_reduce), not only of the final sync.
    for chunk in chunks:
        chunk.force_all_reduce = force_all_reduce
    try:
        get_forward_backward_func()(forward_step_func=step, data_iterator=indices, model=chunks,
                                    num_microbatches=len(microbatches), seq_length=tokens.shape[1],
                                    micro_batch_size=tokens.shape[0], forward_only=forward_only,
                                    force_all_reduce=force_all_reduce)
    finally:
        for chunk in chunks:
            chunk.force_all_reduce = False
    return loss.collected()
