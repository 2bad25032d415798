#!/usr/bin/env python3
"""The DWM's cost: time per LLM-phase step and per DWM-phase step against --dwm-disable, in one
invocation (same data, seed and machine). Run ``make demo-data`` first.

    python bench/bench_dwm.py --config cpu-tiny --iters 30 --markdown

- baseline: ``--dwm-disable`` (uniform weights through the same loss and loop);
- LLM phase: the DWM weighs every batch but is frozen (its forward pass only);
- DWM phase: the DWM is updated every iteration (FD outer step: one forward+backward on the
  validation batch and two forward-only passes over the training batch, plus the DWM's step),
  with the default validation batch (a quarter of a global batch), and for comparison with one
  global batch and half of one;
- default schedule: the DWM's defaults (learning all along, an outer step every 4th iteration),
  whose cost is the mean over iterations (the median is a step without an outer step).
Targets: LLM phase within 10% of the baseline; DWM phase at most 2.2x.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import CONFIGS, DEMO, MEAN_MS, run, summarize  # noqa: E402

MS = "elapsed time per iteration (ms)"


DEFAULT_SCHEDULE = "DWM, default schedule (outer step every 4th iteration)"


def dwm_flags(iters: int, update: bool | None) -> list[str]:
    """A DWM a fraction of the LLM's size (as in real runs: a few million parameters beside 370M);
    frozen, updated every step, or (`update` None) on its default schedule."""
    schedule = [] if update is None else ["--dwm-update-iters", str(iters if update else 0), "--dwm-update-interval", "1"]
    return ["--dwm-valid-data-path", os.path.join(DEMO, "indexed", "lambada_style_text_document"),
            "--dwm-stages", "1", *schedule, "--dwm-num-layers", "1", "--dwm-hidden-size", "32", "--dwm-seq-length", "32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu-tiny")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of the three runs; the best of each is kept")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    config = CONFIGS[args.config]
    unit = config["micro_batch"] * config["nproc"]  # micro batch x DP (TP = PP = 1 in these configurations)
    half = max(unit, config["global_batch"] // 2 // unit * unit)
    variants = {"baseline (--dwm-disable)": None, "LLM phase (DWM frozen)": dwm_flags(args.iters, False),
                "DWM phase (update every step)": dwm_flags(args.iters, True),
                DEFAULT_SCHEDULE: dwm_flags(args.iters, None)}
    for size in (config["global_batch"], half):
        variants[f"DWM phase, --dwm-valid-batch-size {size}"] = [*dwm_flags(args.iters, True),
                                                                 "--dwm-valid-batch-size", str(size)]
    best: dict[str, float] = {}
    best_mean: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, extra in variants.items():
            with tempfile.TemporaryDirectory() as workdir:
                summary = summarize(run(config, args.iters, workdir, extra), args.warmup)
            best[name] = min(best.get(name, math.inf), summary[MS])
            best_mean[name] = min(best_mean.get(name, math.inf), summary[MEAN_MS])
    baseline, baseline_mean = best["baseline (--dwm-disable)"], best_mean["baseline (--dwm-disable)"]
    if args.markdown:
        print(f"| {config['description']} | median ms/iteration | vs baseline | mean ms/iteration | vs baseline |")
        print("| --- | ---: | ---: | ---: | ---: |")
    for name, ms in best.items():
        mean = best_mean[name]
        print(f"| {name} | {ms:.1f} | {ms / baseline:.3f}x | {mean:.1f} | {mean / baseline_mean:.3f}x |"
              if args.markdown else f"{name}: median {ms:.1f} ms ({ms / baseline:.3f}x), "
                                     f"mean {mean:.1f} ms ({mean / baseline_mean:.3f}x)")


if __name__ == "__main__":
    main()
