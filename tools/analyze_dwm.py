#!/usr/bin/env python3
"""Plots and a text summary of how a run's Data Weighting Model weighted its data.

Reads RUN_DIR/metrics.jsonl (the trainer's scalars: dwm/stage, dwm/phase, dwm/weight/<domain>, ...)
and RUN_DIR/dwm_samples.jsonl (one line per logged iteration: {"iteration", "stage", "domain",
"document_id", "weight"}, the per-sample weights of that global batch), and writes into OUT:

  domain_weights.png        mean weight per domain vs iteration; stage boundaries dashed,
                            DWM phases (dwm/phase = 1) shaded, a line at weight 1.0
  weight_histograms.png     a histogram of the per-sample weights of each stage
  score_correlations.png    with --scores: Pearson and Spearman correlation of a sample's weight
  score_correlations.csv    with its document's score, per stage and score column (columns:
                            stage, score, samples, matched, pearson, spearman)

--scores is a CSV (name ending in .csv, header row) or JSON lines file with `domain`,
`document_id` and numeric score columns (e.g. QuRating's writing_style, facts_and_trivia,
educational_value, required_expertise); a (domain, document_id) pair names a document, samples of
unscored documents are skipped. Iterations repeated by a resumed run count once (the later values).
A summary (per stage: samples and mean weight per domain; the correlations) goes to stdout.
Example::

    python tools/analyze_dwm.py runs/370m --scores qurating_scores.csv
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_dwm.analysis.dwm_run import AnalysisError, analyze_run  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the training run's directory")
    parser.add_argument("--metrics", type=Path, metavar="PATH", help="default: RUN_DIR/metrics.jsonl")
    parser.add_argument("--samples", type=Path, metavar="PATH", help="default: RUN_DIR/dwm_samples.jsonl")
    parser.add_argument("--scores", type=Path, metavar="PATH",
                        help="per-document scores (.csv, else JSON lines); adds score_correlations.{png,csv}")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory, created if absent (default: RUN_DIR/analysis)")
    parser.add_argument("--bins", type=int, default=50, help="histogram bins (default: 50)")
    parser.add_argument("--log-y", action="store_true", help="logarithmic counts in the weight histograms")
    args = parser.parse_args(argv)
    if args.bins < 1:
        parser.error(f"--bins {args.bins} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 with the summary on stdout, 1 with the error on stderr."""
    args = parse_args(argv)
    try:
        if not args.run_dir.is_dir():
            raise AnalysisError(f"{args.run_dir}: run directory not found")
        analysis = analyze_run(args.metrics or args.run_dir / "metrics.jsonl",
                               args.samples or args.run_dir / "dwm_samples.jsonl",
                               args.out or args.run_dir / "analysis", args.scores, args.bins, args.log_y)
    except AnalysisError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(analysis.summary)
    print("wrote " + ", ".join(str(path) for path in analysis.outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
