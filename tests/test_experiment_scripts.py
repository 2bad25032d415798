"""The demo experiment scripts: every run's flags are checked before any training, a failed run is
reported by its own error lines, and `make demo` uses the experiment's DWM flags."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from demo_runs import error_lines, format_progress, last_iteration  # noqa: E402

needs_demo_data = pytest.mark.skipif(not (REPO / "demo_data" / "indexed" / "data_path.txt").exists(),
                                     reason="run `make demo-data` first")


def makefile_variable(name: str) -> list[str]:
    """The flags of a `NAME ?= ...` variable of the Makefile (continuation lines joined)."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    return re.search(rf"^{name} \?=(.*)$", text, re.MULTILINE).group(1).split()


def test_make_demo_uses_the_measured_dwm_flags_of_the_experiment():
    from dwm_demo_experiment import DWM_FLAGS

    assert makefile_variable("DEMO_DWM_ARGS") == DWM_FLAGS
    assert "--dwm-disable" not in makefile_variable("DEMO_ARGS")


@needs_demo_data
@pytest.mark.parametrize("script, run", [(["dwm_demo_experiment.py"], "'dwm'"), (["dwm_demo_seeds.py", "--seeds", "7"], "'7/dwm'")])
def test_a_bad_dwm_flag_is_refused_before_any_run_starts(tmp_path, script, run):
    out = tmp_path / "experiment"
    result = subprocess.run([sys.executable, str(REPO / "examples" / script[0]), *script[1:], "--iters", "80",
                             "--nproc", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert run in result.stderr and "--dwm-update-iters 50 exceeds the stage length 20" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.jsonl")) and not list(tmp_path.rglob("train.log"))


def test_error_lines_are_the_ranks_errors_once_without_torchrun_noise(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("iteration 10/40 | lm loss 7.1\n"
                   "error: rank 0: the loss is not finite in 3 consecutive iterations\n"
                   "error: rank 1: the loss is not finite in 3 consecutive iterations\n"
                   "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
                   "error: rank 0: the loss is not finite in 3 consecutive iterations\n")
    assert error_lines(log) == ["error: rank 0: the loss is not finite in 3 consecutive iterations",
                                "error: rank 1: the loss is not finite in 3 consecutive iterations"]
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert error_lines(log, limit=3) == ["line 27", "line 28", "line 29"]  # no error line: the log's end


def test_progress_reads_the_metrics_being_written(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert last_iteration(metrics) is None
    metrics.write_text('{"iteration": 10, "consumed samples": 160}\n{"iteration": 10, "dwm-valid loss": 7.0}\n'
                       '{"iteration": 20, "consumed samples": 320}\n{"iteration": 30, "cons')
    assert last_iteration(metrics) == 20
    assert format_progress("dwm", 100, 400, 90.0, 0.5) == "dwm: iteration 100/400 | 1 min 30 s elapsed | ETA 2 min 30 s"
    assert format_progress("dwm", 10, 400, 20.0, None) == "dwm: iteration 10/400 | 20 s elapsed"
