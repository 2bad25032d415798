"""Training on the demo corpus (built by `make demo-data`): the loss goes down, and TensorBoard
holds the per-domain losses, learning rate, throughput and validation curves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.training.launch import losses_by_iteration, run_job

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo_data"
pytestmark = [
    pytest.mark.demo,
    pytest.mark.skipif(not (DEMO / "indexed" / "data_path.txt").exists(), reason="run `make demo-data` first"),
]


def test_demo_run_learns_and_logs_per_domain_losses_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data_path = (DEMO / "indexed" / "data_path.txt").read_text().split()
    tensorboard = tmp_path / "tensorboard"
    run_job(["--model-preset", "tiny", "--seq-length", "128", "--micro-batch-size", "4", "--global-batch-size", "16",
             "--train-iters", "40", "--lr", "3e-3", "--lr-warmup-iters", "5", "--log-interval", "1",
             "--eval-interval", "20", "--eval-iters", "2", "--num-workers", "1", "--dwm-disable", "--data-path", *data_path,
             "--dwm-valid-data-path", str(DEMO / "indexed" / "lambada_style_text_document"),
             "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(DEMO / "tokenizers" / "demo-spm.model"),
             "--tensorboard-dir", str(tensorboard), "--save", str(tmp_path / "ckpt"),
             "--data-cache-path", str(tmp_path / "index-cache")], 2, tmp_path / "logs")

    losses = losses_by_iteration(tensorboard / "metrics.jsonl")
    first, last = [sum(losses[i] for i in span) / 10 for span in (range(1, 11), range(31, 41))]
    assert last < first - 1.0, (first, last)

    events = EventAccumulator(str(tensorboard))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    domains = {os.path.basename(p).removesuffix("_text_document") for p in data_path[1::2]}
    assert {f"lm loss/{domain}" for domain in domains} <= tags
    assert {"lm loss", "learning rate", "grad norm", "tokens per second", "throughput per GPU (TFLOP/s/GPU)",
            "lm loss validation", "dwm-valid loss", "elapsed time per iteration (ms)"} <= tags
    book = [event.value for event in events.Scalars("lm loss/RedPajamaBook")]
    assert len(book) >= 30 and all(value > 0 for value in book)
    assert [event.step for event in events.Scalars("lm loss validation")] == [20, 40]


    # The run's checkpoint exports to Hugging Face (with its SentencePiece tokenizer), loads in
    # transformers, and lm-eval scores it on the repository's local task, offline.
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    evaluate_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_tool)
    export = tmp_path / "hf"
    evaluate_tool.main(["--load-dir", str(tmp_path / "ckpt"), "--tokenizer-model",
                        str(DEMO / "tokenizers" / "demo-spm.model"), "--export-dir", str(export),
                        "--tasks", "dwm_synthetic_choice", "--include-path", str(REPO / "tests" / "eval_tasks"),
                        "--limit", "8", "--bootstrap-iters", "0", "--output", str(tmp_path / "eval")])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.decode(tokenizer("The sea.")["input_ids"]).strip() == "The sea."
    results = json.loads((tmp_path / "eval.json").read_text())
    assert "dwm_synthetic_choice" in json.dumps(results) and (tmp_path / "eval.md").read_text().count("|") > 10
