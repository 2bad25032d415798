"""Shared pytest set-up: quiet, deterministic CPU runs."""

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU the Triton kernels run in Triton's interpreter. It must be chosen before anything
# (a data or model test) imports triton, so it is set here, for the whole session.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, object]:
    """A small synthetic corpus in Megatron's formats (see tests/training/corpus.py)."""
    from tests.training.corpus import make_corpus

    return make_corpus(str(tmp_path_factory.mktemp("corpus")))
