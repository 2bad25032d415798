"""The figures of one run: loss curves; with the DWM, domain weights over time, weight histograms
per stage and the correlations of sample weights with document scores. Each is saved as a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from megatron_dwm.analysis.output import agg_figure, save_figure
from megatron_dwm.analysis.run_files import SampleBatch
from megatron_dwm.analysis.run_schedule import dwm_phase_spans, stage_boundaries
from megatron_dwm.analysis.series import (TARGET_LOSS, TRAIN_LOSS, VALID_LOSS, domain_weight_series,
                                          prefixed_series, scalar_series)
from megatron_dwm.analysis.sample_stats import Correlation, stage_weights


def _draw_stages(axes: Any, records: list[dict[str, Any]]) -> None:
    """DWM phases shaded and stage boundaries dashed, at the iterations of the run's schedule."""
    for index, (start, end) in enumerate(dwm_phase_spans(records)):
        axes.axvspan(start, end, color="tab:orange", alpha=0.15, label="DWM phase" if index == 0 else None)
    for index, iteration in enumerate(stage_boundaries(records)):
        axes.axvline(iteration, color="black", linestyle="--", linewidth=0.8,
                     label="stage boundary" if index == 0 else None)


def _legend(axes: Any) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="best")


def plot_domain_weights(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Mean weight per domain vs iteration, stage boundaries dashed, DWM phases shaded."""
    figure = agg_figure(figsize=(10, 5))
    axes = figure.subplots()
    for domain, (iterations, weights) in domain_weight_series(records).items():
        axes.plot(iterations, weights, label=domain, linewidth=1.2)
    _draw_stages(axes, records)
    axes.axhline(1.0, color="gray", linewidth=0.8)
    axes.set(xlabel="iteration", ylabel="mean sample weight", title="DWM weight per domain")
    _legend(axes)
    return save_figure(figure, path)


def _plot_losses(axes: Any, records: list[dict[str, Any]], total: str, domain_prefix: str,
                 marker: str | None = None) -> None:
    """`total` in black, its `<domain_prefix><domain>` curves thinner, in colour."""
    iterations, values = scalar_series(records, total)
    if iterations:
        axes.plot(iterations, values, color="black", linewidth=1.8, marker=marker, label=total)
    for domain, (iterations, values) in prefixed_series(records, domain_prefix).items():
        axes.plot(iterations, values, linewidth=0.9, marker=marker, markersize=3, label=domain)


def _plot_validation(axes: Any, records: list[dict[str, Any]]) -> None:
    """`lm loss validation` and its domains, and `dwm-valid loss`, the DWM's target."""
    _plot_losses(axes, records, VALID_LOSS, f"{VALID_LOSS}/", marker="o")
    iterations, values = scalar_series(records, TARGET_LOSS)
    if iterations:
        axes.plot(iterations, values, color="tab:red", linewidth=1.8, marker="s",
                  label=f"{TARGET_LOSS} (the DWM's target)")
    axes.set(ylabel="loss", title="validation loss")


def plot_loss_curves(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Training loss (`lm loss` and per domain `lm loss/<domain>`) vs iteration and, when the run
    evaluated, a panel of validation losses (`lm loss validation` and its domains, `dwm-valid loss`,
    the DWM's target); with the DWM, its stages and phases as in :func:`plot_domain_weights`."""
    evaluated = any(VALID_LOSS in r or TARGET_LOSS in r for r in records)
    figure = agg_figure(figsize=(10, 8 if evaluated else 5), layout="tight")
    panels = figure.subplots(2 if evaluated else 1, 1, sharex=True, squeeze=False)[:, 0]
    _plot_losses(panels[0], records, TRAIN_LOSS, f"{TRAIN_LOSS}/")
    panels[0].set(ylabel="loss", title="training loss")
    if evaluated:
        _plot_validation(panels[1], records)
    for axes in panels:
        _draw_stages(axes, records)
        _legend(axes)
    panels[-1].set_xlabel("iteration")
    return save_figure(figure, path)


def plot_weight_histograms(batches: list[SampleBatch], path: str | os.PathLike,
                           bins: int = 50, log_y: bool = False) -> Path:
    """One histogram of per-sample weights per stage, on a shared x axis."""
    weights = {s: w[np.isfinite(w)] for s, w in stage_weights(batches).items()} or {None: np.array([])}
    figure = agg_figure(figsize=(8, 2.2 * len(weights) + 0.8), layout="tight")
    panels = figure.subplots(len(weights), 1, sharex=True, squeeze=False)
    every = np.concatenate(list(weights.values()))
    edges = np.histogram_bin_edges(every if len(every) else [0.0, 2.0], bins=bins)
    for axes, (stage, values) in zip(panels[:, 0], weights.items()):
        axes.hist(values, bins=edges, log=log_y, color="tab:blue")
        axes.axvline(1.0, color="gray", linewidth=0.8)
        axes.set_title(f"stage {stage}: {len(values)} samples" if stage is not None else "no samples")
        axes.set_ylabel("samples")
    panels[-1, 0].set_xlabel("sample weight")
    return save_figure(figure, path)


def plot_score_correlations(rows: list[Correlation], path: str | os.PathLike) -> Path:
    """Grouped bars: for each score column, one bar per stage; Pearson and Spearman panels."""
    columns = list(dict.fromkeys(r.score for r in rows))
    stages = sorted({r.stage for r in rows})
    width = 0.8 / max(len(stages), 1)
    figure = agg_figure(figsize=(max(8, 2.5 * len(columns)), 4.5), layout="tight")
    panels = figure.subplots(1, 2, sharey=True)
    for axes, method in zip(panels, ("pearson", "spearman")):
        for index, stage in enumerate(stages):
            by_column = {r.score: getattr(r, method) for r in rows if r.stage == stage}
            axes.bar(np.arange(len(columns)) + (index - (len(stages) - 1) / 2) * width,
                     [by_column[c] for c in columns], width, label=f"stage {stage}")
        axes.axhline(0.0, color="gray", linewidth=0.8)
        axes.set_xticks(np.arange(len(columns)), columns, rotation=20, ha="right")
        axes.set_title(method.capitalize())
    panels[0].set_ylabel("correlation of sample weight and document score")
    panels[0].legend(fontsize="small")
    return save_figure(figure, path)
