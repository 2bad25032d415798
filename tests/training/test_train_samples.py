"""Sample-based training (--train-samples, --lr-decay-samples, --lr-warmup-samples, as Megatron-LM)
gives the same run as the iteration-based flags that count the same samples."""

from __future__ import annotations

from megatron_dwm.training.metrics import read_metrics
from tests.training.corpus import training_flags
from tests.training.launch import run_job

GLOBAL_BATCH = 8  # training_flags'


def _run(corpus, tmp_path, name: str, *flags: str) -> dict[int, tuple[float, float]]:
    base = training_flags(corpus, dwm=True)
    warmup = base.index("--lr-warmup-iters")
    del base[warmup: warmup + 2]  # each run gives its own warm-up
    metrics = tmp_path / f"{name}.jsonl"
    run_job([*base, *flags, "--metrics-file", str(metrics)], 1, tmp_path / name)
    return {record["iteration"]: (record["lm loss"], record["learning rate"])
            for record in read_metrics(metrics) if "lm loss" in record}


def test_train_samples_run_equals_the_train_iters_run(corpus, tmp_path):
    iterations = _run(corpus, tmp_path, "iters", "--train-iters", "6", "--lr-decay-iters", "5", "--lr-warmup-iters", "2")
    samples = _run(corpus, tmp_path, "samples", "--train-samples", str(6 * GLOBAL_BATCH),
                   "--lr-decay-samples", str(5 * GLOBAL_BATCH), "--lr-warmup-samples", str(2 * GLOBAL_BATCH))
    assert sorted(samples) == list(range(1, 7))
    assert samples == iterations
    assert len({rate for _, rate in samples.values()}) > 2  # the schedule did move: warm-up, then decay
