"""A DWM run against its ``--dwm-disable`` baseline: validation loss against training tokens, and
how many tokens the baseline needs to reach the DWM run's final loss."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_dwm.analysis.output import agg_figure, save_figure
from megatron_dwm.analysis.series import TARGET_LOSS, domain_weight_series

VALID_KEY = TARGET_LOSS


@dataclass(frozen=True)
class Curve:
    """One run's evaluations: training tokens seen at each, and the loss."""

    tokens: list[int]
    loss: list[float]


def validation_curve(records: list[dict[str, Any]], tokens_per_iteration: int, key: str = VALID_KEY) -> Curve:
    """`key` at every evaluation of a run's metrics (a resumed run's later record of an iteration wins)."""
    by_iteration = {record["iteration"]: record[key] for record in records if key in record}
    if not by_iteration:
        raise ValueError(f"the metrics hold no {key!r}: did the run evaluate on its --dwm-valid-data-path?")
    iterations = sorted(by_iteration)
    return Curve([i * tokens_per_iteration for i in iterations], [by_iteration[i] for i in iterations])


def smoothed(curve: Curve, window: int) -> Curve:
    """The trailing mean of the last `window` evaluations at each one (single evaluations of a small
    model's loss jump from one to the next)."""
    means = [sum(curve.loss[max(0, i - window + 1): i + 1]) / len(curve.loss[max(0, i - window + 1): i + 1])
             for i in range(len(curve.loss))]
    return Curve(list(curve.tokens), means)


def tokens_to_reach(curve: Curve, target: float) -> float | None:
    """Tokens at which `curve` first reaches `target` (linear between evaluations; None if never)."""
    previous = None
    for tokens, loss in zip(curve.tokens, curve.loss):
        if loss <= target:
            if previous is None:
                return float(tokens)
            (t0, l0) = previous
            return t0 + (tokens - t0) * (l0 - target) / (l0 - loss)
        previous = (tokens, loss)
    return None


@dataclass(frozen=True)
class Comparison:
    dwm_final_tokens: int
    dwm_final_loss: float
    baseline_loss_at_same_tokens: float | None  # the baseline's evaluation at the DWM run's last one
    baseline_tokens_to_match: float | None  # tokens the baseline needs to reach the DWM's final loss

    @property
    def token_ratio(self) -> float | None:
        return None if self.baseline_tokens_to_match is None else self.baseline_tokens_to_match / self.dwm_final_tokens


def compare(dwm: Curve, baseline: Curve, window: int = 1) -> Comparison:
    """The DWM run's final loss against the baseline; with `window` > 1 both curves are first
    replaced by their trailing means over that many evaluations."""
    if window > 1:
        dwm, baseline = smoothed(dwm, window), smoothed(baseline, window)
    final_tokens, final_loss = dwm.tokens[-1], dwm.loss[-1]
    same = dict(zip(baseline.tokens, baseline.loss)).get(final_tokens)
    return Comparison(final_tokens, final_loss, same, tokens_to_reach(baseline, final_loss))


def plot_comparison(dwm: Curve, baseline: Curve, comparison: Comparison, path: str | os.PathLike,
                    ylabel: str = "LAMBADA-style validation loss", window: int = 1) -> Path:
    """Both curves (faint) and, with `window` > 1, their trailing means (bold), which `comparison` is of."""
    figure = agg_figure(figsize=(9, 5))
    axes = figure.subplots()
    for curve, label, color in ((baseline, "--dwm-disable (uniform)", "tab:blue"), (dwm, "DWM", "tab:orange")):
        tokens = [t / 1e6 for t in curve.tokens]
        axes.plot(tokens, curve.loss, color=color, marker=".", alpha=0.35 if window > 1 else 1.0,
                  label=label if window == 1 else f"{label}, each evaluation")
        if window > 1:
            axes.plot(tokens, smoothed(curve, window).loss, color=color, linewidth=2,
                      label=f"{label}, mean of the last {window}")
    axes.axhline(comparison.dwm_final_loss, color="gray", linestyle=":", linewidth=0.8)
    if comparison.baseline_tokens_to_match is not None:
        axes.axvline(comparison.baseline_tokens_to_match / 1e6, color="gray", linestyle="--", linewidth=0.8,
                     label=f"baseline reaches the DWM's final loss ({comparison.token_ratio:.2f}x tokens)")
    axes.set(xlabel="training tokens (millions)", ylabel=ylabel, title="DWM vs uniform weighting")
    axes.legend(fontsize="small")
    return save_figure(figure, path)


def compare_runs(dwm_records: list[dict[str, Any]], baseline_records: list[dict[str, Any]],
                 tokens_per_iteration: int, window: int, plot_path: str | os.PathLike) -> Comparison:
    """A DWM run's validation curve against its baseline's (merged metrics records), compared over
    trailing means of `window` evaluations and plotted to `plot_path`."""
    dwm = validation_curve(dwm_records, tokens_per_iteration)
    baseline = validation_curve(baseline_records, tokens_per_iteration)
    comparison = compare(dwm, baseline, window)
    plot_comparison(dwm, baseline, comparison, plot_path, window=window)
    return comparison


