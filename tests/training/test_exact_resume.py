"""Exact resume: N iterations + resume for N more gives the losses of 2N uninterrupted iterations,
bit for bit, also after a SIGKILL right after a checkpoint and after a SIGTERM (pre-emption).

The runs weigh their samples with the DWM in 2 stages of 3 iterations, each opening with a DWM
phase of 2 iterations, so the resumed part crosses a DWM phase (iterations 4-5) and an LLM phase
(iteration 6), and the DWM's weights must match too."""

from __future__ import annotations

import signal

import pytest

from megatron_dwm.training.checkpointing import read_tracker
from tests.training.corpus import training_flags
from tests.training.launch import Job, losses_by_iteration, run_job

N = 3
LAYOUTS = {  # name: (world size, parallel flags)
    "tp1-dp2": (2, ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1"]),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
    "tp1-dp2-dwm1": (3, ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
                         "--dwm-ranks", "1"]),  # the DWM on its own rank: its state is in the checkpoint too
}


def _flags(corpus, layout: str, run_dir, *extra: str) -> list[str]:
    return training_flags(corpus, *LAYOUTS[layout][1], "--train-iters", str(2 * N), "--save", str(run_dir / "ckpt"),
                          "--save-interval", str(N), "--metrics-file", str(run_dir / "metrics.jsonl"),
                          "--num-workers", "1", *extra, dwm=True)  # a loader worker: it must survive SIGTERM too


@pytest.fixture(scope="module")
def reference_runs(corpus, tmp_path_factory):
    """2N uninterrupted iterations per layout, run on first use."""
    runs = {}

    def get(layout: str):
        if layout not in runs:
            run_dir = tmp_path_factory.mktemp(f"reference-{layout}")
            run_job(_flags(corpus, layout, run_dir), LAYOUTS[layout][0], run_dir / "logs")
            runs[layout] = run_dir
        return runs[layout]

    return get


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_resume_after_sigkill_and_sigterm_is_bit_exact(layout, corpus, reference_runs, tmp_path):
    world_size = LAYOUTS[layout][0]
    reference = losses_by_iteration(reference_runs(layout) / "metrics.jsonl")
    assert sorted(reference) == list(range(1, 2 * N + 1))
    checkpoints = tmp_path / "ckpt"

    # 1. Killed with SIGKILL as soon as the checkpoint of iteration N is complete.
    killed = Job(_flags(corpus, layout, tmp_path, "--metrics-file", str(tmp_path / "killed.jsonl")), world_size,
                 tmp_path / "killed")
    killed.wait_until(lambda: read_tracker(checkpoints) == str(N))
    killed.signal(signal.SIGKILL)
    killed.wait()
    assert read_tracker(checkpoints) == str(N), "the job ran past the next checkpoint before it was killed"

    # 2. Resumed; stopped with SIGTERM after its first iteration: it saves and exits 0.
    resumed_log = tmp_path / "resumed.jsonl"
    resumed = Job(_flags(corpus, layout, tmp_path, "--load", str(checkpoints), "--exit-signal-handler",
                         "--metrics-file", str(resumed_log)), world_size, tmp_path / "resumed")
    resumed.wait_until(lambda: resumed_log.exists() and N + 1 in losses_by_iteration(resumed_log))
    resumed.signal(signal.SIGTERM)
    assert resumed.wait() == [0] * world_size, resumed.output()
    stopped_at = int(read_tracker(checkpoints))
    assert N + 1 <= stopped_at < 2 * N, f"SIGTERM checkpoint at {stopped_at}:\n{resumed.output()}"

    # 3. Resumed again to the end.
    final_log = tmp_path / "final.jsonl"
    run_job(_flags(corpus, layout, tmp_path, "--load", str(checkpoints), "--metrics-file", str(final_log)),
            world_size, tmp_path / "final")

    resumed_losses = {i: loss for i, loss in losses_by_iteration(resumed_log).items() if i <= stopped_at}
    final_losses = losses_by_iteration(final_log)
    assert sorted(resumed_losses) == list(range(N + 1, stopped_at + 1))
    assert sorted(final_losses) == list(range(stopped_at + 1, 2 * N + 1))
    for iteration, loss in {**resumed_losses, **final_losses}.items():
        assert loss == reference[iteration], (iteration, loss, reference[iteration])
    for key in ("grad norm", "dwm/weight std", "dwm/weight/RedPajamaC4"):
        expected = losses_by_iteration(reference_runs(layout) / "metrics.jsonl", key)
        resumed_values = {**losses_by_iteration(resumed_log, key), **losses_by_iteration(final_log, key)}
        assert {i: resumed_values[i] for i in range(N + 1, 2 * N + 1)} == {i: expected[i] for i in range(N + 1, 2 * N + 1)}
    assert losses_by_iteration(reference_runs(layout) / "metrics.jsonl", "dwm/weight std")[2 * N] > 0  # not uniform


def test_checkpoint_reshards_to_another_layout(corpus, reference_runs, tmp_path):
    """The TP=1 x DP=2 checkpoint loads into TP=2 x PP=2: same validation loss (up to fp32 reassociation);
    the random states, tied to the layout, start from the seed instead."""
    reference_dir = reference_runs("tp1-dp2")
    reference = losses_by_iteration(reference_dir / "metrics.jsonl", "lm loss validation")
    metrics = tmp_path / "metrics.jsonl"
    job = run_job(training_flags(corpus, *LAYOUTS["tp2-pp2"][1], "--train-iters", str(2 * N), "--load",
                                 str(reference_dir / "ckpt"), "--metrics-file", str(metrics)), 4, tmp_path / "logs")
    assert "differs from this run's (2, 2, 1): random states start from --seed" in job.output()
    resharded = losses_by_iteration(metrics, "lm loss validation")
    assert list(resharded) == list(reference) == [2 * N]
    assert abs(resharded[2 * N] - reference[2 * N]) < 1e-5 * reference[2 * N]
