"""The DWM on its own ranks (--dwm-ranks A) against the colocated DWM: the same weights,
hypergradients and losses; a DWM rank that dies or hangs ends the job with a message naming it."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from megatron_dwm.training.metrics import read_metrics
from tests.training.corpus import training_flags
from tests.training.launch import Job, run_job
from tests.training.run_comparison import AFTER_UPDATE, RELATIVE, hypergradients_agree, run_logs

FAULTS = Path(__file__).parent / "scripts" / "train_with_faults.py"

ITERS = 6  # 2 stages of 3 iterations, each opening with a DWM phase of 2: crosses a stage boundary
LAYOUTS = {  # name: (training ranks, flags, DWM ranks of the separate run)
    "tp1-dp3": (3, ["--global-batch-size", "12"], 1),
    "tp2-dp1": (2, ["--tensor-model-parallel-size", "2"], 1),
    "tp1-dp2-2dwm": (2, [], 2),  # the DWM data-parallel over its own two ranks
    "tp1-dp1": (1, [], 1),  # the cheapest layout, for 2 threads per rank on 2 cores
}
CASES = [(layout, 1) for layout in sorted(LAYOUTS) if layout != "tp1-dp1"] + [("tp1-dp1", 2)]  # (layout, threads)

# How far the two placements may differ, and why (docs/dwm.md, "The DWM on its own ranks"): they
# sum the DWM encoder's per-replica gradients in different orders (an all-reduce over the holders,
# or autograd over one DWM rank's chunks), so the DWM's parameters, hence the weights and the LLM,
# may differ in their last bits on some CPUs, and more once the DWM has learned from hypergradients
# known only to their resolution (tests/training/run_comparison.py gives the bounds).


def _run(corpus, run_dir, layout: str, dwm_ranks: int, threads: int):
    training_ranks, flags, _ = LAYOUTS[layout]
    metrics = run_dir / "metrics.jsonl"
    job = run_job(training_flags(corpus, *flags, "--train-iters", str(ITERS), "--metrics-file", str(metrics),
                                 "--dwm-ranks", str(dwm_ranks), dwm=True), training_ranks + dwm_ranks, run_dir / "logs",
                  env={"OMP_NUM_THREADS": str(threads)})
    return (job, *run_logs(run_dir))


@pytest.mark.parametrize("layout,threads", CASES, ids=[f"{layout}-{threads}thread" for layout, threads in CASES])
def test_dwm_rank_matches_colocated_dwm(layout, threads, corpus, tmp_path):
    _, colocated, colocated_samples = _run(corpus, tmp_path / "colocated", layout, 0, threads)
    training_ranks, _, dwm_ranks = LAYOUTS[layout]
    job, separate, separate_samples = _run(corpus, tmp_path / "separate", layout, dwm_ranks, threads)
    for index, dwm_rank in enumerate(range(training_ranks, training_ranks + dwm_ranks)):
        replicas = (training_ranks if "tp2" not in layout else 1) // dwm_ranks
        assert (f"DWM rank {dwm_rank}: serving data-parallel replicas {index * replicas}..{(index + 1) * replicas - 1}"
                in job.output())

    assert sorted(separate) == sorted(colocated) == list(range(1, ITERS + 1))
    assert sorted(separate_samples) == sorted(colocated_samples) == list(range(1, ITERS + 1))
    learned = False  # whether the DWM has learned from a non-zero hypergradient before this iteration
    for iteration in range(1, ITERS + 1):
        ours, theirs = separate_samples[iteration], colocated_samples[iteration]
        tolerance = AFTER_UPDATE if learned else RELATIVE
        assert ours["document_id"] == theirs["document_id"] and ours["domain"] == theirs["domain"]
        assert ours["weight"] == pytest.approx(theirs["weight"], rel=tolerance, abs=1e-7), iteration
        assert ("hypergradient" in ours) == ("hypergradient" in theirs)
        if iteration == 1:  # eta is 0 in the warm-up's first iteration: g is exactly 0
            assert ours["hypergradient"] == theirs["hypergradient"] == [0.0] * len(ours["weight"])
        elif "hypergradient" in ours:
            assert hypergradients_agree(ours, theirs), (iteration, ours, theirs)
        for key in ("lm loss", "grad norm", "dwm/weight std", "dwm/ess"):
            assert separate[iteration][key] == pytest.approx(colocated[iteration][key], rel=tolerance), (iteration, key)
        learned = learned or any(theirs.get("hypergradient", []))
    # the DWM learned in both stages (the first 2 iterations of each 3-iteration stage), so the
    # comparison covers updated weights, not only uniform ones
    assert {i for i, r in separate_samples.items() if "hypergradient" in r} == {1, 2, 4, 5}
    assert separate[ITERS]["dwm/weight std"] > 0


def _no_weights_errors(log: str, rank: int, dwm_rank: int, timeout: int) -> list[tuple[str, str]]:
    """(iteration, the transport's reason) of each documented error line of a training rank that
    got no weights from `dwm_rank` (docs/dwm.md, "Failures")."""
    pattern = (rf"^error: rank {rank}: (?:no weights for|no DWM update at) iteration (\d+): "
               rf"(?:waiting for|sending (?:REQUEST|UPDATE) to) "
               rf"DWM rank {dwm_rank} failed \(time limit {timeout} s\): (.+)\. The training ranks stop rather than "
               r"train on stale weights; see that rank's log \(--dwm-exchange-timeout sets the time limit\)$")
    return re.findall(pattern, log, flags=re.MULTILINE)


@pytest.mark.parametrize("fault", ["killed", "stopped"])
def test_lost_dwm_rank_ends_the_job_naming_it(fault, corpus, tmp_path):
    """SIGKILL (it dies: noticed at once, its connections close) or SIGSTOP (it hangs: noticed after
    --dwm-exchange-timeout) the DWM rank mid-run: each training rank exits 1, with the documented error
    naming the DWM rank and the iteration that got no weights; or, where the DWM rank stopped after
    sending this rank its weights but before the other's, with the error of a rank whose peer ended
    during a collective (it went on to the step's reduction while the other waited out the time limit)."""
    metrics = tmp_path / "metrics.jsonl"
    job = Job(training_flags(corpus, "--train-iters", "1000", "--metrics-file", str(metrics), "--dwm-ranks", "1",
                             "--dwm-exchange-timeout", "5", dwm=True), 3, tmp_path / "logs")
    job.wait_until(lambda: metrics.exists() and any(r.get("iteration", 0) >= 2 for r in read_metrics(metrics)))
    os.kill(job.processes[2].pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    try:
        codes = [process.wait(timeout=120) for process in job.processes[:2]]  # the training ranks; a hang guard
    finally:
        job.signal(signal.SIGKILL)
    assert codes == [1, 1], job.output()
    last_logged = max(r["iteration"] for r in read_metrics(metrics) if "lm loss" in r)
    named = 0
    for rank in (0, 1):
        log = job.logs[rank].read_text()
        errors = _no_weights_errors(log, rank, dwm_rank=2, timeout=5)
        if not errors:
            assert f"error: rank {rank}: another rank of the job ended during a collective operation" in log, \
                job.output()
            continue
        assert len(errors) == 1, job.output()
        iteration, reason = errors[0]
        assert int(iteration) == last_logged + 1, job.output()
        # a dead rank is noticed by its closed connections, a hung one by the time limit
        assert ("Timed out" in reason) == (fault == "stopped"), reason
        named += 1
    assert named >= 1, job.output()  # the DWM rank is named


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
