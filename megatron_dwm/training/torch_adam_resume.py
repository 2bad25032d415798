"""Resuming megatron-core's DistributedOptimizer over torch's Adam, its fallback without Apex or
Transformer Engine (on the CPU): two narrowly-scoped adaptations around megatron-core's load.

With Apex's or Transformer Engine's FusedAdam, Adam's step count lives in each parameter group and
megatron-core restores it from the checkpoint's groups. torch's Adam keeps it per parameter, as a
0-dim tensor in each parameter's state, and megatron-core's fallback (``HAVE_APEX_OR_TE`` false in
``megatron.core.optimizer.distrib_optimizer``) gets it wrong in three ways:

1. ``DistributedOptimizer.state_dict()`` asserts that every parameter's state holds one step count,
   and building the sharded state dict to load into calls it: an optimizer that has not stepped
   (a fresh run about to resume) has no state, so the assertion fails. :func:`prepare_for_load`
   gives it megatron-core's own dummy state first (``_init_optimizer_states_with_dummy_values``: a
   step on zero gradients; every value it writes is then overwritten by the checkpoint's).
2. ``load_state_dict`` puts *one* step tensor into every parameter's state; torch's Adam increments
   its parameter's step in place, so each optimizer step after the resume adds the number of
   parameters to it, and every parameter but the first is bias-corrected with a wrong count.
3. The "dp_reshardable" format keeps ``step`` as a non-persistent object (it belongs to the groups),
   so loading the bucket state copies the step count the optimizer had *before* the load over the
   checkpoint's.

:func:`restore_adam_steps`, after the load, gives each parameter its own step tensor holding the
checkpoint's count (megatron-core has put it into the groups). With both, N + N resumed iterations
equal 2N uninterrupted ones bit for bit (tests/training/test_exact_resume.py, "tp1-dp2-distopt").
On a GPU with Apex or Transformer Engine both functions do nothing.
"""

from __future__ import annotations

import torch
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer import distrib_optimizer as megatron_distrib_optimizer

from megatron_dwm.training.build import distributed_optimizer


def _torch_adam_distributed_optimizer(optimizer: MegatronOptimizer):
    """The DistributedOptimizer in `optimizer` when it runs megatron-core's torch-Adam fallback, else None."""
    if megatron_distrib_optimizer.HAVE_APEX_OR_TE:
        return None
    return distributed_optimizer(optimizer)


def prepare_for_load(optimizer: MegatronOptimizer) -> None:
    """Before building the sharded state dict a checkpoint is loaded into: an optimizer without
    Adam state gets megatron-core's dummy state (see the module's docstring, 1)."""
    distributed = _torch_adam_distributed_optimizer(optimizer)
    if distributed is not None and not distributed.optimizer.state:
        distributed._init_optimizer_states_with_dummy_values()


def restore_adam_steps(optimizer: MegatronOptimizer) -> None:
    """After megatron-core's load: each parameter's own step tensor, with the checkpoint's count
    (see the module's docstring, 2 and 3)."""
    distributed = _torch_adam_distributed_optimizer(optimizer)
    if distributed is None:
        return
    inner = distributed.optimizer
    for group in inner.param_groups:
        if "step" not in group:
            continue
        on_device = group.get("capturable") or group.get("fused")  # where torch's Adam keeps the count
        for param in group["params"]:
            if param in inner.state:
                inner.state[param]["step"] = torch.tensor(float(group["step"]), dtype=torch.float32,
                                                          device=param.device if on_device else "cpu")
