"""Where a run's logs are: the trainer's metrics.jsonl and, beside it, dwm_samples.jsonl.

The trainer writes metrics to --metrics-file, else to --tensorboard-dir/metrics.jsonl, else to
--save/metrics.jsonl, and the DWM's per-sample weights to dwm_samples.jsonl in the same directory. A
user may name the run directory (which holds the TensorBoard or checkpoint directory), that
directory itself, or the metrics file: :func:`run_files` accepts all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_dwm.analysis.dwm_run import AnalysisError

METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "dwm_samples.jsonl"
ANALYSIS_DIR = "analysis"
WHAT_TO_NAME = "a run directory, its TensorBoard directory or its metrics.jsonl"


@dataclass(frozen=True)
class RunFiles:
    """The inputs and the output directory of one analysis."""

    metrics: Path
    samples: Path  # may be absent: a run without the DWM writes none
    out: Path


def find_metrics(path: Path) -> Path:
    """`path` if it is a file; else PATH/metrics.jsonl, PATH/tensorboard/metrics.jsonl, or the one
    PATH/*/metrics.jsonl. Raises AnalysisError naming what was searched when there is none."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise AnalysisError(f"{path}: not found (expected {WHAT_TO_NAME})")
    for candidate in (path / METRICS_NAME, path / "tensorboard" / METRICS_NAME):
        if candidate.is_file():
            return candidate
    found = sorted(p for p in path.glob(f"*/{METRICS_NAME}") if p.is_file())
    if len(found) > 1:
        raise AnalysisError(f"{path}: several metrics files ({', '.join(map(str, found))}); name the one to "
                            "analyse, or pass --metrics PATH")
    if not found:
        searched = ", ".join(str(p) for p in (path / METRICS_NAME, path / "tensorboard" / METRICS_NAME,
                                              path / "*" / METRICS_NAME))
        raise AnalysisError(f"{path}: no {METRICS_NAME} found (searched {searched}); name {WHAT_TO_NAME} "
                            "(the trainer's --metrics-file, else --tensorboard-dir or --save holds it), "
                            "or pass --metrics PATH")
    return found[0]


def run_files(run: Path | None = None, metrics: Path | None = None, samples: Path | None = None,
              out: Path | None = None) -> RunFiles:
    """The metrics file (--metrics, else found from `run`), the samples file (--samples, else beside
    the metrics file, as the trainer writes it) and the output directory (--out, else `run`/analysis
    when `run` is a directory, else analysis/ beside the metrics file)."""
    if run is None and metrics is None:
        raise AnalysisError(f"name {WHAT_TO_NAME}, or pass --metrics PATH")
    if run is not None and not run.exists():
        raise AnalysisError(f"{run}: not found (expected {WHAT_TO_NAME})")
    for flag, path in (("--metrics", metrics), ("--samples", samples)):
        if path is not None and not path.is_file():
            raise AnalysisError(f"{flag} {path}: file not found")
    metrics = metrics or find_metrics(run)
    default_out = run / ANALYSIS_DIR if run is not None and run.is_dir() else metrics.parent / ANALYSIS_DIR
    return RunFiles(metrics, samples or metrics.parent / SAMPLES_NAME, out or default_out)
