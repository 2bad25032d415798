#!/usr/bin/env python3
"""The end of `make demo`: plots of the DWM's weights and a summary of the run (model, domains,
iterations, tokens, time, the domains' final mean weights, the target loss, where the files are),
printed and written to RUN_DIR/summary.md. With --baseline (`make demo-compare`) also the
LAMBADA-style loss of both runs against tokens, RUN_DIR/comparison.png.

    .venv/bin/python tools/demo_summary.py runs/demo [--baseline runs/demo-uniform] -- TRAINING FLAGS

The training flags (after --) are the run's own, for the model and the batch shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from megatron_dwm.library_warnings import quiet_library_messages  # noqa: E402

quiet_library_messages()  # before megatron-core is imported

from megatron_dwm.analysis.comparison import compare_runs, format_comparison  # noqa: E402
from megatron_dwm.analysis.dwm_run import analyze_run  # noqa: E402
from megatron_dwm.analysis.output import write_text_atomically  # noqa: E402
from megatron_dwm.analysis.run_files import load_metrics, run_files  # noqa: E402
from megatron_dwm.analysis.run_summary import format_run_summary, summarize_run  # noqa: E402
from megatron_dwm.arguments import build_parser, model_arch  # noqa: E402


def run_paths(run_dir: Path) -> dict[str, Path]:
    """Where `make demo` puts a run's files: its logs where analyze_dwm.py finds them, and beside them
    its checkpoints, comparison plot and summary."""
    logs = run_files(run_dir)
    return {"checkpoints": run_dir / "checkpoints", "metrics": logs.metrics, "samples": logs.samples,
            "tensorboard": logs.metrics.parent, "analysis": logs.out, "comparison": run_dir / "comparison.png",
            "summary": run_dir / "summary.md"}


def summarize(run_dir: Path, baseline_dir: Path | None, training_flags: list[str], window: int) -> str:
    """Write the plots and summary.md of `run_dir` (and the comparison with `baseline_dir`); return the summary."""
    flags = build_parser().parse_args(training_flags)
    arch = model_arch(flags)
    paths = run_paths(run_dir)
    records = load_metrics(paths["metrics"])
    files = {"checkpoints": f"{paths['checkpoints']} (the same command again resumes from them)",
             "metrics": str(paths["metrics"]),
             "TensorBoard": f"{Path(sys.executable).parent / 'tensorboard'} --logdir {paths['tensorboard']}"}
    files["plots"] = ", ".join(map(str, analyze_run(paths["metrics"], paths["samples"], paths["analysis"]).outputs))
    comparison_text = ""
    if baseline_dir is not None:
        comparison = compare_runs(records, load_metrics(run_paths(baseline_dir)["metrics"]),
                                  flags.seq_length * flags.global_batch_size, window, paths["comparison"])
        files["comparison"] = str(paths["comparison"])
        comparison_text = (f"\n\nagainst the uniform baseline in {baseline_dir} (--dwm-disable), losses as means of "
                           f"the last {window} evaluations:\n{format_comparison(comparison)}")
    files["summary"] = str(paths["summary"])
    model = f"{flags.model_preset} Llama ({arch.num_layers} layers, hidden size {arch.hidden_size})"
    summary = summarize_run(records, model=model, seq_length=flags.seq_length, train_iters=flags.train_iters,
                            window=window, paths=files)
    text = format_run_summary(summary) + comparison_text + "\n"
    write_text_atomically(paths["summary"], text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the run's directory (checkpoints/, tensorboard/)")
    parser.add_argument("--baseline", type=Path, help="a --dwm-disable run of the same flags, to compare with")
    parser.add_argument("--window", type=int, default=5, help="average losses over this many evaluations")
    argv = sys.argv[1:] if argv is None else argv
    ours, training_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    try:
        text = summarize(args.run_dir, args.baseline, training_flags, args.window)
    except (ValueError, FileNotFoundError) as error:  # AnalysisError and ConfigError are ValueErrors
        parser.exit(1, f"demo_summary.py: error: {error}\n")
    print(f"\ndemo finished: {args.run_dir}\n{text}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
