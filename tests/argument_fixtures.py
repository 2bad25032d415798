"""Fixtures of the argument tests: a process of its own, and the flags that name a test corpus."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """A process of its own, whatever launched the tests: rank 0, under no launcher."""
    for variable in ("RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def data_flags(corpus) -> list[str]:
    return ["--dwm-disable", "--data-path", *corpus["data_path"], "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", str(corpus["tokenizer"])]
