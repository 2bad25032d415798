"""What one training run did, in terms a newcomer can read: the model and domains, how long it
trained (iterations, tokens, time), the domains' final mean DWM weights and the target loss (the
`dwm-valid loss` on the DWM's held-out validation set), from the run's metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from megatron_dwm.analysis.comparison import VALID_KEY, mean_domain_weights, smoothed, validation_curve
from megatron_dwm.analysis.series import TRAIN_LOSS, prefixed_series

ELAPSED_KEY = "elapsed time per iteration (ms)"


@dataclass(frozen=True)
class RunSummary:
    """One run's facts; `final_weights` is empty for a --dwm-disable run, `target_loss` None
    without evaluations of the DWM's validation set."""

    model: str
    domains: list[str]
    iterations: int
    train_iters: int
    tokens: int
    train_seconds: float  # the iterations' own times, summed (no start-up, evaluation or saving)
    first_loss: float | None
    last_loss: float | None
    final_weights: dict[str, float]
    final_weights_from: int | None  # the first iteration the final weights are averaged over
    target_loss: float | None
    target_loss_mean: float | None  # mean of the last `window` evaluations (single ones are noisy)
    window: int
    paths: dict[str, str] = field(default_factory=dict)


def training_seconds(records: list[dict[str, Any]]) -> float:
    """Sum of the logged per-iteration times, each record's covering the iterations since the last."""
    total, previous = 0.0, 0
    for record in records:
        if ELAPSED_KEY in record:
            total += record[ELAPSED_KEY] / 1000 * (record["iteration"] - previous)
            previous = record["iteration"]
    return total


def final_domain_weights(records: list[dict[str, Any]]) -> tuple[dict[str, float], int | None]:
    """(domain -> mean logged weight over the last DWM stage, that stage's first logged iteration);
    ({}, None) if the run logged no DWM weights."""
    staged = [r for r in records if "dwm/stage" in r]
    if not staged:
        return {}, None
    last = [r for r in staged if r["dwm/stage"] == staged[-1]["dwm/stage"]]
    return mean_domain_weights(last, 0), last[0]["iteration"]


def summarize_run(records: list[dict[str, Any]], *, model: str, seq_length: int, train_iters: int,
                  window: int = 5, paths: dict[str, str] | None = None) -> RunSummary:
    """The summary of a run's merged metrics records (`load_metrics`)."""
    trained = [r for r in records if "consumed samples" in r]
    if not trained:
        raise ValueError("the metrics hold no training iteration yet")
    losses = [r[TRAIN_LOSS] for r in trained if TRAIN_LOSS in r]
    domains = list(prefixed_series(trained, f"{TRAIN_LOSS}/"))  # sorted by name
    weights, weights_from = final_domain_weights(records)
    target = target_mean = None
    if any(VALID_KEY in r for r in records):
        curve = validation_curve(records, 1)
        window = min(window, len(curve.loss))
        target, target_mean = curve.loss[-1], smoothed(curve, window).loss[-1]
    return RunSummary(model, domains, trained[-1]["iteration"], train_iters, trained[-1]["consumed samples"] * seq_length,
                      training_seconds(records), losses[0] if losses else None, losses[-1] if losses else None,
                      weights, weights_from, target, target_mean, window, dict(paths or {}))


def format_duration(seconds: float) -> str:
    """'4 min 12 s', '38 s'."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _loss(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def format_run_summary(summary: RunSummary) -> str:
    """The summary as Markdown-friendly text: one fact per line, the files last."""
    s = summary
    lines = [f"model:       {s.model}, trained on {len(s.domains)} domains: {', '.join(s.domains)}",
             f"trained:     {s.iterations} of {s.train_iters} iterations, {s.tokens:,} tokens, "
             f"{format_duration(s.train_seconds)} of training steps",
             f"train loss:  {_loss(s.first_loss)} at the first logged iteration -> {_loss(s.last_loss)} at the last"]
    if s.final_weights:
        lines.append(f"DWM weights: mean weight per domain from iteration {s.final_weights_from} on "
                     "(1 = uniform; above 1: the DWM favours the domain)")
        lines += [f"  {domain:<24} {weight:.3f}" for domain, weight in sorted(s.final_weights.items())]
    else:
        lines.append("DWM weights: none (the DWM was off: every sample weighs 1)")
    lines.append(f"target loss: {_loss(s.target_loss)} ({VALID_KEY}, the held-out LAMBADA-style set) at the last "
                 f"evaluation; {_loss(s.target_loss_mean)} as the mean of the last {s.window}")
    if s.paths:
        lines.append("files:")
        lines += [f"  {name + ':':<13}{path}" for name, path in s.paths.items()]
    return "\n".join(lines)
