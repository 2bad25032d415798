"""Statistics of the per-sample weights a run logged: per stage and domain, and their correlation with
per-document quality scores (the paper's preference analysis)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from megatron_dwm.analysis.run_files import SampleBatch

CORRELATION_FIELDS = ["stage", "score", "samples", "matched", "pearson", "spearman"]


@dataclass
class Correlation:
    """Correlation of sample weights with one score column over one stage's samples."""

    stage: int
    score: str
    samples: int  # samples of the stage
    matched: int  # of those, samples whose document has this score
    pearson: float
    spearman: float


def stage_weights(batches: list[SampleBatch]) -> dict[int, np.ndarray]:
    """Stage -> every per-sample weight logged in it."""
    stages = sorted({b.stage for b in batches})
    return {s: np.array([w for b in batches if b.stage == s for w in b.weight]) for s in stages}


def stage_domain_means(batches: list[SampleBatch]) -> dict[int, dict[str, tuple[float, int]]]:
    """Stage -> domain -> (mean per-sample weight, number of samples)."""
    groups: dict[int, dict[str, list[float]]] = {}
    for batch in batches:
        for domain, weight in zip(batch.domain, batch.weight):
            groups.setdefault(batch.stage, {}).setdefault(domain, []).append(weight)
    return {stage: {domain: (math.fsum(ws) / len(ws), len(ws)) for domain, ws in sorted(by.items())}
            for stage, by in sorted(groups.items())}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, group = np.unique(x, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation: Pearson of the average ranks."""
    return pearson(average_ranks(np.asarray(x, float)), average_ranks(np.asarray(y, float)))


def score_correlations(batches: list[SampleBatch], columns: list[str],
                       scores: dict[tuple[str, int], dict[str, float]]) -> list[Correlation]:
    """Per stage and score column, correlations of sample weights with their documents' scores;
    samples whose document has no (finite) score for the column are skipped."""
    rows = []
    for stage in sorted({b.stage for b in batches}):
        samples = [(w, scores.get((d, i), {})) for b in batches if b.stage == stage
                   for d, i, w in zip(b.domain, b.document_id, b.weight)]
        for column in columns:
            pairs = [(w, s[column]) for w, s in samples if math.isfinite(s.get(column, math.nan))]
            weights, values = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            rows.append(Correlation(stage, column, len(samples), len(pairs),
                                    pearson(weights, values), spearman(weights, values)))
    return rows
