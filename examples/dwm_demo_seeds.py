#!/usr/bin/env python3
"""Summarise several seeds of ``dwm_demo_experiment.py``: a Markdown table (final losses, the mean
DWM - baseline difference over the DWM run's second half, late mean weight per domain) with the
mean and spread over seeds, and ``seeds.png`` (gain per seed, weights per domain per seed).

    for seed in 4321 1234 2025; do
      .venv/bin/python examples/dwm_demo_experiment.py --out runs/seeds/$seed --seed $seed --iters 800 --lr-decay-style cosine
    done
    .venv/bin/python examples/dwm_demo_seeds.py runs/seeds/* --out runs/seeds

or, training the seeds' experiments first (every run's flags checked before the first starts):

    .venv/bin/python examples/dwm_demo_seeds.py --seeds 4321 1234 2025 --out runs/seeds --iters 800 --lr-decay-style cosine

Each run directory is labelled by its name (the seed, above).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dwm_demo_experiment import GLOBAL_BATCH, SEQ_LENGTH, add_experiment_options, plan_runs, report, run_all

from megatron_dwm.analysis.comparison import (
    SeedResult,
    compare,
    format_seed_table,
    mean_difference,
    mean_domain_weights,
    plot_seeds,
    validation_curve,
)
from megatron_dwm.analysis.output import write_text_atomically
from megatron_dwm.analysis.run_files import AnalysisError, load_metrics


def seed_result(run: Path, window: int, weights_after: float) -> SeedResult:
    """The comparison of one experiment directory (its `dwm/` and `baseline/` runs)."""
    tokens_per_iteration = SEQ_LENGTH * GLOBAL_BATCH
    records = load_metrics(run / "dwm" / "metrics.jsonl")
    dwm = validation_curve(records, tokens_per_iteration)
    baseline = validation_curve(load_metrics(run / "baseline" / "metrics.jsonl"), tokens_per_iteration)
    second_half = mean_difference(dwm, baseline, after_tokens=dwm.tokens[-1] / 2)
    if second_half is None:
        raise AnalysisError(f"{run}: the baseline has no evaluation in the DWM run's second half")
    last_iteration = dwm.tokens[-1] // tokens_per_iteration
    return SeedResult(run.name, compare(dwm, baseline, window), second_half,
                      mean_domain_weights(records, int(weights_after * last_iteration)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="output directories of dwm_demo_experiment.py")
    parser.add_argument("--out", type=Path, required=True, help="where seeds.md and seeds.png go")
    parser.add_argument("--seeds", type=int, nargs="+", default=[],
                        help="first run dwm_demo_experiment.py's experiment with each seed, in --out/SEED")
    parser.add_argument("--weights-after", type=float, default=0.75,
                        help="average the domain weights after this fraction of the DWM run")
    add_experiment_options(parser)
    args = parser.parse_args()
    if args.seeds:
        runs = {run: flags for seed in args.seeds for run, flags in plan_runs(args.out / str(seed), seed, args, []).items()}
        run_all(runs, args.nproc, args.skip_existing, args.out)
        for seed in args.seeds:
            report(args.out / str(seed), args.window)
        args.runs += [args.out / str(seed) for seed in args.seeds]
    if not args.runs:
        parser.error("give the experiments' directories, or --seeds to run them")
    try:
        results = [seed_result(run, args.window, args.weights_after) for run in args.runs]
    except (AnalysisError, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    last_iterations = results[0].comparison.dwm_final_tokens // (SEQ_LENGTH * GLOBAL_BATCH)
    table = format_seed_table(results, int(args.weights_after * last_iterations)) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out / "seeds.md", table)
    plot_seeds(results, args.out / "seeds.png")
    print(table)
    print(f"wrote {args.out / 'seeds.md'} and {args.out / 'seeds.png'}")


if __name__ == "__main__":
    main()
