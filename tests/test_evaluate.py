"""Export and downstream evaluation: a tiny Llama trained briefly in a one-rank world is saved as
a megatron-dwm checkpoint, exported to Hugging Face with tools/convert_checkpoint.py (tokenizer
included), checked against the megatron model's logits in transformers, and evaluated with
tools/evaluate.py (lm-eval) on the local tasks of tests/eval_tasks, offline, on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.distributed import run_distributed
from tests.training.corpus import VOCAB, write_tokenizer
from tests.training.launch import run_job

try:
    import lm_eval  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as exc:  # pragma: no cover - the dev extras install these
    pytest.skip(f"evaluation tests need the dev extras (lm-eval, transformers): {exc}", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "tests" / "eval_tasks"
BANDS = 3  # the word bands of tests/eval_tasks/synthetic.jsonl: w0-w65, w66-w131, w132-w197


def _load_evaluate():
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate_tool = _load_evaluate()


def _band_batch(generator: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """Sequences of words drawn from one band each, as in the local tasks."""
    band = torch.randint(0, BANDS, (batch, 1), generator=generator)
    return band * 66 + torch.randint(0, 66, (batch, length), generator=generator)


def _train_and_save(rank: int, world_size: int, root: str, probe: torch.Tensor) -> torch.Tensor:
    from megatron_dwm.model.presets import PRESETS
    from megatron_dwm.model.provider import padded_vocab_size
    from megatron_dwm.training.checkpointing import save_checkpoint
    from tests.megatron_model import build_on_rank, full_logits

    torch.manual_seed(0)
    arch = PRESETS["tiny"].with_overrides(vocab_size=VOCAB + 2)
    model = build_on_rank(arch, padded_vocab_size(arch.vocab_size, 1), seq_length=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        tokens = _band_batch(generator, 8, 33)
        positions = torch.arange(32).expand(8, 32)
        loss = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(root, 30, model, arch)
    model.eval()
    return full_logits(model, probe)[..., : arch.vocab_size]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    (base / "tokenizer").mkdir()
    tokenizer = write_tokenizer(str(base / "tokenizer" / "tokenizer.json"))
    probe = _band_batch(torch.Generator().manual_seed(1), 2, 24)
    [logits] = run_distributed(_train_and_save, world_size=1, args=(str(base / "ckpt"), probe))
    export = base / "hf"
    # `python tools/convert_checkpoint.py megatron-to-hf ...`, forked from the preloaded server (no import again)
    run_job(["megatron-to-hf", "--load-dir", str(base / "ckpt"), "--save-dir", str(export), "--tokenizer-model",
             tokenizer], 1, base / "export-logs", script=REPO / "tools" / "convert_checkpoint.py")
    return {"base": base, "ckpt": base / "ckpt", "tokenizer": tokenizer, "export": export, "probe": probe,
            "logits": logits}


def test_export_loads_in_transformers_with_the_megatron_logits(trained):
    export = trained["export"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in export.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(trained["probe"]).logits
    print(f"max |logit diff| megatron vs transformers: {(logits - trained['logits']).abs().max().item():.2e} "
          f"(logit scale {logits.abs().max().item():.1f})")
    torch.testing.assert_close(logits, trained["logits"], rtol=0, atol=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer("w3 w70 w140")["input_ids"] == [3, 70, 140]
    assert tokenizer.eos_token_id == VOCAB + 1
    inputs = tokenizer("w3 w5 w7 w11", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert tokenizer.decode(out[0, :4]) == "w3 w5 w7 w11"


def _rows_by_key(rows):
    return {(r["task"], r["n_shot"], r["metric"]): r for r in rows}


def test_evaluate_runs_the_local_tasks_zero_and_few_shot(trained, tmp_path, capsys):
    output = tmp_path / "results" / "eval"
    rows = evaluate_tool.main([
        "--load-dir", str(trained["export"]), "--tasks", "dwm_synthetic_choice,dwm_synthetic_lambada",
        "--include-path", str(TASKS_DIR), "--num-fewshot", "0", "2", "--limit", "8", "--device", "cpu",
        "--batch-size", "4", "--bootstrap-iters", "100", "--output", str(output)])
    printed = capsys.readouterr().out
    assert "| task | n-shot | metric | value | stderr |" in printed
    by_key = _rows_by_key(rows)
    for shots in (0, 2):
        for metric in ("acc", "acc_norm"):
            value = by_key[("dwm_synthetic_choice", shots, metric)]["value"]
            assert 0.0 <= value <= 1.0
        assert 0.0 <= by_key[("dwm_synthetic_lambada", shots, "acc")]["value"] <= 1.0
        perplexity = by_key[("dwm_synthetic_lambada", shots, "perplexity")]["value"]
        assert 1.0 <= perplexity and math.isfinite(perplexity)
    # Zero-shot, the briefly trained model beats uniform guessing: the last word's perplexity is
    # below the vocabulary size and it prefers the word from the context's band over the other two.
    # (Few-shot prompts mix bands and run past the 32 positions it was trained on.)
    assert by_key[("dwm_synthetic_lambada", 0, "perplexity")]["value"] < VOCAB + 2
    assert by_key[("dwm_synthetic_choice", 0, "acc")]["value"] > 1 / 3

    saved = json.loads((tmp_path / "results" / "eval.json").read_text())
    assert saved["rows"] == rows
    assert set(saved["lm_eval_results"]) == {"0", "2"}
    table = (tmp_path / "results" / "eval.md").read_text()
    assert "| dwm_synthetic_lambada | 2 | perplexity |" in table
    assert not list((tmp_path / "results").glob(".*"))  # no temporary files left behind


def test_evaluate_exports_a_megatron_checkpoint_first(trained, tmp_path):
    export = tmp_path / "export"
    rows = evaluate_tool.main([
        "--load-dir", str(trained["ckpt"]), "--tokenizer-model", trained["tokenizer"], "--export-dir", str(export),
        "--tasks", "dwm_synthetic_lambada", "--include-path", str(TASKS_DIR), "--limit", "4", "--device", "cpu",
        "--bootstrap-iters", "100"])
    assert (export / "config.json").is_file() and (export / "tokenizer_config.json").is_file()
    assert {r["metric"] for r in rows} == {"acc", "perplexity"}


def test_evaluate_reports_bad_inputs(trained, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate_tool.main(["--load-dir", str(tmp_path / "missing")])
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_tool.main(["--load-dir", str(trained["ckpt"])])
    assert "--tokenizer-model" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown lm-eval task.*no_such_task"):
        evaluate_tool.main(["--load-dir", str(trained["export"]), "--tasks", "arc_easy,no_such_task",
                            "--device", "cpu"])
