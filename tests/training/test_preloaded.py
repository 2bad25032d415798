"""The preloaded rank server must be invisible: a job forked from it trains exactly as a job of
fresh interpreters does, with the same console lines and exit codes."""

from __future__ import annotations

import re

from tests.training import preloaded
from tests.training.corpus import training_flags
from tests.training.launch import Job, losses_by_iteration, run_job

TIMING = re.compile(r"(elapsed time per iteration \(ms\)|tokens per second|samples per second|"
                    r"throughput per GPU \(TFLOP/s/GPU\)):\s*[0-9.]+")


def _iteration_lines(job: Job) -> list[str]:
    lines = [line for log in job.logs for line in log.read_text().splitlines() if " iteration " in line]
    return [TIMING.sub(r"\1: -", line) for line in lines]


def test_forked_ranks_train_as_fresh_interpreters_do(corpus, tmp_path, monkeypatch):
    flags = training_flags(corpus, "--train-iters", "4", dwm=True)
    runs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("MEGATRON_DWM_TEST_PRELOAD", mode)
        assert preloaded.enabled() == (mode == "1")
        metrics = tmp_path / f"metrics-{mode}.jsonl"
        job = run_job([*flags, "--metrics-file", str(metrics)], 2, tmp_path / f"logs-{mode}")
        runs[mode] = (job, losses_by_iteration(metrics), losses_by_iteration(metrics, "dwm/weight std"))
    (forked, forked_losses, forked_std), (fresh, fresh_losses, fresh_std) = runs["1"], runs["0"]
    assert sorted(forked_losses) == [1, 2, 3, 4]
    assert forked_losses == fresh_losses and forked_std == fresh_std
    assert _iteration_lines(forked) == _iteration_lines(fresh) != []


def test_forked_rank_reports_failures_like_a_process(corpus, tmp_path):
    """A configuration error exits 2 (argparse) with its message in the rank's log."""
    job = Job(training_flags(corpus, "--train-iters", "4", "--tensor-model-parallel-size", "3"), 2, tmp_path)
    assert job.wait(timeout=120) == [2, 2]
    assert "--tensor-model-parallel-size" in job.output()
