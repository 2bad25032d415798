#!/usr/bin/env python3
"""Plots and a text summary of a training run: its losses and how its Data Weighting Model
weighted its data.

RUN is any of: the run directory (e.g. runs/demo, holding metrics.jsonl directly or in a
subdirectory such as tensorboard/), the TensorBoard directory (--tensorboard-dir), or the metrics
file itself. The trainer writes metrics.jsonl to --metrics-file, else --tensorboard-dir, else
--save, and dwm_samples.jsonl beside it; this tool looks for RUN/metrics.jsonl, then
RUN/tensorboard/metrics.jsonl, then a single RUN/*/metrics.jsonl, and for dwm_samples.jsonl beside
the metrics file (--metrics and --samples name them instead).

It reads metrics.jsonl (the trainer's scalars: lm loss, lm loss/<domain>, lm loss validation,
dwm-valid loss, dwm/stage, dwm/phase, dwm/weight/<domain>, the dwm/schedule/... a fresh run logs
once) and dwm_samples.jsonl (one line per logged iteration: {"iteration", "stage", "domain",
"document_id", "weight"}, the per-sample weights of that global batch), and writes into OUT
(default: RUN/analysis if RUN is a directory, else analysis/ beside the metrics file):

  loss_curves.png           training loss (lm loss and per domain) vs iteration, and the
                            validation losses (lm loss validation, dwm-valid loss) when logged
  domain_weights.png        with the DWM: mean weight per domain vs iteration; stage boundaries
                            dashed and DWM phases shaded at the iterations of the run's schedule
                            (inferred from the logged dwm/stage, dwm/phase for older runs), a
                            line at weight 1.0
  weight_histograms.png     with the DWM: a histogram of the per-sample weights of each stage
  score_correlations.png    with --scores: Pearson and Spearman correlation of a sample's weight
  score_correlations.csv    with its document's score, per stage and score column (columns:
                            stage, score, samples, matched, pearson, spearman)

A run without the DWM (--dwm-disable: no dwm/ scalars, no dwm_samples.jsonl) gets the loss curves
and a summary saying the DWM was off. --scores is a CSV (name ending in .csv, header row) or JSON
lines file with `domain`, `document_id` and numeric score columns (e.g. QuRating's writing_style,
facts_and_trivia, educational_value, required_expertise); a (domain, document_id) pair names a
document, samples of unscored documents are skipped. Iterations repeated by a resumed run count
once (the later values). A summary (final losses; with the DWM, stages, per stage samples and mean
weight per domain, the correlations) goes to stdout. Examples::

    python tools/analyze_dwm.py runs/370m --scores qurating_scores.csv
    python tools/analyze_dwm.py runs/demo/tensorboard/metrics.jsonl --out /tmp/demo-analysis
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_dwm.analysis.dwm_run import analyze_run  # noqa: E402
from megatron_dwm.analysis.run_files import AnalysisError, run_files  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", type=Path, nargs="?",
                        help="the run directory, its TensorBoard directory or its metrics.jsonl")
    parser.add_argument("--metrics", type=Path, metavar="PATH", help="the metrics file (default: found from RUN)")
    parser.add_argument("--samples", type=Path, metavar="PATH",
                        help="the DWM's per-sample weights (default: dwm_samples.jsonl beside the metrics file)")
    parser.add_argument("--scores", type=Path, metavar="PATH",
                        help="per-document scores (.csv, else JSON lines); adds score_correlations.{png,csv}")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory, created if absent (default: RUN/analysis if RUN is a directory, "
                             "else analysis/ beside the metrics file)")
    parser.add_argument("--bins", type=int, default=50, help="histogram bins (default: 50)")
    parser.add_argument("--log-y", action="store_true", help="logarithmic counts in the weight histograms")
    args = parser.parse_args(argv)
    if args.run is None and args.metrics is None:
        parser.error("name RUN (a run directory, its TensorBoard directory or its metrics.jsonl) or --metrics PATH")
    if args.bins < 1:
        parser.error(f"--bins {args.bins} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 with the summary on stdout, 1 with the error on stderr."""
    args = parse_args(argv)
    try:
        files = run_files(args.run, args.metrics, args.samples, args.out)
        analysis = analyze_run(files.metrics, files.samples, files.out, args.scores, args.bins, args.log_y)
    except AnalysisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(analysis.summary)
    print("wrote " + ", ".join(str(path) for path in analysis.outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
