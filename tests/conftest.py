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


# `make test` runs `pytest -n 2 --dist loadfile`: pytest-xdist hands whole modules to its two workers,
# by default those with the most tests first. The slowest modules have few tests, so they came last
# and one worker finished them alone while the other had nothing left to run. These modules go first
# instead, longest first, and the short ones fill in at the end; the others follow in xdist's order.
# The seconds (CPU time of each module run alone, on a shared 2-core machine) only set the order: a
# module missing here, or a figure out of date, changes when a module runs, never what it tests.
SLOW_MODULES = {
    "tests/dwm/test_noise_down_weighting.py": 110,
    "tests/training/test_exact_resume.py": 85,
    "tests/training/test_scale_features.py": 80,
    "tests/training/test_demo_training.py": 70,
    "tests/test_convert_smollm2.py": 65,
    "tests/test_gpu_check.py": 60,
    "tests/bench/test_efficacy_lab.py": 55,
    "tests/test_evaluate.py": 52,
    "tests/training/test_dwm_ranks.py": 52,
    "tests/training/test_preloaded.py": 45,
    "tests/test_model_parallel_equivalence.py": 38,
}


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with SLOW_MODULES first (pytest-xdist's hook; ignored without xdist)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SlowestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            # the slowest module left (the first in xdist's order among equals) to the queue's head
            slowest = max(self.workqueue, key=lambda module: SLOW_MODULES.get(module, 0))
            self.workqueue.move_to_end(slowest, last=False)
            super()._assign_work_unit(node)

    return SlowestFirst(config, log)
