"""Two DWM runs compared iteration by iteration: their logs, and whether their hypergradients agree.

Two runs whose computations differ only in the order of float32 sums (another placement of the
DWM, another reduction of the gradients) have parameters that differ in their last bits. Smooth
quantities then agree to a relative RELATIVE. A hypergradient is a finite difference,
g_i = -(eta / n) (l_i^+ - l_i^-) / (2 eps): a last-bit change of the parameters can move each of
l_i^+ and l_i^- by a unit in the last place of float32, independently, which moves g_i by up to
two "resolutions" (eta / n) ulp(l) / (2 eps), logged with every hypergradient: whatever the CPU,
g_i is only known to that resolution. Hypergradients must agree to RELATIVE plus RESOLUTIONS
resolutions (twice the two-ulp bound: each loss's forward pass may round differently)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from megatron_dwm.training.metrics import WALL_CLOCK_METRICS, read_metrics

RELATIVE = 1e-6
RESOLUTIONS = 4


def run_logs(run_dir: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """(training records of metrics.jsonl, records of dwm_samples.jsonl), each by iteration."""
    records = {r["iteration"]: r for r in read_metrics(run_dir / "metrics.jsonl") if "lm loss" in r}
    samples = {r["iteration"]: r for r in map(json.loads, (run_dir / "dwm_samples.jsonl").read_text().splitlines())}
    return records, samples


def metrics_by_iteration(path: Path) -> dict[int, list[dict]]:
    """Every record of a metrics file, grouped by iteration (training, then evaluation), wall-clock
    fields dropped: what two runs of one computation log alike, bit for bit."""
    records = defaultdict(list)
    for record in read_metrics(path):
        records[record["iteration"]].append({k: v for k, v in record.items() if k not in WALL_CLOCK_METRICS})
    return dict(records)


def hypergradients_agree(ours: dict, theirs: dict) -> bool:
    """Whether two samples-log records' hypergradients agree to RELATIVE plus RESOLUTIONS resolutions
    (asserting first that this bound lies far below the signal)."""
    resolution = max(ours["hypergradient_resolution"], theirs["hypergradient_resolution"])
    assert 0 < RESOLUTIONS * resolution < 0.01 * max(map(abs, theirs["hypergradient"]))  # far below the signal
    return all(abs(a - b) <= RELATIVE * abs(b) + RESOLUTIONS * resolution
               for a, b in zip(ours["hypergradient"], theirs["hypergradient"]))
