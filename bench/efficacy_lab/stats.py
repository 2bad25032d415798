"""The lab's statistics: pure functions of numbers and of a run's metrics records.

A run's records are those of its metrics.jsonl (megatron_dwm.training.metrics.read_metrics):
training records (every --log-interval) carry "elapsed time per iteration (ms)" and the weighting
statistics, evaluation records carry "lm loss validation", the loss over the target-test set.
Comparisons with uniform are paired by seed (same initialisation and data order).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from megatron_dwm.analysis import comparison

TARGET_LOSS = "lm loss validation"
STEP_MS = "elapsed time per iteration (ms)"
ESS = "dwm/ess"
WEIGHT_PREFIX = "dwm/weight/"  # the mean weight of a domain's samples (1 throughout under uniform)
WEIGHT_SHARE_PREFIX = "dwm/weight share/"


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with its 95% t confidence interval (low and high are None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int


# --- Student's t -----------------------------------------------------------------------------------

def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    high = 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    low = 0.0
    for _ in range(200):
        middle = (low + high) / 2.0
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def mean_ci(values: Sequence[float], level: float = 0.95) -> Estimate | None:
    """Mean of `values` with its t confidence interval (df = n - 1); None for no values."""
    n = len(values)
    if n == 0:
        return None
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, None, None, 1)
    half = t_quantile(0.5 + level / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired_differences(method: Mapping[int, float | None], baseline: Mapping[int, float | None]) -> list[float]:
    """method - baseline for every seed both have a value for, in seed order."""
    return [method[seed] - baseline[seed] for seed in sorted(method)
            if method[seed] is not None and baseline.get(seed) is not None]


# --- curves ----------------------------------------------------------------------------------------

def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """Piecewise-linear y at x on the points (xs increasing); None outside [xs[0], xs[-1]]."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def eval_curve(records: Sequence[dict]) -> tuple[list[int], list[float]]:
    """(iterations, target losses) of the evaluation records, one per iteration (the last one wins)."""
    losses = {r["iteration"]: r[TARGET_LOSS] for r in records if TARGET_LOSS in r}
    iterations = sorted(losses)
    return iterations, [losses[i] for i in iterations]


def final_target_loss(records: Sequence[dict]) -> float | None:
    """The target loss of the last evaluation (None if the run never evaluated)."""
    _, losses = eval_curve(records)
    return losses[-1] if losses else None


def tokens_to_reach(tokens: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """Tokens at which the curve first reaches `target` (linear between evaluations); None if it never
    does. A curve that is already at or below `target` at its first point gives that point's tokens
    (an upper bound: nothing was measured before it). The demo comparison's rule, on (tokens, losses)."""
    return comparison.tokens_to_reach(comparison.Curve(list(tokens), list(losses)), target)


# --- wall-clock ------------------------------------------------------------------------------------

def train_time_points(records: Sequence[dict]) -> tuple[list[int], list[float]]:
    """(iterations, cumulative training seconds) from iteration 0, integrating each training record's
    per-iteration time over the iterations it covers (evaluation time excluded)."""
    iterations, seconds = [0], [0.0]
    for record in sorted((r for r in records if STEP_MS in r), key=lambda r: r["iteration"]):
        if record["iteration"] > iterations[-1]:
            seconds.append(seconds[-1] + record[STEP_MS] / 1000.0 * (record["iteration"] - iterations[-1]))
            iterations.append(record["iteration"])
    return iterations, seconds


def train_seconds(records: Sequence[dict]) -> float:
    """Training seconds of the whole run."""
    return train_time_points(records)[1][-1]


def loss_at_seconds(records: Sequence[dict], seconds: float) -> float | None:
    """The target loss after `seconds` of training, interpolated on the run's evaluations placed at
    their cumulative training time; the final loss if the run took less time (it had finished), None
    before its first evaluation."""
    iterations, times = train_time_points(records)
    eval_iterations, losses = eval_curve(records)
    eval_times = [interpolate(iterations, times, i) for i in eval_iterations]
    if not losses or None in eval_times:
        return None
    if seconds >= eval_times[-1]:
        return losses[-1]
    return interpolate(eval_times, losses, seconds)


def mean_step_ms(records: Sequence[dict]) -> float | None:
    """Mean training time per iteration in ms (total training time / iterations)."""
    iterations, seconds = train_time_points(records)
    return 1000.0 * seconds[-1] / iterations[-1] if iterations[-1] else None


# --- weights ---------------------------------------------------------------------------------------

def weight_share(records: Sequence[dict], domain: str) -> tuple[float, float] | None:
    """(mean over the run, value at the end) of a domain's share of the total weight; None if the run
    never logged it (e.g. the domain is not in its blend)."""
    values = [r[WEIGHT_SHARE_PREFIX + domain] for r in sorted(records, key=lambda r: r["iteration"])
              if WEIGHT_SHARE_PREFIX + domain in r]
    return (statistics.fmean(values), values[-1]) if values else None


def late_mean_weight(records: Sequence[dict], domain: str, fraction: float = 0.25) -> float | None:
    """A domain's mean sample weight over the last `fraction` of the run's logged iterations (the mean
    of the logged per-interval means); None if the run never logged it."""
    values = [r[WEIGHT_PREFIX + domain] for r in sorted(records, key=lambda r: r["iteration"])
              if WEIGHT_PREFIX + domain in r]
    if not values:
        return None
    late = values[len(values) - max(1, round(fraction * len(values))):]
    return statistics.fmean(late)


def trailing_mean(values: Sequence[float | None], window: int) -> list[float | None]:
    """The mean of each value and the window - 1 before it (fewer at the start), skipping the Nones;
    None where the window holds none."""
    if window < 1:
        raise ValueError(f"a window needs at least 1 value, got {window}")
    means: list[float | None] = []
    for index in range(len(values)):
        present = [v for v in values[max(0, index - window + 1):index + 1] if v is not None]
        means.append(statistics.fmean(present) if present else None)
    return means


def domain_weight_curve(records: Sequence[dict], domain: str, window: int = 10) -> tuple[list[int], list[float]]:
    """(iterations, mean weight of the domain's samples) at the logged training iterations, as a trailing
    mean over `window` logged iterations: an interval whose batches held none of the domain's samples
    logs no weight for it and counts in the window without a value."""
    logged = sorted((r for r in records if STEP_MS in r), key=lambda r: r["iteration"])
    smoothed = trailing_mean([r.get(WEIGHT_PREFIX + domain) for r in logged], window)
    points = [(r["iteration"], value) for r, value in zip(logged, smoothed) if value is not None]
    return [i for i, _ in points], [v for _, v in points]


def pointwise_mean(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[list[float], list[float]]:
    """(x, mean) at every x of any curve: the mean of the curves that have a value there."""
    at: dict[float, list[float]] = {}
    for xs, ys in curves:
        for x, y in zip(xs, ys):
            at.setdefault(x, []).append(y)
    xs = sorted(at)
    return xs, [statistics.fmean(at[x]) for x in xs]


def mean_ess(records: Sequence[dict]) -> float | None:
    """Mean effective sample size of the logged global batches."""
    values = [r[ESS] for r in records if ESS in r]
    return statistics.fmean(values) if values else None
