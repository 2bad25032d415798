"""--context-parallel-size 2 on 2 gloo ranks, the DWM learning, trains as the same run on one rank.

megatron-core's context-parallel attention needs Transformer Engine, so the CP run's model has the
test double of tests/context_parallel_attention.py as its core attention
(tests/training/scripts/train_with_cp_attention.py); everything else is the product's: the rank
layout and megatron-core's groups, each rank's share of the tokens, the per-sample losses reduced
over the CP group, the loss scaling and DDP over DP x CP, the DWM's copies and its outer step,
evaluation and the checkpoint. The reference is the plain run on one rank (megatron-core's local
attention). Sums differ in their order only, so run_comparison's bounds apply, as in
test_scale_features.py.
"""

from __future__ import annotations

import torch

from tests.training.corpus import training_flags
from tests.training.launch import REPO, losses_by_iteration, run_job
from tests.training.run_comparison import assert_same_training, run_logs

CP_ATTENTION = REPO / "tests" / "training" / "scripts" / "train_with_cp_attention.py"
ITERS = 4  # 2 stages of 2 iterations, the DWM learning at each
IDENTICAL_WEIGHTS = 3
EVALUATIONS = ("lm loss validation", "dwm-valid loss")


def _flags(corpus, run_dir, *extra: str) -> list[str]:
    return training_flags(corpus, "--train-iters", str(ITERS), "--eval-interval", "2", "--metrics-file",
                          str(run_dir / "metrics.jsonl"), *extra, dwm=True)


def test_context_parallel_run_trains_as_one_rank(corpus, tmp_path):
    plain, split = tmp_path / "plain", tmp_path / "cp2"
    run_job(_flags(corpus, plain), 1, plain / "logs")
    (split / "dwm").mkdir(parents=True)
    run_job(_flags(corpus, split, "--context-parallel-size", "2", "--save", str(split / "checkpoints")), 2,
            split / "logs", script=CP_ATTENTION, env={"DWM_STATE_DIR": str(split / "dwm")})

    reference = run_logs(plain)
    assert assert_same_training(run_logs(split), reference, IDENTICAL_WEIGHTS) == [2, 3]
    assert reference[0][ITERS]["dwm/weight std"] > 0  # the DWM moved the weights
    for key in EVALUATIONS:
        ours, theirs = (losses_by_iteration(run / "metrics.jsonl", key) for run in (split, plain))
        assert ours.keys() == theirs.keys() == {2, ITERS}, key
        for iteration, loss in theirs.items():
            assert abs(ours[iteration] - loss) <= 1e-4 * loss, (key, iteration)
    # both CP ranks hold a copy of the DWM; the copies stayed identical
    copies = [torch.load(split / "dwm" / f"rank{rank}.pt") for rank in (0, 1)]
    assert copies[0].keys() == copies[1].keys()
    assert all(torch.equal(copies[0][name], copies[1][name]) for name in copies[0])
