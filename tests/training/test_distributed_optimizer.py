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

from megatron_dwm.training.checkpointing import read_tracker
from tests.training.corpus import training_flags
from tests.training.launch import run_job
from tests.training.run_comparison import assert_same_training, run_logs

ITERS = 6
IDENTICAL_WEIGHTS = 4  # the weights of iterations 1-4 come from hypergradients of the first stage (iteration 2)
LOOSE = 1e-4


def _run(corpus, run_dir, *flags: str) -> tuple[dict, dict]:
    run_job(training_flags(corpus, "--train-iters", str(ITERS), "--dwm-fd-direction", "adam",
                           "--metrics-file", str(run_dir / "metrics.jsonl"), *flags, dwm=True), 2, run_dir / "logs")
    return run_logs(run_dir)


def test_distributed_optimizer_trains_as_the_plain_optimizer(corpus, tmp_path):
    plain = _run(corpus, tmp_path / "plain")
    sharded = _run(corpus, tmp_path / "distributed", "--use-distributed-optimizer",
                   "--save", str(tmp_path / "ckpt"), "--save-interval", str(ITERS))
    assert read_tracker(tmp_path / "ckpt") == str(ITERS)  # its sharded Adam state saved in Megatron-LM's format
    assert sorted(sharded[0]) == list(range(1, ITERS + 1))
    assert assert_same_training(sharded, plain, IDENTICAL_WEIGHTS, LOOSE) == [2, 4]  # eta is 0 at iteration 1
    assert plain[0][ITERS]["dwm/weight std"] > 0
