"""The training step gives the same per-sample losses and gradients with the fused Triton kernel
(Triton's interpreter on CPU) as with megatron-core's labels= path, at TP=1 and TP=2, and in fp16
under a loss scale (which the kernel must apply before it writes the fp16 gradient)."""

from __future__ import annotations

import pytest
import torch

from megatron_dwm.model.presets import get_preset
from tests.distributed import run_distributed

ARCH = get_preset("tiny").with_overrides(vocab_size=256)


def _step(rank: int, world_size: int, kernel: str, loss_scale: float | None = None):
    """`loss_scale`: an fp16 model, its loss multiplied by this before backward (the gradients divided after)."""
    from megatron_dwm.training.loss import WeightedLoss
    from megatron_dwm.training.step import run_global_batch
    from tests.megatron_model import build_on_rank, wrap_ddp

    model = wrap_ddp(build_on_rank(ARCH, 256, tp=world_size, seq_length=32, fp16=loss_scale is not None))
    if loss_scale is not None:
        model.config.grad_scale_func = lambda loss: loss * loss_scale
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
    grads = {name: (param.main_grad / (loss_scale or 1.0)).numpy().copy()
             for name, param in model.module.named_parameters()}
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


def test_fused_kernel_in_fp16_applies_the_loss_scale_before_writing_the_gradient():
    """Unscaled, the fp16 gradient the kernel writes would lose its smallest values (measured: max
    relative error 4e-4 against the labels= path, which scales in fp32); scaled, 5e-6."""
    reference = run_distributed(_step, 1, args=("torch", 2.0**12))[0]
    fused = run_distributed(_step, 1, args=("fused", 2.0**12))[0]
    torch.testing.assert_close(torch.from_numpy(fused[0]), torch.from_numpy(reference[0]), rtol=1e-5, atol=1e-5)
    for name, expected in reference[1].items():
        error = abs(fused[1][name] - expected).max() / abs(expected).max()
        assert error < 5e-5, f"{name}: {error:.1e}"
