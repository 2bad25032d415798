#!/usr/bin/env python3
"""Does the DWM help? A DWM run and a --dwm-disable run on the demo corpus, same seed, data, model
and schedule, on CPU; then plots and a summary. Run ``make demo-data`` first.

    .venv/bin/python examples/dwm_demo_experiment.py --out runs/dwm-experiment

The demo corpus blends five domains by token count; RedPajamaCommonCrawl is raw spam (the
low-quality domain, about 40% of the tokens). The DWM's outer objective and the reported
validation loss are the LAMBADA-style set (passages of held-out Moby-Dick chapters). By default the
learning rate is constant after warm-up, so the baseline, run twice as long, shows how many tokens
uniform weighting needs to reach the DWM run's final loss. With ``--lr-decay-style cosine`` both
runs decay to a tenth of the peak over the same number of iterations: a same-compute comparison.

Writes under --out: ``baseline/`` and ``dwm/`` (metrics, TensorBoard, dwm_samples.jsonl),
``dwm/analysis/`` (domain weights over training, weight histograms), ``comparison.png`` and
``summary.md``. Losses are compared as trailing means over ``--window`` evaluations. Extra flags
after ``--`` go to the DWM run and override ``DWM_FLAGS`` (for example ``-- --dwm-lr 3e-3``).

Every run's flags are checked before the first run starts (a bad one: exit 2, naming the run); each
run shows its progress, and a failed run's error lines are printed from its ``train.log`` (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from demo_runs import REPO, check_runs, train

from megatron_dwm.analysis.comparison import compare_runs, format_comparison
from megatron_dwm.analysis.dwm_run import analyze_run
from megatron_dwm.analysis.output import write_text_atomically
from megatron_dwm.analysis.run_files import load_metrics

DEMO = REPO / "demo_data"
SEQ_LENGTH, GLOBAL_BATCH = 128, 16
# The DWM of these runs (ours; flags given after -- override them): small beside the tiny LLM,
# 4 stages, each opening with a DWM phase of 50 iterations, the plain gradient as the
# finite-difference direction, weights clipped to [0.1, 2], a validation batch of one global batch,
# an outer step at every iteration of a phase and the raw hypergradient (the recipe docs/results.md
# measured; the DWM's defaults have changed since).
DWM_FLAGS = ["--dwm-stages", "4", "--dwm-update-iters", "50", "--dwm-num-layers", "1", "--dwm-hidden-size", "64",
             "--dwm-seq-length", "64", "--dwm-lr", "1e-3", "--dwm-weight-clip", "0.1", "2",
             "--dwm-fd-direction", "grad", "--dwm-valid-batch-size", str(GLOBAL_BATCH),
             "--dwm-update-interval", "1", "--dwm-hypergradient-scaling", "raw"]


def common_flags(eval_interval: int, seed: int, lr_decay_style: str = "constant") -> list[str]:
    data_path = (DEMO / "indexed" / "data_path.txt").read_text().split()
    return ["--model-preset", "tiny", "--seq-length", str(SEQ_LENGTH), "--micro-batch-size", "4",
            "--global-batch-size", str(GLOBAL_BATCH), "--lr", "3e-3", "--lr-warmup-iters", "20",
            "--lr-decay-style", lr_decay_style, "--min-lr", "3e-4", "--log-interval", "10", "--eval-interval", str(eval_interval),
            "--eval-iters", "4", "--seed", str(seed), "--data-path", *data_path,
            "--dwm-valid-data-path", str(DEMO / "indexed" / "lambada_style_text_document"),
            "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", str(DEMO / "tokenizers" / "demo-spm.model")]


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    """The options of one experiment (shared with dwm_demo_seeds.py)."""
    parser.add_argument("--iters", type=int, default=400, help="iterations of the DWM run")
    parser.add_argument("--baseline-iters", type=int, default=None,
                        help="of the baseline (default: 2 x --iters with a constant learning rate, else --iters)")
    parser.add_argument("--lr-decay-style", choices=["constant", "cosine", "linear"], default="constant")
    parser.add_argument("--eval-interval", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (data parallel)")
    parser.add_argument("--window", type=int, default=5,
                        help="compare trailing means over this many evaluations (single ones are noisy)")
    parser.add_argument("--skip-existing", action="store_true", help="keep a run whose metrics already exist")


def plan_runs(out: Path, seed: int, args: argparse.Namespace, dwm_flags: list[str]) -> dict[Path, list[str]]:
    """Run directory -> full training flags of the experiment's two runs (baseline, DWM) under `out`."""
    baseline_iters = args.baseline_iters or (2 if args.lr_decay_style == "constant" else 1) * args.iters
    common = common_flags(args.eval_interval, seed, args.lr_decay_style)
    return {out / "baseline": [*common, "--dwm-disable", "--train-iters", str(baseline_iters),
                               "--tensorboard-dir", str(out / "baseline")],
            out / "dwm": [*common, "--train-iters", str(args.iters), *DWM_FLAGS, *dwm_flags,
                          "--tensorboard-dir", str(out / "dwm")]}


def run_all(runs: dict[Path, list[str]], nproc: int, skip_existing: bool, names_from: Path) -> None:
    """Check every run's flags, then train each (named by its directory under `names_from`)."""
    todo = {str(run.relative_to(names_from)): (run, flags) for run, flags in runs.items()
            if not (skip_existing and (run / "metrics.jsonl").exists())}
    checked = check_runs({name: flags for name, (_, flags) in todo.items()}, nproc)
    for name, (run, flags) in todo.items():
        train(name, run, nproc, flags, checked[name].train_iters)


def report(out: Path, window: int) -> str:
    """comparison.png, dwm/analysis/ and summary.md of one experiment directory; returns the summary."""
    comparison = compare_runs(load_metrics(out / "dwm" / "metrics.jsonl"), load_metrics(out / "baseline" / "metrics.jsonl"),
                              SEQ_LENGTH * GLOBAL_BATCH, window, out / "comparison.png")
    analysis = analyze_run(out / "dwm" / "metrics.jsonl", out / "dwm" / "dwm_samples.jsonl", out / "dwm" / "analysis")
    summary = f"{format_comparison(comparison)}\n\n{analysis.summary}\n"
    write_text_atomically(out / "summary.md", summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "dwm-experiment")
    parser.add_argument("--seed", type=int, default=1234)
    add_experiment_options(parser)
    parser.add_argument("dwm_flags", nargs="*", help="extra flags of the DWM run (after --)")
    args = parser.parse_args()
    if not (DEMO / "indexed" / "data_path.txt").exists():
        parser.error(f"no demo corpus under {DEMO}: run `make demo-data` first")
    run_all(plan_runs(args.out, args.seed, args, args.dwm_flags), args.nproc, args.skip_existing, args.out)
    print(report(args.out, args.window))


if __name__ == "__main__":
    main()
