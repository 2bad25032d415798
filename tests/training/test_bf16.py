"""bf16, the GPU training mode, run on the CPU: every parameter is bf16 with fp32 main copies in the
optimizer; the DWM's Adam preconditioner reads those copies' state; the checkpoint (optimizer
included) saves, and a run stopped half-way resumes bit-exactly. The DWM runs on its own rank, as
in the launchers."""

from __future__ import annotations

import math

from tests.training.corpus import training_flags
from tests.training.launch import losses_by_iteration, run_job


def _flags(corpus, run_dir, *extra: str) -> list[str]:
    return training_flags(corpus, "--bf16", "--train-iters", "4", "--save", str(run_dir / "ckpt"), "--dwm-ranks", "1",
                          "--dwm-fd-direction", "adam",  # Adam's preconditioner read from the fp32 main copy
                          *extra, dwm=True)


def test_bf16_dwm_run_resumes_bit_exactly(corpus, tmp_path):
    reference = tmp_path / "reference.jsonl"
    run_job(_flags(corpus, tmp_path / "reference", "--metrics-file", str(reference)), 2, tmp_path / "logs-reference")
    first = tmp_path / "first.jsonl"
    run_job(_flags(corpus, tmp_path / "resumed", "--exit-interval", "2", "--metrics-file", str(first)), 2,
            tmp_path / "logs-first")
    second = tmp_path / "second.jsonl"
    job = run_job(_flags(corpus, tmp_path / "resumed", "--load", str(tmp_path / "resumed" / "ckpt"),
                         "--metrics-file", str(second)), 2, tmp_path / "logs-second")
    assert "loaded model, progress, optimizer" in job.output()

    expected = losses_by_iteration(reference)
    assert sorted(expected) == [1, 2, 3, 4]
    assert {**losses_by_iteration(first), **losses_by_iteration(second)} == expected
    hypergradients = losses_by_iteration(reference, "dwm/hypergrad norm")
    assert all(math.isfinite(value) for value in hypergradients.values()) and hypergradients[2] > 0
    assert losses_by_iteration(second, "dwm/weight std") == {i: v for i, v in
                                                             losses_by_iteration(reference, "dwm/weight std").items()
                                                             if i > 2}
