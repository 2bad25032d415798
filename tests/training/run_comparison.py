"""Two DWM runs compared iteration by iteration: their logs, and whether their hypergradients agree.

Two runs whose computations differ only in the order of float32 sums (another placement of the
DWM, another reduction of the gradients) have parameters that differ in their last bits. Smooth
quantities then agree to a relative RELATIVE. A hypergradient is a finite difference,
g_i = -(eta / n) (l_i^+ - l_i^-) / (2 eps): a last-bit change of the parameters can move each of
l_i^+ and l_i^- by a unit in the last place of float32, independently, which moves g_i by up to
two "resolutions" (eta / n) ulp(l) / (2 eps), logged with every hypergradient: whatever the CPU,
g_i is only known to that resolution. Hypergradients must agree to RELATIVE plus RESOLUTIONS
resolutions (twice the two-ulp bound: each loss's forward pass may round differently). Once the DWM
has learned from hypergradients known only to that resolution, its weights, and with them the LLM's
losses, may differ by more than RELATIVE: they agree to AFTER_UPDATE (measured: 1.7e-6 between two
placements on an AMD EPYC; a 1% change of the DWM's learning rate moves them by 8.7e-5 to 9.2e-4)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from megatron_dwm.training.metrics import WALL_CLOCK_METRICS, read_metrics

RELATIVE = 1e-6
RESOLUTIONS = 4
AFTER_UPDATE = 2e-5


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


def assert_same_training(ours: tuple[dict, dict], theirs: tuple[dict, dict], identical_weights: int,
                         loose: float = 1e-4) -> list[int]:
    """Two runs' logs (from run_logs) agree iteration by iteration: loss and grad norm to RELATIVE while the
    DWM's weights come from hypergradients that agree (up to `identical_weights`), to `loose` after (the DWM's
    Adam amplifies last-bit differences where its gradients are near 0); weights to RELATIVE and hypergradients
    by hypergradients_agree up to `identical_weights`. Returns the iterations whose hypergradients were compared
    (those the reference learned from)."""
    (records, samples), (reference, reference_samples) = ours, theirs
    assert sorted(records) == sorted(reference)
    compared = []
    for iteration in sorted(reference):
        tolerance = RELATIVE if iteration <= identical_weights else loose
        for key in ("lm loss", "grad norm"):
            assert records[iteration][key] == pytest.approx(reference[iteration][key], rel=tolerance), (iteration, key)
        mine, other = samples[iteration], reference_samples[iteration]
        assert ("hypergradient" in mine) == ("hypergradient" in other), iteration
        if iteration > identical_weights:
            continue
        assert mine["weight"] == pytest.approx(other["weight"], rel=RELATIVE, abs=1e-7), iteration
        if "hypergradient" in other and any(other["hypergradient"]):  # all 0 where the learning rate is 0
            assert hypergradients_agree(mine, other), (iteration, mine, other)
            compared.append(iteration)
    return compared
