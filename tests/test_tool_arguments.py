"""The tools refuse bad inputs with one argparse error (exit code 2) naming the flag or file, before
any work and without a traceback; nothing is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_arguments_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refused(tool, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        tool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def convert():
    return _tool("convert_checkpoint")


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    """Looks like a Hugging Face Llama directory (a config.json and a weights file)."""
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 176,
        "num_attention_heads": 4, "vocab_size": 100}))
    (directory / "model.safetensors").write_bytes(b"")
    return directory


@pytest.mark.parametrize("content", ["notes", "hf"])
def test_megatron_to_hf_refuses_a_directory_that_is_no_checkpoint(convert, content, hf_dir, tmp_path, capsys):
    load = hf_dir if content == "hf" else tmp_path / "notes"
    if content == "notes":
        load.mkdir()
        (load / "README.txt").write_text("not a checkpoint")
    save = tmp_path / "out"
    err = _refused(convert, ["megatron-to-hf", "--load-dir", str(load), "--save-dir", str(save)], capsys)
    assert f"--load-dir {load} is not a readable megatron-dwm checkpoint: " in err
    assert err.count("\n") <= 2  # argparse's one-line usage, then the error
    assert not save.exists() and not (tmp_path / ".out.incomplete").exists()


@pytest.mark.parametrize("config,message", [
    ("{not json", "JSONDecodeError"),
    ('{"model_type": "mistral"}', "expected a Llama config.json, got model_type='mistral'"),
    ('{"model_type": "llama"}', "KeyError: 'num_attention_heads'"),
])
def test_hf_to_megatron_refuses_a_config_it_cannot_read(convert, config, message, hf_dir, tmp_path, capsys):
    (hf_dir / "config.json").write_text(config)
    err = _refused(convert, ["hf-to-megatron", "--load-dir", str(hf_dir), "--save-dir", str(tmp_path / "out")],
                   capsys)
    assert f"--load-dir {hf_dir}: {hf_dir / 'config.json'} is not a Llama config.json the converter reads" in err
    assert message in err


@pytest.mark.parametrize("flag", ["--make-vocab-size-divisible-by", "--target-tensor-parallel-size"])
def test_hf_to_megatron_refuses_a_zero_size(convert, flag, hf_dir, tmp_path, capsys):
    err = _refused(convert, ["hf-to-megatron", "--load-dir", str(hf_dir), "--save-dir", str(tmp_path / "out"),
                             flag, "0"], capsys)
    assert f"{flag} 0 must be >= 1" in err


@pytest.mark.parametrize("flags,message", [
    (["--limit", "0"], "--limit 0.0 must be a finite number > 0"),
    (["--limit", "nan"], "--limit nan must be a finite number > 0"),
    (["--limit", "inf"], "--limit inf must be a finite number > 0"),
    (["--bootstrap-iters", "-1"], "--bootstrap-iters -1 must be >= 0"),
    (["--batch-size", "0"], "--batch-size 0 must be 'auto' or an integer >= 1"),
    (["--batch-size", "many"], "--batch-size many must be 'auto' or an integer >= 1"),
])
def test_evaluate_refuses_invalid_numbers(flags, message, hf_dir, capsys):
    err = _refused(_tool("evaluate"), ["--load-dir", str(hf_dir), "--device", "cpu", *flags], capsys)
    assert message in err


def test_analyze_dwm_refuses_zero_bins(tmp_path, capsys):
    err = _refused(_tool("analyze_dwm"), [str(tmp_path), "--bins", "0"], capsys)
    assert "--bins 0 must be >= 1" in err
    assert not (tmp_path / "analysis").exists()
