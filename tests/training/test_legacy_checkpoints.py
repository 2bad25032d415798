"""A checkpoint written by an earlier version of the trainer still resumes, and continues its run.

tests/training/fixtures/legacy/ holds, for the colocated DWM and for the DWM on its own rank, the
checkpoint at iteration N of a 2N-iteration run written by commit 7b3fa6b (before the trainer's
checkpointing moved into the checkpoint manager), with that run's metrics and per-sample weights
(tests/training/fixtures/make_legacy_checkpoints.py). Resumed by today's code, the iterations after N
must log the losses, gradient norms and DWM weights of the original run. The reference was computed
on another CPU, perhaps, so the comparison allows for rounding (relative 1e-5), not for a change of
behaviour: one iteration with a different learning rate, data position or DWM moves these by far
more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_dwm.training.metrics import read_metrics
from tests.training.fixtures.make_legacy_checkpoints import LAYOUTS, LEGACY, N, legacy_flags
from tests.training.launch import run_job

COMPARED = ("lm loss", "grad norm", "learning rate", "consumed samples", "dwm/weight min", "dwm/weight max",
            "dwm/ess")


def _training_records(path: Path) -> dict[int, dict]:
    return {record["iteration"]: record for record in read_metrics(path) if "lm loss" in record}


def _weights(path: Path) -> dict[int, list[float]]:
    batches = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {batch["iteration"]: batch["weight"] for batch in batches}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_checkpoint_of_the_former_trainer_resumes_its_run(layout, corpus, tmp_path):
    fixture = LEGACY / layout
    checkpoints = tmp_path / "ckpt"
    shutil.copytree(fixture / "ckpt", checkpoints)  # a resumed run may write into --load's directory
    job = run_job(legacy_flags(corpus, layout, tmp_path, "--load", str(checkpoints)), LAYOUTS[layout][0],
                  tmp_path / "logs")
    assert f"iteration {N}, consumed samples" in job.output(), job.output()

    ours, original = _training_records(tmp_path / "metrics.jsonl"), _training_records(fixture / "metrics.jsonl")
    assert sorted(ours) == list(range(N + 1, 2 * N + 1))
    for iteration, record in ours.items():
        for key in COMPARED:
            assert record[key] == pytest.approx(original[iteration][key], rel=1e-5, abs=1e-7), (iteration, key)
    weights, original_weights = _weights(tmp_path / "dwm_samples.jsonl"), _weights(fixture / "dwm_samples.jsonl")
    assert sorted(weights) == list(range(N + 1, 2 * N + 1))
    for iteration, values in weights.items():
        assert values == pytest.approx(original_weights[iteration], rel=1e-5, abs=1e-7), iteration
