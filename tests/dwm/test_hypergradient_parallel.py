"""The finite-difference outer step through megatron-core gives the same hypergradient on TP=1 and on
TP=2 x PP=2 (up to fp32 reassociation), and so the same DWM update."""

from __future__ import annotations

import json

import torch

from tests.training.corpus import training_flags
from tests.training.launch import run_job


def _samples(run_dir) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "dwm_samples.jsonl").read_text().splitlines()]
    return {record["iteration"]: record for record in records}


def test_hypergradient_is_the_same_on_tp1_and_tp2_pp2(corpus, tmp_path):
    start = tmp_path / "start"  # both layouts start from the same weights (megatron's init depends on the layout)
    run_job(training_flags(corpus, "--train-iters", "1", "--lr-warmup-iters", "0", "--save", str(start)), 1,
            tmp_path / "start-logs")
    runs = {}
    for name, world, layout in (("tp1", 1, []), ("tp2-pp2", 4, ["--tensor-model-parallel-size", "2",
                                                               "--pipeline-model-parallel-size", "2"])):
        run_dir = tmp_path / name
        run_job(training_flags(corpus, *layout, "--train-iters", "2", "--dwm-stages", "1", "--dwm-update-iters", "1",
                               "--lr-warmup-iters", "0", "--load", str(start), "--finetune",
                               "--metrics-file", str(run_dir / "metrics.jsonl"), dwm=True), world, run_dir / "logs")
        runs[name] = _samples(run_dir)
    g1 = torch.tensor(runs["tp1"][1]["hypergradient"], dtype=torch.float64)
    g4 = torch.tensor(runs["tp2-pp2"][1]["hypergradient"], dtype=torch.float64)
    assert g1.abs().max() > 0
    torch.testing.assert_close(g4, g1, rtol=2e-3, atol=2e-3 * float(g1.abs().max()))
    assert runs["tp1"][1]["document_id"] == runs["tp2-pp2"][1]["document_id"]  # the same global batch
    w1 = torch.tensor(runs["tp1"][2]["weight"], dtype=torch.float64)
    w4 = torch.tensor(runs["tp2-pp2"][2]["weight"], dtype=torch.float64)
    assert (w1 - 1).abs().max() > 1e-4  # the update moved the weights away from uniform
    torch.testing.assert_close(w4, w1, rtol=1e-3, atol=1e-4)
