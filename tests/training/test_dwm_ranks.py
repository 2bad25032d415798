"""The DWM on its own ranks (--dwm-ranks A) against the colocated DWM: the same weights,
hypergradients and losses; a DWM rank that dies or hangs ends the job with a message naming it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from megatron_dwm.training.metrics import read_metrics
from tests.training.corpus import training_flags
from tests.training.launch import Job, run_job

FAULTS = Path(__file__).parent / "scripts" / "train_with_faults.py"

ITERS = 6  # 2 stages of 3 iterations, each opening with a DWM phase of 2: crosses a stage boundary
LAYOUTS = {  # name: (training ranks, flags, DWM ranks of the separate run)
    "tp1-dp3": (3, ["--global-batch-size", "12"], 1),
    "tp2-dp1": (2, ["--tensor-model-parallel-size", "2"], 1),
    "tp1-dp2-2dwm": (2, [], 2),  # the DWM data-parallel over its own two ranks
}


def _run(corpus, run_dir, layout: str, dwm_ranks: int):
    training_ranks, flags, _ = LAYOUTS[layout]
    metrics = run_dir / "metrics.jsonl"
    job = run_job(training_flags(corpus, *flags, "--train-iters", str(ITERS), "--metrics-file", str(metrics),
                                 "--dwm-ranks", str(dwm_ranks), dwm=True), training_ranks + dwm_ranks, run_dir / "logs")
    records = {r["iteration"]: r for r in read_metrics(metrics) if "lm loss" in r}
    samples = {r["iteration"]: r for r in map(json.loads, (run_dir / "dwm_samples.jsonl").read_text().splitlines())}
    return job, records, samples


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_dwm_rank_matches_colocated_dwm(layout, corpus, tmp_path):
    _, colocated, colocated_samples = _run(corpus, tmp_path / "colocated", layout, 0)
    training_ranks, _, dwm_ranks = LAYOUTS[layout]
    job, separate, separate_samples = _run(corpus, tmp_path / "separate", layout, dwm_ranks)
    for index, dwm_rank in enumerate(range(training_ranks, training_ranks + dwm_ranks)):
        replicas = (training_ranks if "tp2" not in layout else 1) // dwm_ranks
        assert (f"DWM rank {dwm_rank}: serving data-parallel replicas {index * replicas}..{(index + 1) * replicas - 1}"
                in job.output())

    assert sorted(separate) == sorted(colocated) == list(range(1, ITERS + 1))
    assert sorted(separate_samples) == sorted(colocated_samples) == list(range(1, ITERS + 1))
    for iteration in range(1, ITERS + 1):
        ours, theirs = separate_samples[iteration], colocated_samples[iteration]
        assert ours["document_id"] == theirs["document_id"] and ours["domain"] == theirs["domain"]
        assert ours["weight"] == pytest.approx(theirs["weight"], rel=1e-6, abs=1e-7), iteration
        assert ("hypergradient" in ours) == ("hypergradient" in theirs)
        if "hypergradient" in ours:
            assert ours["hypergradient"] == pytest.approx(theirs["hypergradient"], rel=1e-5, abs=1e-9), iteration
        for key in ("lm loss", "grad norm", "dwm/weight std", "dwm/ess"):
            assert separate[iteration][key] == pytest.approx(colocated[iteration][key], rel=1e-6), (iteration, key)
    # the DWM learned in both stages, so the comparison covers updated weights, not only uniform ones
    assert {i for i, r in separate_samples.items() if "hypergradient" in r} >= {2, 5}
    assert separate[ITERS]["dwm/weight std"] > 0


@pytest.mark.parametrize("fault", ["killed", "stopped"])
def test_lost_dwm_rank_ends_the_job_naming_it(fault, corpus, tmp_path):
    """SIGKILL (it dies: noticed at once) or SIGSTOP (it hangs: --dwm-exchange-timeout) the DWM rank mid-run."""
    metrics = tmp_path / "metrics.jsonl"
    job = Job(training_flags(corpus, "--train-iters", "1000", "--metrics-file", str(metrics), "--dwm-ranks", "1",
                             "--dwm-exchange-timeout", "5", dwm=True), 3, tmp_path / "logs")
    job.wait_until(lambda: metrics.exists() and any(r.get("iteration", 0) >= 2 for r in read_metrics(metrics)))
    os.kill(job.processes[2].pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    start = time.time()
    codes = [process.wait(timeout=60) for process in job.processes[:2]]  # the training ranks
    elapsed = time.time() - start
    job.signal(signal.SIGKILL)
    assert codes == [1, 1], job.output()
    assert elapsed < 30, elapsed
    output = job.output()
    assert "DWM rank 2" in output and "failed" in output, output
    if fault == "stopped":
        assert "time limit 5 s" in output, output


def test_failed_training_rank_ends_the_dwm_rank(corpus, tmp_path):
    """A training rank that fails while the DWM rank waits in a collective (a checkpoint being
    written): both exit with 1 by themselves, the DWM rank as soon as the training rank is gone."""
    job = Job(training_flags(corpus, "--train-iters", "6", "--save", str(tmp_path / "ckpt"), "--save-interval", "2",
                             "--dwm-ranks", "1", "--num-workers", "1", dwm=True), 2, tmp_path / "logs",
              script=FAULTS, env={"FAULT_RAISE_IN_SAVE": "1"})
    assert job.wait(timeout=90) == [1, 1], job.output()
    output = job.output()
    assert "injected fault: rank 0 fails while writing a checkpoint" in output
    assert "error: rank 1: another rank of the job ended" in output, output
