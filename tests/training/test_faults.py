"""Faults: NaN/Inf steps are skipped and halt after N in a row; a checkpoint killed mid-write is
never loaded; --exit-duration-in-mins stops the run with a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

from megatron_dwm.training.checkpointing import latest_checkpoint_dir, read_tracker
from megatron_dwm.training.faults import lost_peer_message
from megatron_dwm.training.metrics import read_metrics
from tests.training.corpus import training_flags
from tests.training.launch import Job, losses_by_iteration, run_job

FAULTS = Path(__file__).parent / "scripts" / "train_with_faults.py"


def test_nonfinite_iteration_is_skipped_and_training_goes_on(corpus, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    job = run_job(training_flags(corpus, "--train-iters", "5", "--metrics-file", str(metrics)), 2, tmp_path / "logs",
                  script=FAULTS, env={"FAULT_NAN_AT": "3"})
    records = {r["iteration"]: r for r in read_metrics(metrics) if "lm loss" in r}
    assert records[3]["number of skipped iterations"] == 1 and math.isnan(records[3]["grad norm"])
    assert all(records[i]["number of skipped iterations"] == 0 for i in (1, 2, 4, 5))
    assert all(math.isfinite(records[i]["lm loss"]) for i in (1, 2, 4, 5))
    # The skipped update did not step the learning-rate schedule either.
    assert records[3]["learning rate"] == records[2]["learning rate"] != records[4]["learning rate"]
    assert "iteration 3: the loss or gradient is NaN/Inf; update skipped (1 in a row" in job.output()


def test_consecutive_nonfinite_iterations_halt_with_a_message(corpus, tmp_path):
    job = Job(training_flags(corpus, "--train-iters", "8", "--max-consecutive-nonfinite-iters", "2"), 2,
              tmp_path / "logs", script=FAULTS, env={"FAULT_NAN_AT": "3,4,5"})
    assert job.wait() == [1, 1]
    assert ("2 consecutive iterations (up to 4) had a NaN/Inf loss or gradient; halting "
            "(--max-consecutive-nonfinite-iters 2)") in job.output()


def test_checkpoint_killed_mid_write_is_never_loaded(corpus, tmp_path):
    checkpoints = tmp_path / "ckpt"
    flags = training_flags(corpus, "--train-iters", "4", "--save", str(checkpoints), "--save-interval", "2")
    killed = Job(flags, 1, tmp_path / "killed", script=FAULTS, env={"FAULT_KILL_IN_SAVE": "2"})
    assert killed.wait() == [-9]
    assert read_tracker(checkpoints) == "2" and latest_checkpoint_dir(checkpoints).name == "iter_0000002"
    assert (checkpoints / ".iter_0000004.incomplete").is_dir() and not (checkpoints / "iter_0000004").exists()

    resumed = run_job([*flags, "--load", str(checkpoints)], 1, tmp_path / "resumed")
    assert f"loaded model, progress, optimizer from {checkpoints / 'iter_0000002'} (iteration 2" in resumed.output()
    assert read_tracker(checkpoints) == "4" and not (checkpoints / ".iter_0000004.incomplete").exists()


def test_exit_duration_saves_and_exits_cleanly(corpus, tmp_path):
    checkpoints = tmp_path / "ckpt"
    metrics = tmp_path / "metrics.jsonl"
    job = run_job(training_flags(corpus, "--train-iters", "1000", "--save", str(checkpoints), "--exit-duration-in-mins",
                                 "0.0001", "--metrics-file", str(metrics)), 1, tmp_path / "logs")
    assert "exiting at iteration 1: --exit-duration-in-mins reached" in job.output()
    assert read_tracker(checkpoints) == "1" and sorted(losses_by_iteration(metrics)) == [1]


def test_bad_dwm_output_falls_back_to_uniform_and_bad_fd_pass_skips_the_update(corpus, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    job = run_job(training_flags(corpus, "--train-iters", "4", "--metrics-file", str(metrics), dwm=True), 1,
                  tmp_path / "logs", script=FAULTS, env={"FAULT_DWM_NAN_AT": "2", "FAULT_FD_NAN_AT": "1"})
    records = {r["iteration"]: r for r in read_metrics(metrics) if "dwm/fallbacks" in r}
    assert records[2]["dwm/fallbacks"] == 1 and records[2]["dwm/weight std"] == 0.0  # uniform for that step
    assert all(records[i]["dwm/fallbacks"] == 0 for i in (1, 3, 4))
    assert records[1]["dwm/fd skipped"] == 1 and records[2]["dwm/fd skipped"] == 0
    assert "iteration 1: the finite-difference pass was not finite; DWM update skipped" in job.output()
    assert all(math.isfinite(r["lm loss"]) for r in records.values())


def test_lost_peer_errors_are_recognised_and_others_are_not():
    """gloo words a vanished peer in more than one way; each becomes the same one-line message."""
    for text in ("[pair.cc:537] Read error [127.0.0.1]:8919: Connection reset by peer. This is typically ...",
                 "[pair.cc:589] Connection closed by peer [127.0.0.1]:3185"):
        message = lost_peer_message(RuntimeError(text))
        assert message is not None and message.startswith("another rank of the job ended"), text
        assert text.splitlines()[0] in message
    assert lost_peer_message(RuntimeError("CUDA out of memory")) is None
    assert lost_peer_message(ValueError("bad shape")) is None
