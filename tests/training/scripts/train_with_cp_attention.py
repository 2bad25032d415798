"""pretrain_dwm.py with a context-parallel attention on the CPU, for tests.

The model's core attention is the test double of tests/context_parallel_attention.py (megatron-core's
local attention over the keys and values of the whole context-parallel group), so the platform's
check that --context-parallel-size > 1 needs Transformer Engine's attention is passed by.

DWM_STATE_DIR   at the end, every rank that holds a copy of the DWM writes its parameters there
                (rank<r>.pt), so a test can tell whether the copies stayed identical
"""

import os
import sys

import torch

from megatron_dwm import platform
from megatron_dwm.model import provider
from megatron_dwm.training import trainer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from tests.context_parallel_attention import with_context_parallel_attention  # noqa: E402

platform.validate_platform_options = lambda context_parallel_size=1: []  # the attention is the test double's

layer_spec = provider.llama_layer_spec
provider.llama_layer_spec = lambda *args, **kwargs: with_context_parallel_attention(layer_spec(*args, **kwargs))

train = trainer.Trainer.train


def train_then_write_dwm(self):
    code = train(self)
    dwm = getattr(self.weighting, "dwm", None)
    if dwm is not None and os.environ.get("DWM_STATE_DIR"):
        torch.save(dwm.model.state_dict(), os.path.join(os.environ["DWM_STATE_DIR"], f"rank{self.context.rank}.pt"))
    return code


trainer.Trainer.train = train_then_write_dwm

import pretrain_dwm  # noqa: E402

sys.exit(pretrain_dwm.main(sys.argv[1:]))
