"""A checkpoint written by an earlier version of the trainer still resumes, and continues its run.

tests/training/fixtures/legacy/ holds, for the colocated DWM and for the DWM on its own rank, the
checkpoint at iteration N of a 2N-iteration run written by commit 7b3fa6b (before the trainer's
checkpointing moved into the checkpoint manager), with that run's metrics and per-sample weights
(tests/training/fixtures/make_legacy_checkpoints.py). Resumed by today's code, the iterations after N
must log the losses, gradient norms and DWM weights of the original run. The reference was computed
on another CPU, perhaps, so the comparison allows for rounding, not for a change of behaviour: the
LLM's quantities and the weights of the first resumed iteration (the restored DWM's) to relative 1e-5;
the DWM's weights once it has learned again to relative 1e-3, because an outer step's finite
difference amplifies the rounding (measured against the fixture on an AMD EPYC: 5.6e-5 after one
update, while the losses stayed within 2.2e-6). One iteration with a different learning rate or
data position moves these by far more, and a DWM not restored would give weights near uniform's 1
where the original run's stand 0.7% to 3.9% away from it. (On one CPU, resuming is bit-identical:
tests/training/test_exact_resume.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_dwm.training.metrics import read_metrics
from tests.training.fixtures.make_legacy_checkpoints import LAYOUTS, LEGACY, N, legacy_flags
from tests.training.launch import run_job

LLM_COMPARED = ("lm loss", "grad norm", "learning rate", "consumed samples")
DWM_COMPARED = ("dwm/weight min", "dwm/weight max", "dwm/ess")
RELATIVE, RELATIVE_AFTER_UPDATE = 1e-5, 1e-3


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
    weights, original_weights = _weights(tmp_path / "dwm_samples.jsonl"), _weights(fixture / "dwm_samples.jsonl")
    assert sorted(weights) == list(range(N + 1, 2 * N + 1))
    for iteration, record in ours.items():
        dwm_tolerance = RELATIVE if iteration == N + 1 else RELATIVE_AFTER_UPDATE
        for key in (*LLM_COMPARED, *DWM_COMPARED):
            tolerance = RELATIVE if key in LLM_COMPARED else dwm_tolerance
            assert record[key] == pytest.approx(original[iteration][key], rel=tolerance, abs=1e-7), (iteration, key)
        assert weights[iteration] == pytest.approx(original_weights[iteration], rel=dwm_tolerance, abs=1e-7), iteration
