"""Run the training runs of the demo experiments: every run's flags checked first (by the project's
own parse_args), then each run under torchrun with its progress shown from its metrics.jsonl, and a
failed run reported by the error lines of its train.log instead of a traceback.

Used by dwm_demo_experiment.py and dwm_demo_seeds.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARGUMENT_ERROR_EXIT_CODE = 2
# Lines of a train.log that carry the error (the ranks' own reports, Python's last exception line),
# rather than torchrun's summary around them.
ERROR_LINE = re.compile(r"(^|: )error: |^\w+(\.\w+)*(Error|Exception)(: |$)|^RuntimeError|Root Cause", re.IGNORECASE)
TORCHRUN_NOISE = ("ChildFailedError", "torch.distributed.elastic", "error_file:", "To enable traceback")


def check_runs(runs: dict[str, list[str]], nproc: int) -> dict[str, argparse.Namespace]:
    """Each run's flags parsed and validated as pretrain_dwm.py does on `nproc` ranks, before any run
    starts; on a bad flag, print its message naming the run and exit 2."""
    from megatron_dwm.arguments import ConfigError, parse_args
    from megatron_dwm.library_warnings import quiet_library_messages

    quiet_library_messages()

    parsed = {}
    for name, flags in runs.items():
        try:
            parsed[name] = parse_args(flags, world_size=nproc)
        except ConfigError as error:
            print(f"error: run {name!r} would fail at start-up, so no run was started: {error}", file=sys.stderr)
            sys.exit(ARGUMENT_ERROR_EXIT_CODE)
    return parsed


def last_iteration(metrics: Path) -> int | None:
    """The highest iteration of a training record in a metrics.jsonl being written (None if none yet)."""
    try:
        lines = metrics.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    iterations = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if isinstance(record, dict) and "consumed samples" in record:
            iterations.append(record["iteration"])
    return max(iterations, default=None)


def format_progress(name: str, iteration: int, total: int, elapsed: float, seconds_per_iteration: float | None) -> str:
    """'dwm: iteration 120/400 | 1 min 30 s elapsed | ETA 3 min 30 s'."""
    from megatron_dwm.analysis.run_summary import format_duration

    text = f"{name}: iteration {iteration}/{total} | {format_duration(elapsed)} elapsed"
    if seconds_per_iteration is not None:
        text += f" | ETA {format_duration(seconds_per_iteration * (total - iteration))}"
    return text


def error_lines(log: Path, limit: int = 12) -> list[str]:
    """The last lines of a failed run's log that hold its error (each once); its last lines if none do."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    found = [line.strip() for line in lines if ERROR_LINE.search(line.strip())
             and not any(noise in line for noise in TORCHRUN_NOISE)]
    return list(dict.fromkeys(found))[-limit:] or lines[-limit:]


def train(name: str, run_dir: Path, nproc: int, flags: list[str], total: int, out: TextIO = sys.stdout,
          poll: float = 1.0) -> None:
    """Train one run (`flags` checked by check_runs, writing its metrics to run_dir) under torchrun,
    its output in run_dir/train.log, its progress on `out`; on failure print the run's error lines
    and exit 1."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               str(REPO / "pretrain_dwm.py"), *flags]
    print(f"{name}: training in {run_dir} (log: {log_path})", file=out, flush=True)
    start, first, shown = time.monotonic(), None, None  # first: (iteration, time) of the first logged iteration
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while process.poll() is None:
                time.sleep(poll)
                iteration, now = last_iteration(run_dir / "metrics.jsonl"), time.monotonic()
                if iteration is None or iteration == shown:
                    continue
                first = first or (iteration, now)
                rate = (now - first[1]) / (iteration - first[0]) if iteration > first[0] else None
                print(format_progress(name, iteration, total, now - start, rate), file=out, flush=True)
                shown = iteration
        except KeyboardInterrupt:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    if process.returncode != 0:
        print(f"error: run {name!r} failed (exit status {process.returncode}). The error in its log:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in error_lines(log_path)), file=sys.stderr)
        print(f"whole log: {log_path}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: done in {time.monotonic() - start:.0f} s", file=out, flush=True)
