"""megatron-core's interleaved pipeline schedule (--num-layers-per-virtual-pipeline-stage 1: the tiny
model's 4 layers in 4 chunks, two per rank of PP=2) trains as the plain PP=2 schedule and as PP=1,
iteration by iteration, the DWM learning, and resumes from its own checkpoint bit for bit.

A layout draws its own initial weights, so the runs compared start from one checkpoint: the
interleaved run's of iteration 2 is read by the plain PP=2 run (a checkpoint of model chunks
model0, model1 read into one chunk per rank), its checkpoint of iteration 4 by the PP=1 run and by
the interleaved run resumed. The schedules differ in the order the chunks run, not in any sum a
micro batch's loss or a parameter's gradient takes; only the global gradient norm sums its squares
in another order, so gradient clipping may leave the parameters different in their last bits. The
logged losses, grad norms, weights and hypergradients then agree to RELATIVE and the hypergradients'
resolution (tests/training/run_comparison.py) up to the DWM's first update of a run; the DWM's Adam
amplifies last-bit differences of hypergradients (tests/training/test_distributed_optimizer.py), so
the LLM's metrics agree to LOOSE after it. The resumed run repeats its own layout's records exactly."""

from __future__ import annotations

import json

import pytest

from tests.training.corpus import training_flags
from tests.training.launch import run_job
from tests.training.run_comparison import RELATIVE, hypergradients_agree, metrics_by_iteration, run_logs

ITERS = 6  # 2 DWM stages of 3 iterations; the DWM learns at iterations 1 (eta 0: from g = 0), 2, 4 and 5
PLAIN = ["--pipeline-model-parallel-size", "2"]
INTERLEAVED = [*PLAIN, "--num-layers-per-virtual-pipeline-stage", "1"]
# the direction of Adam's preconditioner (every chunk's Adam state); 2 micro batches of validation per outer
# step in every run, as the interleaved schedule needs a multiple of PP
OUTER_STEP = ["--dwm-fd-direction", "adam", "--dwm-valid-batch-size", "4"]
EVALUATION = ("lm loss validation", "dwm-valid loss")  # logged at the last iteration
LOOSE = 1e-4


def _run(corpus, run_dir, world_size: int, *flags: str) -> tuple[dict, dict, dict]:
    """(training records, samples-log records, evaluation at the last iteration) of a DWM run."""
    run_job(training_flags(corpus, "--train-iters", str(ITERS), "--metrics-file", str(run_dir / "metrics.jsonl"),
                           *OUTER_STEP, *flags, dwm=True), world_size, run_dir / "logs")
    evaluation = {key: value for record in metrics_by_iteration(run_dir / "metrics.jsonl")[ITERS]
                  for key, value in record.items() if key in EVALUATION}
    return (*run_logs(run_dir), evaluation)


def _assert_agree(ours: tuple[dict, dict, dict], theirs: tuple[dict, dict, dict], start: int) -> None:
    """Two runs from the checkpoint of iteration `start` agree (module docstring)."""
    (records, samples, evaluation), (reference, reference_samples, reference_evaluation) = ours, theirs
    assert sorted(records) == list(range(start + 1, ITERS + 1))
    first_update = min(i for i in records if "hypergradient" in reference_samples[i])  # the DWM's, in these runs
    for iteration in records:
        tolerance = RELATIVE if iteration <= first_update else LOOSE
        for key in ("lm loss", "grad norm"):
            assert records[iteration][key] == pytest.approx(reference[iteration][key], rel=tolerance), (iteration, key)
        line, reference_line = samples[iteration], reference_samples[iteration]
        assert ("hypergradient" in line) == ("hypergradient" in reference_line), iteration
        if iteration <= first_update:
            assert line["weight"] == pytest.approx(reference_line["weight"], rel=RELATIVE, abs=1e-7), iteration
        if iteration == first_update:
            assert hypergradients_agree(line, reference_line), (iteration, line, reference_line)
    assert sorted(evaluation) == sorted(reference_evaluation) == sorted(EVALUATION)
    for key in EVALUATION:
        assert evaluation[key] == pytest.approx(reference_evaluation[key], rel=LOOSE), key


def test_interleaved_schedule_trains_as_plain_pipelines_and_resumes_exactly(corpus, tmp_path):
    run_dir = tmp_path / "interleaved"
    checkpoints = run_dir / "ckpt"
    interleaved = _run(corpus, run_dir, 2, *INTERLEAVED, "--save", str(checkpoints), "--save-interval", "2")
    plain = _run(corpus, tmp_path / "plain", 2, *PLAIN, "--load", str(checkpoints), "--ckpt-step", "2")
    one_stage = _run(corpus, tmp_path / "pp1", 1, "--load", str(checkpoints), "--ckpt-step", "4")
    resumed_dir = tmp_path / "resumed"
    _run(corpus, resumed_dir, 2, *INTERLEAVED, "--load", str(checkpoints), "--ckpt-step", "4")

    learned = [i for i in range(1, ITERS + 1) if "hypergradient" in interleaved[1][i]]
    assert learned == [1, 2, 4, 5] and interleaved[0][ITERS]["dwm/weight std"] > 0
    _assert_agree(plain, interleaved, 2)  # the DWM's first update: iteration 4
    _assert_agree(one_stage, interleaved, 4)  # iteration 5

    # resumed: every record (wall clock aside) and every per-sample line of the uninterrupted run
    reference = metrics_by_iteration(run_dir / "metrics.jsonl")
    resumed = metrics_by_iteration(resumed_dir / "metrics.jsonl")
    assert sorted(resumed) == [5, 6]
    assert all(resumed[iteration] == reference[iteration] for iteration in resumed), (resumed, reference)
    lines = (run_dir / "dwm_samples.jsonl").read_text().splitlines()
    assert (resumed_dir / "dwm_samples.jsonl").read_text().splitlines() == [
        line for line in lines if json.loads(line)["iteration"] > 4]
