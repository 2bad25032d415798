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
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_dwm.analysis.dwm_run import analyze_run, load_metrics  # noqa: E402
from megatron_dwm.analysis.comparison import compare, format_comparison, plot_comparison, validation_curve  # noqa: E402

DEMO = REPO / "demo_data"
SEQ_LENGTH, GLOBAL_BATCH = 128, 16
# The DWM of these runs (ours; flags given after -- override them): small beside the tiny LLM,
# 4 stages, each opening with a DWM phase of 50 iterations, the plain gradient as the
# finite-difference direction, weights clipped to [0.1, 2], a validation batch of one global batch.
DWM_FLAGS = ["--dwm-stages", "4", "--dwm-update-iters", "50", "--dwm-num-layers", "1", "--dwm-hidden-size", "64",
             "--dwm-seq-length", "64", "--dwm-lr", "1e-3", "--dwm-weight-clip", "0.1", "2",
             "--dwm-fd-direction", "grad", "--dwm-valid-batch-size", str(GLOBAL_BATCH)]


def common_flags(eval_interval: int, seed: int, lr_decay_style: str = "constant") -> list[str]:
    data_path = (DEMO / "indexed" / "data_path.txt").read_text().split()
    return ["--model-preset", "tiny", "--seq-length", str(SEQ_LENGTH), "--micro-batch-size", "4",
            "--global-batch-size", str(GLOBAL_BATCH), "--lr", "3e-3", "--lr-warmup-iters", "20",
            "--lr-decay-style", lr_decay_style, "--min-lr", "3e-4", "--log-interval", "10", "--eval-interval", str(eval_interval),
            "--eval-iters", "4", "--seed", str(seed), "--data-path", *data_path,
            "--dwm-valid-data-path", str(DEMO / "indexed" / "lambada_style_text_document"),
            "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", str(DEMO / "tokenizers" / "demo-spm.model")]


def train(run_dir: Path, nproc: int, flags: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               str(REPO / "pretrain_dwm.py"), *flags, "--tensorboard-dir", str(run_dir)]
    print("+", " ".join(command), flush=True)
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=log,
                       stderr=subprocess.STDOUT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "dwm-experiment")
    parser.add_argument("--iters", type=int, default=400, help="iterations of the DWM run")
    parser.add_argument("--baseline-iters", type=int, default=None,
                        help="of the baseline (default: 2 x --iters with a constant learning rate, else --iters)")
    parser.add_argument("--lr-decay-style", choices=["constant", "cosine", "linear"], default="constant")
    parser.add_argument("--eval-interval", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (data parallel)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--window", type=int, default=5,
                        help="compare trailing means over this many evaluations (single ones are noisy)")
    parser.add_argument("--skip-existing", action="store_true", help="keep a run whose metrics already exist")
    parser.add_argument("dwm_flags", nargs="*", help="extra flags of the DWM run (after --)")
    args = parser.parse_args()
    if not (DEMO / "indexed" / "data_path.txt").exists():
        parser.error(f"no demo corpus under {DEMO}: run `make demo-data` first")
    baseline_iters = args.baseline_iters or (2 if args.lr_decay_style == "constant" else 1) * args.iters
    runs = {
        "baseline": ["--dwm-disable", "--train-iters", str(baseline_iters)],
        "dwm": ["--train-iters", str(args.iters), *DWM_FLAGS, *args.dwm_flags],
    }
    for name, flags in runs.items():
        if args.skip_existing and (args.out / name / "metrics.jsonl").exists():
            continue
        train(args.out / name, args.nproc, [*common_flags(args.eval_interval, args.seed, args.lr_decay_style), *flags])

    tokens_per_iteration = SEQ_LENGTH * GLOBAL_BATCH
    dwm = validation_curve(load_metrics(args.out / "dwm" / "metrics.jsonl"), tokens_per_iteration)
    baseline = validation_curve(load_metrics(args.out / "baseline" / "metrics.jsonl"), tokens_per_iteration)
    comparison = compare(dwm, baseline, args.window)
    plot_comparison(dwm, baseline, comparison, args.out / "comparison.png", window=args.window)
    analysis = analyze_run(args.out / "dwm" / "metrics.jsonl", args.out / "dwm" / "dwm_samples.jsonl",
                           args.out / "dwm" / "analysis")
    summary = f"{format_comparison(comparison)}\n\n{analysis.summary}\n"
    staging = args.out / ".summary.md.tmp"
    staging.write_text(summary)
    os.replace(staging, args.out / "summary.md")
    print(summary)


if __name__ == "__main__":
    main()
