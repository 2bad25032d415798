"""Exact resume: N iterations + resume for N more gives the run of 2N uninterrupted iterations, bit for
bit (every logged metric but the wall-clock ones, and every line of dwm_samples.jsonl), also after a
SIGKILL right after a checkpoint and after a stop signal (pre-emption: SIGTERM, or SLURM's SIGUSR1).

The runs weigh their samples with the DWM in 2 stages of 3 iterations, each opening with a DWM
phase of 2 iterations, so the resumed part crosses a DWM phase (iterations 4-5) and an LLM phase
(iteration 6), and the DWM's weights must match too. Same CPU, thread count and layout as the
uninterrupted run: that is what makes the comparison exact."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from megatron_dwm.training.checkpointing import read_tracker
from tests.training.corpus import training_flags
from tests.training.launch import Job, losses_by_iteration, run_job
from tests.training.run_comparison import metrics_by_iteration

FAULTS = Path(__file__).parent / "scripts" / "train_with_faults.py"
N = 3
LAYOUTS = {  # name: (world size, parallel flags, the stop signal of the pre-emption, threads per rank)
    # megatron-core's distributed optimizer: each rank saves and restores its shard of Adam's state, whose
    # exp_avg_sq the DWM's finite-difference direction reads (the plain optimizer at DP=2: tp1-dp2-dwm1)
    "tp1-dp2-distopt": (2, ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
                            "--use-distributed-optimizer", "--dwm-fd-direction", "adam"], signal.SIGTERM, 1),
    "tp2-pp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], signal.SIGTERM, 1),
    # the DWM on its own rank: its state is in the checkpoint too, and it must outlive SIGUSR1 (whose default kills)
    "tp1-dp2-dwm1": (3, ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
                         "--dwm-ranks", "1"], signal.SIGUSR1, 1),
    "tp1-dp1-2threads": (1, [], signal.SIGTERM, 2),  # exact at another thread count too (its own reference)
}


def _env(layout: str) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(LAYOUTS[layout][3])}


def _flags(corpus, layout: str, run_dir, *extra: str) -> list[str]:
    return training_flags(corpus, *LAYOUTS[layout][1], "--train-iters", str(2 * N), "--save", str(run_dir / "ckpt"),
                          "--save-interval", str(N), "--metrics-file", str(run_dir / "metrics.jsonl"),
                          "--num-workers", "1", *extra, dwm=True)  # a loader worker: it must survive the signal too


@pytest.fixture(scope="module")
def reference_runs(corpus, tmp_path_factory):
    """2N uninterrupted iterations per layout, run on first use."""
    runs = {}

    def get(layout: str):
        if layout not in runs:
            run_dir = tmp_path_factory.mktemp(f"reference-{layout}")
            run_job(_flags(corpus, layout, run_dir), LAYOUTS[layout][0], run_dir / "logs", env=_env(layout))
            runs[layout] = run_dir
        return runs[layout]

    return get


def _differences(ours: list[dict], theirs: list[dict]) -> list[dict[str, tuple]]:
    """Per record: the fields whose values differ, as (ours, theirs)."""
    return [{key: (a.get(key), b.get(key)) for key in a.keys() | b.keys() if a.get(key) != b.get(key)}
            for a, b in zip(ours, theirs)] + [{"records": (len(ours), len(theirs))}]


def _held_job(corpus, layout: str, run_dir: Path, name: str, *extra: str) -> Job:
    """A job that, having logged iteration N + 1, waits for the test's signal (FAULT_HOLD_AFTER)."""
    return Job(_flags(corpus, layout, run_dir, "--metrics-file", str(run_dir / f"{name}.jsonl"), *extra),
               LAYOUTS[layout][0], run_dir / name, script=FAULTS, env={"FAULT_HOLD_AFTER": str(N + 1), **_env(layout)})


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_resume_after_sigkill_and_a_stop_signal_is_bit_exact(layout, corpus, reference_runs, tmp_path):
    world_size, _, stop_signal, _ = LAYOUTS[layout]
    reference_dir = reference_runs(layout)
    reference = metrics_by_iteration(reference_dir / "metrics.jsonl")
    assert sorted(reference) == list(range(1, 2 * N + 1))
    checkpoints = tmp_path / "ckpt"

    # 1. Killed with SIGKILL after the checkpoint of iteration N, while it holds after iteration N + 1.
    killed = _held_job(corpus, layout, tmp_path, "killed")
    killed.wait_until(lambda: (tmp_path / "killed.jsonl").exists()
                      and N + 1 in losses_by_iteration(tmp_path / "killed.jsonl"))
    killed.signal(signal.SIGKILL)
    killed.wait()
    assert read_tracker(checkpoints) == str(N), killed.output()

    # 2. Resumed; signalled while it holds after iteration N + 1: it stops at the next iteration's
    #    agreement, saves and exits 0.
    resumed = _held_job(corpus, layout, tmp_path, "resumed", "--load", str(checkpoints), "--exit-signal-handler")
    resumed.wait_until(lambda: (tmp_path / "resumed.jsonl").exists()
                       and N + 1 in losses_by_iteration(tmp_path / "resumed.jsonl"))
    resumed.signal(stop_signal)
    assert resumed.wait() == [0] * world_size, resumed.output()
    assert f"exiting at iteration {N + 2}: signal received" in resumed.output(), resumed.output()
    assert read_tracker(checkpoints) == str(N + 2)

    # 3. Resumed again to the end.
    run_job(_flags(corpus, layout, tmp_path, "--load", str(checkpoints), "--metrics-file",
                   str(tmp_path / "final.jsonl")), world_size, tmp_path / "final", env=_env(layout))

    # Every record of every run equals the uninterrupted run's record of that iteration.
    for name, iterations in (("killed", range(1, N + 2)), ("resumed", range(N + 1, N + 3)),
                             ("final", range(N + 3, 2 * N + 1))):
        logged = metrics_by_iteration(tmp_path / f"{name}.jsonl")
        assert sorted(logged) == list(iterations), name
        for iteration, records in logged.items():
            assert records == reference[iteration], (name, iteration, _differences(records, reference[iteration]))
    # dwm_samples.jsonl, shared by the three runs (each set aside what the run it replaces logged
    # after its checkpoint): the uninterrupted run's file, byte for byte.
    expected = (reference_dir / "dwm_samples.jsonl").read_text()
    assert [json.loads(line)["iteration"] for line in expected.splitlines()] == list(range(1, 2 * N + 1))
    assert (tmp_path / "dwm_samples.jsonl").read_text() == expected
    # the comparison covers hypergradients and weights the DWM learned, not only uniform ones
    assert sum("hypergradient" in line for line in expected.splitlines()) >= 2
    assert reference[2 * N][0]["dwm/weight std"] > 0


def test_checkpoint_reshards_to_another_layout(corpus, reference_runs, tmp_path):
    """The TP=1 x DP=2 checkpoint (the plain optimizer's, the DWM's on its own rank) loads into TP=2 x PP=2:
    same validation loss (up to fp32 reassociation); the random states, tied to
    the layout, start from the seed instead."""
    reference_dir = reference_runs("tp1-dp2-dwm1")
    reference = losses_by_iteration(reference_dir / "metrics.jsonl", "lm loss validation")
    metrics = tmp_path / "metrics.jsonl"
    job = run_job(training_flags(corpus, *LAYOUTS["tp2-pp2"][1], "--train-iters", str(2 * N), "--load",
                                 str(reference_dir / "ckpt"), "--metrics-file", str(metrics)), 4, tmp_path / "logs")
    assert "differs from this run's (2, 2, 1): random states start from --seed" in job.output()
    resharded = losses_by_iteration(metrics, "lm loss validation")
    assert list(resharded) == list(reference) == [2 * N]
    assert abs(resharded[2 * N] - reference[2 * N]) < 1e-5 * reference[2 * N]
