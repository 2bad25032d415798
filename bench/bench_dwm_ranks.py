#!/usr/bin/env python3
"""The DWM on its own rank (``--dwm-ranks 1``) against --dwm-disable and the colocated DWM, in one
invocation on the same training ranks, data and seed. Run ``make demo-data`` first.

    python bench/bench_dwm_ranks.py --iters 40 --rounds 5 --markdown

- LLM phase (the DWM frozen, weighing every batch): with a DWM rank the training ranks only wait
  for a message, because the DWM computed the weights while the previous step ran. Target
  (issue 6): within 2% of --dwm-disable.
- DWM phase (the DWM updated every step): the training ranks' finite-difference pass is the same;
  the DWM's forward and backward move to the DWM rank.

Runs alternate (baseline, colocated, DWM rank, per phase) for ``--rounds`` rounds; the table gives
the median over rounds of each run's median ms/iteration, the median of the per-round ratios, and
``dwm/weights time (ms)``: what obtaining the weights cost the logging training rank per iteration.

The CPU configuration has one training rank, so on a 2-core machine the DWM rank has a core of its
own, as it has its own GPU in a real job. The DWM is the default size (2 layers, hidden 128),
reading whole samples.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_train import CONFIGS, DEMO, run  # noqa: E402

MS = "elapsed time per iteration (ms)"
WAIT = "dwm/weights time (ms)"
CPU_ONE_RANK = CONFIGS["cpu-tiny-1rank"]


def dwm_flags(iters: int, update: bool, dwm_ranks: int) -> list[str]:
    return ["--dwm-valid-data-path", os.path.join(DEMO, "indexed", "lambada_style_text_document"),
            "--dwm-stages", "1", "--dwm-update-iters", str(iters if update else 0), "--dwm-update-interval", "1",
            "--dwm-seq-length", "128",
            "--dwm-ranks", str(dwm_ranks)]


def measure(iters: int, warmup: int, extra: list[str] | None, extra_ranks: int) -> tuple[float, float | None]:
    """(median ms/iteration, median weights time) of one run, past the warm-up iterations."""
    with tempfile.TemporaryDirectory() as workdir:
        records = [r for r in run(CPU_ONE_RANK, iters, workdir, extra, extra_ranks) if r["iteration"] > warmup]
    waits = [r[WAIT] for r in records if WAIT in r]
    return statistics.median(r[MS] for r in records), statistics.median(waits) if waits else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    phases = {  # phase: {variant: (flags, extra ranks)}; the first variant of a phase is its reference
        "LLM phase": {"baseline (--dwm-disable)": (None, 0),
                      "colocated (--dwm-ranks 0)": (dwm_flags(args.iters, False, 0), 0),
                      "--dwm-ranks 1": (dwm_flags(args.iters, False, 1), 1)},
        "DWM phase": {"colocated (--dwm-ranks 0)": (dwm_flags(args.iters, True, 0), 0),
                      "--dwm-ranks 1": (dwm_flags(args.iters, True, 1), 1)},
    }
    results: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
    for _ in range(args.rounds):
        for phase, variants in phases.items():
            for name, (extra, extra_ranks) in variants.items():
                results.setdefault((phase, name), []).append(measure(args.iters, args.warmup, extra, extra_ranks))
    if args.markdown:
        print(f"| {CPU_ONE_RANK['description']}, {args.rounds} rounds | ms/iteration | vs reference "
              f"| weights time (ms) |")
        print("| --- | ---: | ---: | ---: |")
    for phase, variants in phases.items():
        reference = results[(phase, next(iter(variants)))]
        for name in variants:
            runs = results[(phase, name)]
            ms = statistics.median(r[0] for r in runs)
            ratio = statistics.median(r[0] / ref[0] for r, ref in zip(runs, reference))
            waits = [r[1] for r in runs if r[1] is not None]
            wait = f"{statistics.median(waits):.1f}" if waits else "-"
            print(f"| {phase}: {name} | {ms:.1f} | {ratio:.3f}x | {wait} |" if args.markdown
                  else f"{phase}, {name}: {ms:.1f} ms, {ratio:.3f}x of the phase's reference, weights {wait} ms")


if __name__ == "__main__":
    main()