def format_comparison(comparison: Comparison) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "not reached" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    lines = [
        f"DWM run: final validation loss {comparison.dwm_final_loss:.4f} after {comparison.dwm_final_tokens:,} tokens",
        f"baseline at the same tokens: {fmt(comparison.baseline_loss_at_same_tokens, '.4f')}",
        f"tokens the baseline needs to reach it: {fmt(comparison.baseline_tokens_to_match, ',.0f')}"
        + ("" if comparison.token_ratio is None else f" ({comparison.token_ratio:.2f}x)"),
    ]
    return "\n".join(lines)


def mean_difference(dwm: Curve, baseline: Curve, after_tokens: float = 0.0) -> float | None:
    """Mean of DWM - baseline over the evaluations both runs made after `after_tokens` tokens
    (None if they share none): the gain over a stretch of training, less noisy than the last point."""
    baseline_at = dict(zip(baseline.tokens, baseline.loss))
    differences = [loss - baseline_at[tokens] for tokens, loss in zip(dwm.tokens, dwm.loss)
                   if tokens > after_tokens and tokens in baseline_at]
    return sum(differences) / len(differences) if differences else None


def mean_domain_weights(records: list[dict[str, Any]], after_iteration: int) -> dict[str, float]:
    """Domain -> mean of the logged `dwm/weight/<domain>` after `after_iteration`."""
    means = {}
    for domain, (iterations, weights) in domain_weight_series(records).items():
        late = [w for i, w in zip(iterations, weights) if i > after_iteration]
        if late:
            means[domain] = sum(late) / len(late)
    return means


@dataclass(frozen=True)
class SeedResult:
    """One seed of a DWM-vs-baseline experiment."""

    seed: str
    comparison: Comparison  # of the trailing means
    second_half_difference: float  # DWM - baseline, mean over the DWM run's second half
    domain_weights: dict[str, float]  # mean weight per domain late in the DWM run


def format_seed_table(results: list[SeedResult], weights_after: int) -> str:
    """A Markdown table of the seeds, then the mean and standard deviation of the second-half difference."""
    domains = sorted({d for r in results for d in r.domain_weights})
    lines = ["| seed | final loss, DWM / baseline | DWM - baseline, second half | baseline tokens to match | "
             f"mean weight after iteration {weights_after}: {', '.join(domains)} |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        same = r.comparison.baseline_loss_at_same_tokens
        ratio = "not reached" if r.comparison.token_ratio is None else f"{r.comparison.token_ratio:.2f}x"
        weights = ", ".join(f"{r.domain_weights[d]:.2f}" if d in r.domain_weights else "-" for d in domains)
        lines.append(f"| {r.seed} | {r.comparison.dwm_final_loss:.3f} / "
                     f"{'-' if same is None else format(same, '.3f')} | {r.second_half_difference:+.3f} | "
                     f"{ratio} | {weights} |")
    differences = [r.second_half_difference for r in results]
    mean = sum(differences) / len(differences)
    spread = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1)) if len(differences) > 1 else 0.0
    lines.append("")
    lines.append(f"second half, DWM - baseline over {len(results)} seeds: mean {mean:+.3f}, standard deviation "
                 f"{spread:.3f}; lower in {sum(d < 0 for d in differences)} of {len(results)}")
    return "\n".join(lines)


def plot_seeds(results: list[SeedResult], path: str | os.PathLike) -> Path:
    """Left: each seed's second-half difference (below zero: the DWM is better). Right: each seed's
    late mean weight per domain, with uniform (1) marked."""
    figure = agg_figure(figsize=(12, 4.5), layout="constrained")
    gains, weights = figure.subplots(1, 2)
    seeds = [r.seed for r in results]
    differences = [r.second_half_difference for r in results]
    gains.bar(seeds, differences, color=["tab:green" if d < 0 else "tab:red" for d in differences])
    gains.axhline(0.0, color="black", linewidth=0.8)
    gains.set(xlabel="seed", ylabel="DWM - baseline loss, second half",
              title="DWM vs uniform per seed")
    domains = sorted({d for r in results for d in r.domain_weights})
    for offset, seed_result in enumerate(results):
        xs = [i + (offset - (len(results) - 1) / 2) * 0.8 / max(len(results), 1) for i in range(len(domains))]
        weights.scatter(xs, [seed_result.domain_weights.get(d, math.nan) for d in domains], label=seed_result.seed)
    weights.axhline(1.0, color="gray", linestyle=":", linewidth=0.8)
    prefix = os.path.commonprefix(domains) if len(domains) > 1 else ""
    weights.set_xticks(range(len(domains)), [d[len(prefix):] or d for d in domains], fontsize="small")
    weights.set(ylabel="mean weight, late in training", title="DWM weight per domain per seed"
                + (f" ({prefix}...)" if prefix else ""))
    weights.legend(title="seed", fontsize="small")
    return save_figure(figure, path)
