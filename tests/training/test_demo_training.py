"""Training on the demo corpus (built by `make demo-data`): the loss goes down, and TensorBoard
holds the per-domain losses, learning rate, throughput and validation curves."""

from __future__ import annotations

import os
import re
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


def test_demo_configuration_runs_the_dwm_and_writes_its_summary_and_plots(tmp_path):
    """`make demo`'s flags (the Makefile's DEMO_ARGS and DEMO_DWM_ARGS), shortened to 8 iterations
    in 2 stages, on 2 ranks; then tools/demo_summary.py, as `make demo` ends."""
    import importlib.util

    from tests.test_experiment_scripts import makefile_variable

    data_path = (DEMO / "indexed" / "data_path.txt").read_text().split()
    run = tmp_path / "demo"
    flags = [*makefile_variable("DEMO_ARGS"), *makefile_variable("DEMO_DWM_ARGS"),
             "--train-iters", "8", "--lr-warmup-iters", "2", "--dwm-stages", "2", "--dwm-update-iters", "2", "--log-interval", "2",
             "--eval-interval", "4", "--eval-iters", "1", "--save-interval", "4"]
    run_job([*flags, "--data-path", *data_path,
             "--dwm-valid-data-path", str(DEMO / "indexed" / "lambada_style_text_document"),
             "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(DEMO / "tokenizers" / "demo-spm.model"),
             "--save", str(run / "checkpoints"), "--load", str(run / "checkpoints"),
             "--tensorboard-dir", str(run / "tensorboard"), "--data-cache-path", str(tmp_path / "index-cache")],
            2, tmp_path / "logs")

    spec = importlib.util.spec_from_file_location("demo_summary", REPO / "tools" / "demo_summary.py")
    demo_summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_summary)
    assert demo_summary.main([str(run), "--", *flags]) == 0

    summary = (run / "summary.md").read_text()
    assert "tiny Llama (4 layers, hidden size 64)" in summary
    assert "8 of 8 iterations, 16,384 tokens" in summary  # 8 x 16 samples x 128 tokens
    domains = sorted(os.path.basename(p).removesuffix("_text_document") for p in data_path[1::2])
    assert len(domains) == 5 and f"trained on 5 domains: {', '.join(domains)}" in summary
    weights = dict(re.findall(r"^  (RedPajama\w+) +(\d+\.\d{3})$", summary, re.MULTILINE))
    assert sorted(weights) == domains and all(0.1 <= float(w) <= 2 for w in weights.values())
    assert re.search(r"^target loss: \d+\.\d{3} \(dwm-valid loss", summary, re.MULTILINE)
    for path in (run / "checkpoints", run / "tensorboard" / "metrics.jsonl", run / "analysis" / "domain_weights.png",
                 run / "analysis" / "weight_histograms.png", run / "summary.md"):
        assert path.exists() and str(path) in summary
    assert f"--logdir {run / 'tensorboard'}" in summary
