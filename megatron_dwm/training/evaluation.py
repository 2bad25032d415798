"""Forward-only evaluation: mean per-sample loss (and per domain) over a number of global batches."""

from __future__ import annotations

from typing import Callable

import torch
from megatron.core import parallel_state

from megatron_dwm.training.build import model_chunks
from megatron_dwm.training.loss import WeightedLoss
from megatron_dwm.training.metrics import DomainTotals
from megatron_dwm.training.step import run_global_batch


def evaluate(model, next_global_batch: Callable[[], list], num_batches: int, loss: WeightedLoss,
             num_domains: int, device: torch.device) -> DomainTotals | None:
    """Mean per-sample loss of `model` (a model chunk or list of chunks) over `num_batches` global
    batches; the totals on the last pipeline stage (reduced over data-parallel ranks; each CP rank
    holds the whole samples' losses already), None elsewhere."""
    totals = DomainTotals(num_domains)
    chunks = model_chunks(model)
    for chunk in chunks:
        chunk.eval()
    with torch.no_grad():
        for _ in range(num_batches):
            collected = run_global_batch(chunks, next_global_batch(), None, loss, forward_only=True)
            if collected is not None:
                totals.add(*collected)
    for chunk in chunks:
        chunk.train()
    if not parallel_state.is_pipeline_last_stage():
        return None
    totals.all_reduce(parallel_state.get_data_parallel_group(), device)
    return totals
