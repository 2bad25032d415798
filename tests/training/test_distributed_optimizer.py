"""megatron-core's distributed optimizer (--use-distributed-optimizer) on 2 data-parallel gloo ranks,
the DWM learning with Adam's preconditioner as its finite-difference direction: the same run as
the plain optimizer, iteration by iteration.

The distributed optimizer reduce-scatters the gradients where DDP all-reduces them and steps each
rank's shard of Adam's state; the preconditioner puts the shards of exp_avg_sq together, and the
validation pass all-reduces v. Float32 sums then differ in their order only, so the LLM's metrics
agree to a relative RELATIVE and the hypergradients, finite differences, to that plus a few of their
logged resolutions (tests/training/run_comparison.py explains the bound). The DWM's own Adam then
amplifies such differences where its gradients are near 0 (its first steps move each parameter by
about the learning rate, whatever the gradient's size): the weights agree to RELATIVE until the DWM
has stepped on differing hypergradients (its second stage), the LLM's metrics to LOOSE after."""

from __future__ import annotations

import pytest

from megatron_dwm.training.checkpointing import read_tracker
from tests.training.corpus import training_flags
from tests.training.launch import run_job
from tests.training.run_comparison import RELATIVE, hypergradients_agree, run_logs

ITERS = 6
IDENTICAL_WEIGHTS = 4  # the weights of iterations 1-4 come from hypergradients of the first stage (iteration 2)
LOOSE = 1e-4


def _run(corpus, run_dir, *flags: str) -> tuple[dict, dict]:
    run_job(training_flags(corpus, "--train-iters", str(ITERS), "--dwm-fd-direction", "adam",
                           "--metrics-file", str(run_dir / "metrics.jsonl"), *flags, dwm=True), 2, run_dir / "logs")
    return run_logs(run_dir)


def test_distributed_optimizer_trains_as_the_plain_optimizer(corpus, tmp_path):
    plain, plain_samples = _run(corpus, tmp_path / "plain")
    sharded, sharded_samples = _run(corpus, tmp_path / "distributed", "--use-distributed-optimizer",
                                    "--save", str(tmp_path / "ckpt"), "--save-interval", str(ITERS))
    assert read_tracker(tmp_path / "ckpt") == str(ITERS)  # its sharded Adam state saved in Megatron-LM's format
    assert sorted(sharded) == sorted(plain) == list(range(1, ITERS + 1))
    learned = [i for i in range(2, ITERS + 1) if "hypergradient" in plain_samples[i]]  # eta is 0 at iteration 1
    for iteration in range(1, ITERS + 1):
        tolerance = RELATIVE if iteration <= IDENTICAL_WEIGHTS else LOOSE
        for key in ("lm loss", "grad norm"):
            assert sharded[iteration][key] == pytest.approx(plain[iteration][key], rel=tolerance), (iteration, key)
        ours, theirs = sharded_samples[iteration], plain_samples[iteration]
        assert ("hypergradient" in ours) == ("hypergradient" in theirs)
        if iteration > IDENTICAL_WEIGHTS:
            continue
        assert ours["weight"] == pytest.approx(theirs["weight"], rel=RELATIVE, abs=1e-7), iteration
        if iteration in learned:
            assert hypergradients_agree(ours, theirs), (iteration, ours, theirs)
    assert [i for i in learned if i <= IDENTICAL_WEIGHTS] == [2, 4]
    assert plain[ITERS]["dwm/weight std"] > 0
