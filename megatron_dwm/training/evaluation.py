"""Forward-only evaluation: mean per-sample loss (and per domain) over a number of global batches."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_dwm.training.loss import WeightedLoss
from megatron_dwm.training.step import run_global_batch


@dataclass
class DomainTotals:
    """Sums and counts of a per-sample value (a loss, a weight), overall and per domain id
    (``num_domains`` of them; other ids count only overall)."""

    num_domains: int
    sums: torch.Tensor = field(init=False)
    counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sums = torch.zeros(self.num_domains + 1, dtype=torch.float64)  # last slot: all samples
        self.counts = torch.zeros(self.num_domains + 1, dtype=torch.float64)

    def add(self, values: torch.Tensor, domain_id: torch.Tensor) -> None:
        values, domain_id = values.detach().double().cpu(), domain_id.cpu()
        known = (domain_id >= 0) & (domain_id < self.num_domains)
        self.sums.index_add_(0, domain_id[known], values[known])
        self.counts.index_add_(0, domain_id[known], torch.ones_like(values[known]))
        self.sums[-1] += values.sum()
        self.counts[-1] += values.numel()

    def all_reduce(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        """Sum over the data-parallel ranks (call on every rank of the last pipeline stage)."""
        packed = torch.cat([self.sums, self.counts]).to(device)
        dist.all_reduce(packed, group=group)
        self.sums, self.counts = packed.cpu().split(self.num_domains + 1)

    def mean(self) -> float:
        return float(self.sums[-1] / self.counts[-1]) if self.counts[-1] > 0 else math.nan

    def domain_means(self, names: list[str]) -> dict[str, float]:
        return {name: float(self.sums[i] / self.counts[i]) for i, name in enumerate(names) if self.counts[i] > 0}


def evaluate(model, next_global_batch: Callable[[], list], num_batches: int, loss: WeightedLoss,
             num_domains: int, device: torch.device) -> DomainTotals | None:
    """Mean per-sample loss over `num_batches` global batches; the totals on the last pipeline stage
    (reduced over data-parallel ranks), None elsewhere."""
    totals = DomainTotals(num_domains)
    model.eval()
    with torch.no_grad():
        for _ in range(num_batches):
            collected = run_global_batch(model, next_global_batch(), None, loss, forward_only=True)
            if collected is not None:
                totals.add(*collected)
    model.train()
    if not parallel_state.is_pipeline_last_stage():
        return None
    totals.all_reduce(parallel_state.get_data_parallel_group(), device)
    return totals
