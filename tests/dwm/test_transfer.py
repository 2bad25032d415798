"""Transfer: a DWM trained beside the tiny model loads frozen (--dwm-load --dwm-freeze) into the run
of a larger model and gives exactly the weights it gives in a tiny run for the same batches."""

from __future__ import annotations

import json

from megatron_dwm.training.metrics import read_metrics
from tests.training.corpus import training_flags
from tests.training.launch import run_job

LARGER = ["--num-layers", "8", "--hidden-size", "128", "--ffn-hidden-size", "352", "--num-attention-heads", "8",
          "--num-query-groups", "4"]


def _weights(run_dir) -> dict[int, list[float]]:
    lines = (run_dir / "dwm_samples.jsonl").read_text().splitlines()
    return {record["iteration"]: record["weight"] for record in map(json.loads, lines)}


def test_frozen_dwm_transfers_to_a_larger_model(corpus, tmp_path):
    source = tmp_path / "source"
    run_job(training_flags(corpus, "--train-iters", "4", "--lr-warmup-iters", "0", "--save", str(source / "ckpt"),
                           "--dwm-valid-batch-size", "4",
                           "--metrics-file", str(source / "metrics.jsonl"), dwm=True), 1, tmp_path / "source-logs")
    weights = {}
    for name, shape in (("tiny", []), ("larger", LARGER)):
        run_dir = tmp_path / name
        job = run_job(training_flags(corpus, *shape, "--train-iters", "4", "--dwm-load", str(source / "ckpt"),
                                     "--dwm-freeze", "--metrics-file", str(run_dir / "metrics.jsonl"), dwm=True),
                      1, tmp_path / f"{name}-logs")
        assert "loaded the DWM from" in job.output() and "(frozen)" in job.output()
        weights[name] = _weights(run_dir)
        assert not any("dwm/hypergrad norm" in record for record in read_metrics(run_dir / "metrics.jsonl"))
    assert weights["larger"] == weights["tiny"]  # bit-identical: the same DWM on the same batches
    assert max(abs(w - 1) for w in weights["tiny"][1]) > 1e-3  # the trained DWM does not weigh uniformly
