"""Megatron-LM's memory and overlap features on 2 gloo ranks, the DWM learning: each trains as the plain
layout it changes, iteration by iteration (loss, grad norm, the DWM's weights and hypergradients).

- on TP=2: sequence parallelism (norms on half the sequence each, their weight gradients summed over
  the tensor-parallel group) with full activation recomputation (uniform, in chunks of 2 layers);
- on DP=2: DDP's overlapped gradient reduction in small buckets with selective recomputation (the
  attention's core), and with the distributed optimizer its overlapped parameter all-gather (the
  DWM's outer step displaces and restores the parameters the all-gather writes).

Two features share a run to keep the suite short; sequence parallelism and each recomputation alone
give the single rank's per-token losses and gradients in tests/test_model_parallel_equivalence.py.

Sums then differ in their order only (recomputation: not at all), so run_comparison's bounds apply:
the DWM's weights up to IDENTICAL_WEIGHTS come from hypergradients of iteration 2 and agree to
RELATIVE; after that the DWM has stepped on hypergradients that differ in their last bits."""

from __future__ import annotations

import pytest

from megatron_dwm.training.metrics import read_metrics
from tests.distributed import run_distributed
from tests.training.corpus import training_flags
from tests.training.launch import run_job
from tests.training.run_comparison import assert_same_training, run_logs

ITERS = 4  # 2 stages of 2 iterations, the DWM learning at each
IDENTICAL_WEIGHTS = 3
BUCKET = ["--ddp-bucket-size", "20000"]  # several buckets on the tiny preset, each reduced as soon as it is ready

EVALUATED = ["--eval-interval", "2"]  # at iterations 2 and 4: evaluation reads the updated parameters too
LAYOUTS = {"tp2": ["--tensor-model-parallel-size", "2", *EVALUATED], "dp2": EVALUATED}
FEATURES = {  # name: (layout, flags)
    "sequence-parallel-full-recompute": ("tp2", ["--sequence-parallel", "--recompute-granularity", "full",
                                                 "--recompute-method", "uniform", "--recompute-num-layers", "2"]),
    "overlap-grad-reduce-selective-recompute": ("dp2", ["--overlap-grad-reduce", *BUCKET, "--recompute-activations"]),
    "overlap-param-gather": ("dp2", ["--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
                                     *BUCKET]),
}


def _run(corpus, run_dir, layout: str, *flags: str) -> tuple[dict, dict]:
    run_job(training_flags(corpus, *LAYOUTS[layout], "--train-iters", str(ITERS), "--metrics-file",
                           str(run_dir / "metrics.jsonl"), *flags, dwm=True), 2, run_dir / "logs")
    return run_logs(run_dir)


@pytest.fixture(scope="module")
def plain_runs(corpus, tmp_path_factory):
    """The plain run of each layout, made on first use."""
    runs = {}

    def get(layout: str):
        if layout not in runs:
            run_dir = tmp_path_factory.mktemp(f"plain-{layout}")
            runs[layout] = run_dir, _run(corpus, run_dir, layout)
        return runs[layout]

    return get


@pytest.mark.parametrize("feature", FEATURES)
def test_feature_trains_as_the_plain_layout(feature, corpus, plain_runs, tmp_path):
    layout, flags = FEATURES[feature]
    plain_dir, plain = plain_runs(layout)
    run = _run(corpus, tmp_path, layout, *flags)
    assert assert_same_training(run, plain, IDENTICAL_WEIGHTS) == [2, 3]
    assert plain[0][ITERS]["dwm/weight std"] > 0
    ours, theirs = _evaluations(tmp_path), _evaluations(plain_dir)
    assert ours.keys() == theirs.keys() == {2, ITERS}
    for iteration, loss in theirs.items():
        assert ours[iteration] == pytest.approx(loss, rel=1e-4), iteration


def _evaluations(run_dir) -> dict[int, float]:
    return {record["iteration"]: record["lm loss validation"] for record in read_metrics(run_dir / "metrics.jsonl")
            if "lm loss validation" in record}


def _main_gradient_dtypes(rank: int, world_size: int, flags: list[str]) -> set[str]:
    from megatron_dwm.arguments import build_parser
    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.training.build import ddp_options, wrap_ddp
    from tests.megatron_model import build_on_rank

    args = build_parser().parse_args(["--bf16", *flags])
    model = build_on_rank(get_preset("tiny").with_overrides(vocab_size=256), 256, seq_length=32, bf16=True)
    return {str(param.main_grad.dtype) for param in wrap_ddp(model, **ddp_options(args)).parameters()}


def test_gradients_accumulate_in_bf16_only_with_grad_reduce_in_bf16():
    assert run_distributed(_main_gradient_dtypes, 1, args=([],)) == [{"torch.float32"}]
    assert run_distributed(_main_gradient_dtypes, 1, args=(["--grad-reduce-in-bf16"],)) == [{"torch.bfloat16"}]
