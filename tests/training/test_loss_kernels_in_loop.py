"""The training step gives the same per-sample losses and gradients with the fused Triton kernel
(Triton's interpreter on CPU) as with megatron-core's labels= path, at TP=1 and TP=2."""

from __future__ import annotations

import pytest
import torch

from megatron_dwm.model.presets import get_preset
from tests.distributed import run_distributed

ARCH = get_preset("tiny").with_overrides(vocab_size=256)


def _step(rank: int, world_size: int, kernel: str):
    from megatron_dwm.training.loss import WeightedLoss
    from megatron_dwm.training.step import run_global_batch
    from tests.megatron_model import build_on_rank, wrap_ddp

    model = wrap_ddp(build_on_rank(ARCH, 256, tp=world_size, seq_length=32))
    generator = torch.Generator().manual_seed(0)
    microbatches, weights = [], []
    for _ in range(2):
        tokens = torch.randint(0, 256, (2, 33), generator=generator)
        loss_mask = (torch.rand(2, 32, generator=generator) > 0.2).float()
        microbatches.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask,
                             "position_ids": torch.arange(32).expand(2, 32), "domain_id": torch.tensor([0, 1])})
        weights.append(torch.rand(2, generator=generator) * 2)
    model.zero_grad_buffer()
    losses, _ = run_global_batch(model, microbatches, weights, WeightedLoss(kernel, torch.device("cpu")))
    grads = {name: param.main_grad.numpy().copy() for name, param in model.module.named_parameters()}
    return losses.numpy().copy(), grads  # numpy: pickled by value across processes


@pytest.mark.parametrize("tp", [1, 2])
def test_fused_kernel_matches_megatron_labels_path_in_the_training_step(tp):
    reference = run_distributed(_step, tp, args=("torch",))
    fused = run_distributed(_step, tp, args=("fused",))
    for (ref_losses, ref_grads), (losses, grads) in zip(reference, fused):
        torch.testing.assert_close(torch.from_numpy(losses), torch.from_numpy(ref_losses), rtol=1e-5, atol=1e-5)
        assert ref_grads.keys() == grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(torch.from_numpy(grads[name]), torch.from_numpy(ref_grads[name]),
                                       rtol=1e-4, atol=1e-6, msg=name)
