#!/usr/bin/env python3
"""The efficacy lab: does weighting help? Small Llama models trained on CPU in data scenarios
(harmful junk, a target domain, duplicated documents, a frozen DWM transferred to a larger model)
under each weighting method, compared with uniform weighting on paired seeds.

    python bench/efficacy.py                    # the full lab (about an hour on 2 cores): docs/results.md
    python bench/efficacy.py --quick            # a few minutes: target scenario, uniform and dwm, 1 seed
    python bench/efficacy.py --scenarios junk --methods uniform dwm --seeds 3
    python bench/efficacy.py --report-only      # rebuild the report from the finished runs

Runs are resumable: rerunning the same command trains only the runs without a result. The report
is OUT/results.md (tables), OUT/results.json (every number) and OUT/plots/. Run `make demo-data` first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from efficacy_lab.methods import DEFAULT_METHODS, DOMAIN_ORACLE, get_method  # noqa: E402
from efficacy_lab.runner import (FULL_TRAIN_ITERS, LAB_SCENARIOS, QUICK_TRAIN_ITERS, Lab, LabConfig,  # noqa: E402
                                 check_settings, plan_runs, record_invocation, write_plan)

QUICK_DEFAULTS = {"scenarios": ["target"], "methods": ["uniform", "dwm"], "seeds": 1}
FULL_DEFAULTS = {"scenarios": list(LAB_SCENARIOS), "methods": DEFAULT_METHODS, "seeds": 5}


def method_name(name: str) -> str:
    if name != DOMAIN_ORACLE:
        try:
            get_method(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output directory (default: runs/efficacy, with --quick "
                                                 "runs/efficacy-quick)")
    parser.add_argument("--scenarios", nargs="+", choices=list(LAB_SCENARIOS),
                        help=f"default: {' '.join(FULL_DEFAULTS['scenarios'])} (--quick: target)")
    parser.add_argument("--methods", nargs="+", type=method_name,
                        help=f"default: {' '.join(DEFAULT_METHODS)} (--quick: uniform dwm); each runs in "
                             "the scenarios it applies to")
    parser.add_argument("--seeds", type=int, help="seeds per method (default: 5, --quick: 1)")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at a time, one CPU thread each (default: 2)")
    parser.add_argument("--train-iters", type=int,
                        help=f"iterations per run (default: {FULL_TRAIN_ITERS}, --quick: {QUICK_TRAIN_ITERS})")
    parser.add_argument("--quick", action="store_true", help="small data and short runs, for development")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    args = parser.parse_args(argv)
    for key, value in (QUICK_DEFAULTS if args.quick else FULL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = (args.out or REPO / "runs" / ("efficacy-quick" if args.quick else "efficacy")).resolve()
    args.train_iters = args.train_iters or (QUICK_TRAIN_ITERS if args.quick else FULL_TRAIN_ITERS)
    if args.seeds < 1 or args.jobs < 1 or args.train_iters < 1:
        parser.error("--seeds, --jobs and --train-iters must be at least 1")
    return args


def train(args: argparse.Namespace, config: LabConfig) -> int:
    """Build the scenarios' data, plan the runs and train them; the number of failed runs."""
    from megatron_dwm.library_warnings import quiet_library_messages

    quiet_library_messages()
    from efficacy_lab.scenarios import build_scenario

    data_names = list(dict.fromkeys(LAB_SCENARIOS[name].data for name in args.scenarios))
    print(f"building the data of {', '.join(data_names)} in {args.out / 'data'} (once)", flush=True)
    data = {name: build_scenario(name, str(args.out / "data"), str(REPO / "demo_data"), quick=args.quick)
            for name in data_names}
    runs = plan_runs(data, args.scenarios, args.methods, args.seeds, config)
    write_plan(args.out, runs)
    print(f"{len(runs)} runs of {config.train_iters} iterations, {args.jobs} at a time; output in {args.out}",
          flush=True)
    lab = Lab(args.out, config, data, args.jobs)
    lab.train(runs)
    return len(lab.failures)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = LabConfig(args.train_iters)
    command = ["python", "bench/efficacy.py", *(sys.argv[1:] if argv is None else argv)]
    start, failed = time.monotonic(), 0
    if not args.report_only:
        check_settings(args.out, config)
        try:
            failed = train(args, config)
        except KeyboardInterrupt:
            print("\ninterrupted: the finished runs are kept; run the same command again to go on", file=sys.stderr)
            return 130
        finally:
            record_invocation(args.out, config, command, time.monotonic() - start)
    from efficacy_lab.report import write_report

    lab_path, plan_path = args.out / "lab.json", args.out / "plan.json"
    if not lab_path.is_file():
        print(f"error: {args.out} holds no lab (no lab.json); train first", file=sys.stderr)
        return 1
    planned = json.loads(plan_path.read_text()) if plan_path.is_file() else []
    results = write_report(args.out, json.loads(lab_path.read_text()), planned)
    print(f"\n{results.read_text()}\nreport: {results} (numbers: {args.out / 'results.json'}, "
          f"plots: {args.out / 'plots'})")
    if failed:
        print(f"{failed} runs failed: see {args.out / 'failures.txt'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
