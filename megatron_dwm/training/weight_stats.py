"""What every weighting policy reports about its weights (DESIGN.md section 9).

Each policy hands over the global batches it weighed (detached
:class:`~megatron_dwm.dwm.colocated.GlobalBatchWeights`, in global order, on the ranks that see
the whole batch); :class:`WeightLog` turns those of one log interval
into the same scalars for every policy and appends the interval's last batch to the per-sample
records (``dwm_samples.jsonl``), so the analysis and the plots work for all of them.
"""

from __future__ import annotations

import json
import os
from megatron_dwm.dwm.colocated import GlobalBatchWeights
from megatron_dwm.training.metrics import DomainTotals

WEIGHT_PREFIX = "dwm/weight/"  # mean weight of a domain's samples
WEIGHT_SHARE_PREFIX = "dwm/weight share/"  # a domain's share of the total weight


def weight_scalars(batches: list[GlobalBatchWeights], domains: list[str]) -> dict[str, float]:
    """Range, spread, effective sample size and per-domain mean weight and weight share."""
    weights = [batch.weights.double().cpu() for batch in batches]
    by_domain = DomainTotals(len(domains))
    for batch, batch_weights in zip(batches, weights):
        by_domain.add(batch_weights, batch.domain_id)
    scalars: dict[str, float] = {
        "dwm/weight min": min(float(w.min()) for w in weights),
        "dwm/weight max": max(float(w.max()) for w in weights),
        "dwm/weight std": sum(float(w.std()) if w.numel() > 1 else 0.0 for w in weights) / len(weights),
        "dwm/ess": sum(float(w.sum() ** 2 / (w ** 2).sum()) for w in weights) / len(weights),
        "dwm/fallbacks": sum(int(batch.fell_back) for batch in batches),
    }
    scalars.update({f"{WEIGHT_PREFIX}{name}": mean for name, mean in by_domain.domain_means(domains).items()})
    total = float(by_domain.sums[-1])
    if total > 0:
        scalars.update({f"{WEIGHT_SHARE_PREFIX}{name}": float(by_domain.sums[i]) / total
                        for i, name in enumerate(domains) if by_domain.counts[i] > 0})
    return scalars


class WeightLog:
    """The weighed global batches since the last log line, and the per-sample records file."""

    def __init__(self, samples_log: str | None) -> None:
        self.samples_log = samples_log  # None: not the logging rank, or no metrics file
        self.batches: list[GlobalBatchWeights] = []

    def add(self, batch: GlobalBatchWeights) -> None:
        self.batches.append(batch)

    def pop(self, domains: list[str], iteration: int, extra_record: dict | None = None) -> dict[str, float]:
        """The interval's scalars ({} if it weighed nothing); its last batch goes to the samples log
        with `extra_record`'s fields."""
        if not self.batches:
            return {}
        scalars = weight_scalars(self.batches, domains)
        self._write_record(self.batches[-1], domains, iteration, extra_record or {})
        self.batches = []
        return scalars

    def _write_record(self, last: GlobalBatchWeights, domains: list[str], iteration: int, extra: dict) -> None:
        if self.samples_log is None:
            return
        record = {
            "iteration": iteration,
            **extra,
            "domain": [domains[d] if 0 <= d < len(domains) else str(d) for d in last.domain_id.tolist()],
            "document_id": last.document_id.tolist(),
            "weight": last.weights.double().tolist(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(self.samples_log)), exist_ok=True)
        with open(self.samples_log, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
