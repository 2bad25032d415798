"""The GPU check's CPU rehearsal (`bench/gpu_check.py --cpu-smoke`): every part runs end to end with
tiny sizes, the report has the structure docs/performance.md pastes from, and a part that fails is
reported while the others still run. Also the random-token corpus the training part makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
from gpu_check import FOUR_RUNS, PARTS, TRAIN_MODES  # noqa: E402
from random_corpus import SPECIAL_TOKENS, make_random_corpus  # noqa: E402

MS = "elapsed time per iteration (ms)"


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_part(tmp_path, monkeypatch, capsys):
    # in this process, which has imported the kit already (a fresh interpreter would import torch and
    # megatron-core again); its parts run their sub-processes as from the command line
    monkeypatch.delenv("MEGATRON_DWM_TEST_DEVICE", raising=False)
    monkeypatch.chdir(REPO)
    status = gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)])
    output = capsys.readouterr()
    assert status == 0, output.out[-3000:] + output.err[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == "cpu-smoke"
    assert list(report["parts"]) == list(PARTS)
    assert all(part["status"] == "ok" and part["seconds"] >= 0 for part in report["parts"].values())

    environment = report["parts"]["environment"]
    assert environment["machine"] and environment["cpus"] >= 1
    assert {"torch", "triton", "megatron-core", "transformer-engine"} <= set(environment["versions"])
    assert environment["versions"]["megatron-core"].startswith("0.19")

    tests = report["parts"]["kernel tests"]
    assert tests["device"] == "CPU (Triton's interpreter)"
    assert tests["passed"] >= 3 and tests["failed"] == tests["errors"] == 0

    (kernel,) = report["parts"]["loss kernel"]["runs"]
    methods = {(row["mbs"], row["method"]) for row in kernel["rows"]}
    assert methods == {(mbs, method) for mbs in (1, 2)
                       for method in ("fused", "mcore", "fused loss-only", "mcore loss-only")}
    assert all(row["ms"] > 0 and row["GB/s"] > 0 for row in kernel["rows"])
    # fused against megatron-core on the same inputs, within the kernel tests' bf16 tolerances
    assert [check["mbs"] for check in kernel["checks"]] == [1, 2]
    for check in kernel["checks"]:
        assert check["ok"] and check["per-sample loss"] <= 1e-5 and check["gradient"] <= 1e-2, check

    training = report["parts"]["training"]
    rows = {(row["mode"], row["loss kernel"]): row for row in training["rows"]}
    assert set(rows) == {(TRAIN_MODES[mode], kernel) for mode, kernel in FOUR_RUNS}
    for (mode, kernel), row in rows.items():
        assert "error" not in row, row
        assert row["tokens per second"] > 0 and row[MS] > 0
        assert row["vs DWM off"] == pytest.approx(row[MS] / rows[(TRAIN_MODES["off"], kernel)][MS])
    off_fused, off_torch = rows[(TRAIN_MODES["off"], "fused")], rows[(TRAIN_MODES["off"], "torch")]
    assert off_fused["fused speed-up vs torch"] == pytest.approx(off_torch[MS] / off_fused[MS])
    # the same data, seed and steps: DWM off gives the same loss with either kernel
    assert off_fused["lm loss (last)"] == pytest.approx(off_torch["lm loss (last)"], rel=1e-4)

    markdown = (tmp_path / "report.md").read_text()
    for heading in ("# GPU check (cpu-smoke)", "## Environment", "## Kernel tests", "## Loss kernel", "## Training"):
        assert heading in markdown
    assert all(f"| {part} | ok |" in markdown for part in PARTS)
    assert "iteration" in (tmp_path / "log.txt").read_text()  # the runs' own output


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken(check):
        raise OSError("no space left on device")

    def failing_check(check):
        return {"ok": False, "runs": []}

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "kernel tests", broken)
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "loss kernel", failing_check)
    status = gpu_check.main(["--cpu-smoke", "--out", str(tmp_path), "--parts", "loss kernel", "kernel tests",
                             "environment"])
    assert status == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["parts"]) == ["environment", "kernel tests", "loss kernel"]  # in the kit's order
    assert report["parts"]["environment"]["status"] == "ok"
    assert report["parts"]["kernel tests"]["status"] == "FAILED"
    assert report["parts"]["kernel tests"]["error"] == "OSError: no space left on device"
    assert report["parts"]["loss kernel"]["status"] == "FAILED"
    assert "FAILED: kernel tests, loss kernel" in capsys.readouterr().out
    markdown = (tmp_path / "report.md").read_text()
    assert "| kernel tests | FAILED |" in markdown and "| environment | ok |" in markdown
    assert "**kernel tests: OSError: no space left on device**" in markdown


def test_random_corpus_is_read_by_the_tokenizer_and_the_datasets(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_dwm.data.context_target_reader import ContextTargetDataset
    from megatron_dwm.data.tokenizer import build_tokenizer

    corpus = make_random_corpus(tmp_path, vocab_size=300, tokens_per_domain=5000, valid_examples=6,
                                context_length=20)
    tokenizer = build_tokenizer("HuggingFaceTokenizer", corpus.tokenizer)
    assert tokenizer.vocab_size == 300
    assert (tokenizer.bos, tokenizer.eos) == (SPECIAL_TOKENS.index("<s>"), SPECIAL_TOKENS.index("</s>"))
    for prefix in corpus.train_prefixes:
        dataset = IndexedDataset(prefix)
        tokens = numpy.concatenate([dataset[i] for i in range(len(dataset))])
        assert tokens.size >= 5000
        assert tokens.min() >= 2 and tokens.max() < 300  # no <unk>/<s> and nothing outside the vocabulary
        assert all(dataset[i][-1] == tokenizer.eos for i in range(len(dataset)))  # one document each
    valid = ContextTargetDataset(corpus.valid_prefix, seq_length=32)
    assert len(valid) == 6
    assert valid[0]["loss_mask"].sum() >= 1
    flags = corpus.flags()
    assert flags[flags.index("--tokenizer-model") + 1] == corpus.tokenizer
    assert flags[flags.index("--dwm-valid-data-path") + 1] == corpus.valid_prefix
