"""Post-hoc analysis of a run: loss curves; with the DWM, domain weights over time, weight
histograms per stage, and the correlation of sample weights with per-document quality scores (the
paper's preference analysis).

Inputs are the trainer's `metrics.jsonl` and `dwm_samples.jsonl` (absent for a run without the DWM)
and, optionally, a CSV or JSON lines file of document scores; `tools/analyze_dwm.py` is the command
line. Reading them is :mod:`~megatron_dwm.analysis.run_files`, the figures
:mod:`~megatron_dwm.analysis.run_plots`; this module writes them with a text summary and the
correlation table.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_dwm.analysis.output import write_text_atomically
from megatron_dwm.analysis.run_files import AnalysisError, SampleBatch, load_metrics, load_samples, load_scores
from megatron_dwm.analysis.run_plots import (plot_domain_weights, plot_loss_curves, plot_score_correlations,
                                             plot_weight_histograms)
from megatron_dwm.analysis.run_schedule import dwm_phase_spans, recorded_schedule, stage_boundaries
from megatron_dwm.analysis.series import TARGET_LOSS, TRAIN_LOSS, VALID_LOSS, final_value, has_dwm
from megatron_dwm.analysis.sample_stats import (CORRELATION_FIELDS, Correlation, score_correlations,
                                                stage_domain_means)


@dataclass
class Analysis:
    """What analyze_run wrote and found: the text summary, the files, the correlation rows."""

    summary: str
    outputs: list[Path]
    correlations: list[Correlation] | None
    dwm: bool  # whether the run had a DWM


def write_correlations_csv(rows: list[Correlation], path: str | os.PathLike) -> Path:
    """The correlation table as CSV (atomically), one row per (stage, score), columns CORRELATION_FIELDS."""
    text = io.StringIO()
    csv.writer(text).writerows([CORRELATION_FIELDS] + [[getattr(r, k) for k in CORRELATION_FIELDS] for r in rows])
    return write_text_atomically(path, text.getvalue())


def _format_final_losses(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for what, key in (("training loss", TRAIN_LOSS), ("validation loss", VALID_LOSS), ("target loss", TARGET_LOSS)):
        final = final_value(records, key)
        lines.append(f"final {what} ({key}): " + (f"{final[1]:.6f} at iteration {final[0]}" if final else "not logged"))
    return lines


def _format_stages(records: list[dict[str, Any]]) -> list[str]:
    schedule = recorded_schedule(records)
    source = ("from the run's schedule" if schedule else
              "inferred from the logged dwm/stage and dwm/phase: up to one log interval late")
    phases = ", ".join(f"{start}-{end}" for start, end in dwm_phase_spans(records))
    return [f"stage boundaries (iterations): {', '.join(map(str, stage_boundaries(records))) or 'none'} ({source})",
            f"DWM phases (iterations): {phases or 'none'}"]


def _format_stage_means(batches: list[SampleBatch]) -> list[str]:
    """Per stage, the sample count and the mean weight and sample count of each domain."""
    lines = []
    for stage, domains in stage_domain_means(batches).items():
        total = sum(n for _, n in domains.values())
        lines.append(f"stage {stage}: {total} samples")
        lines += [f"  {domain:<24} mean weight {mean:8.4f}  samples {n}" for domain, (mean, n) in domains.items()]
    return lines


def _format_correlations(correlations: list[Correlation]) -> list[str]:
    lines = [f"{'stage':>5}  {'score':<24} {'matched':>15}  {'pearson':>8}  {'spearman':>8}"]
    return lines + [f"{r.stage:>5}  {r.score:<24} {f'{r.matched}/{r.samples}':>15}  "
                    f"{r.pearson:8.4f}  {r.spearman:8.4f}" for r in correlations]


def format_summary(records: list[dict[str, Any]], batches: list[SampleBatch] | None,
                   correlations: list[Correlation] | None = None) -> str:
    """Whether the DWM was on, the final losses; with the DWM, its stages and phases, per stage the
    sample count and mean weight per domain, then the correlation table, if any."""
    if batches is None:
        return "\n".join(["DWM: off (no dwm/ scalars in the metrics, no dwm_samples.jsonl): every sample weighed 1",
                          *_format_final_losses(records)])
    if any("dwm/stage" in record for record in records):  # only the DWM's policy has stages
        lines = ["DWM: on", *_format_final_losses(records), *_format_stages(records)]
    else:
        lines = ["DWM: off; the weights of --weighting uniform, domain or loss (one stage: the whole run)",
                 *_format_final_losses(records)]
    lines += _format_stage_means(batches)
    if correlations is not None:
        lines += _format_correlations(correlations)
    return "\n".join(lines)


def _dwm_samples(records: list[dict[str, Any]], samples_path: str | os.PathLike | None) -> list[SampleBatch] | None:
    """The run's per-sample weights; None for a run without the DWM (no dwm/ scalars, no samples file)."""
    exists = samples_path is not None and Path(samples_path).is_file()
    if not exists and not has_dwm(records):
        return None
    if samples_path is None:
        raise AnalysisError("the metrics hold DWM scalars (dwm/...), so the run had a DWM, but no samples file "
                            "(dwm_samples.jsonl) was given")
    if not exists:
        raise AnalysisError(f"{samples_path}: file not found (the metrics hold DWM scalars, dwm/..., so the run "
                            "had a DWM, which logs its per-sample weights there; pass --samples PATH if elsewhere)")
    return load_samples(samples_path)


def analyze_run(metrics_path: str | os.PathLike, samples_path: str | os.PathLike | None,
                out_dir: str | os.PathLike, scores_path: str | os.PathLike | None = None, bins: int = 50,
                log_y: bool = False) -> Analysis:
    """Read every input (so a bad one fails before anything is written), then write into `out_dir`
    the loss curves and, for a run with the DWM, its figures and with scores the correlation CSV.

    A run without the DWM (no `dwm/...` scalars, no samples file) gets the loss curves only; scores
    need the DWM's sample weights and are refused for it.
    """
    records = load_metrics(metrics_path)
    batches = _dwm_samples(records, samples_path)
    if batches is None and scores_path is not None:
        raise AnalysisError(f"{scores_path}: scores are correlated with the DWM's sample weights, and "
                            f"{metrics_path} is of a run without the DWM")
    correlations = None if scores_path is None else score_correlations(batches, *load_scores(scores_path))
    out = Path(out_dir)
    outputs = [plot_loss_curves(records, out / "loss_curves.png")]
    if batches is not None:
        outputs += [plot_domain_weights(records, out / "domain_weights.png"),
                    plot_weight_histograms(batches, out / "weight_histograms.png", bins, log_y)]
    if correlations is not None:
        outputs += [plot_score_correlations(correlations, out / "score_correlations.png"),
                    write_correlations_csv(correlations, out / "score_correlations.csv")]
    return Analysis(format_summary(records, batches, correlations), outputs, correlations, batches is not None)
