"""The training step gives the same per-sample losses and gradients with the fused Triton kernel
(Triton's interpreter on CPU) as with megatron-core's labels= path, at TP=1 and TP=2, and in fp16
under a loss scale (which the kernel must apply before it writes the fp16 gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_dwm.model.presets import get_preset
from tests.distributed import run_distributed

ARCH = get_preset("tiny").with_overrides(vocab_size=256)


def _step(rank: int, world_size: int, kernel: str, loss_scale: float | None = None, weight_scale: float = 1.0):
    """`loss_scale`: an fp16 model, its loss multiplied by this before backward (the gradients divided after);
    `weight_scale` multiplies the samples' weights (0 to 2).
    Returns the per-sample losses, the parameters' gradients and the gradient that reached each micro
    batch's logits (the output layer's output), as the backward pass saw it (under the loss scale)."""
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
        weights.append(torch.rand(2, generator=generator) * 2 * weight_scale)
    logits_grads = []

    def capture_logits_grad(_module, _inputs, output):
        output[0].register_hook(lambda grad: logits_grads.append(grad.float().numpy().copy()))

    model.module.output_layer.register_forward_hook(capture_logits_grad)
    model.zero_grad_buffer()
    losses, _ = run_global_batch(model, microbatches, weights, WeightedLoss(kernel, torch.device("cpu")))
    grads = {name: (param.main_grad / (loss_scale or 1.0)).numpy().copy()
             for name, param in model.module.named_parameters()}
    return losses.numpy().copy(), grads, logits_grads  # numpy: pickled by value across processes


@pytest.mark.parametrize("tp", [1, 2])
def test_fused_kernel_matches_megatron_labels_path_in_the_training_step(tp):
    reference = run_distributed(_step, tp, args=("torch",))
    fused = run_distributed(_step, tp, args=("fused",))
    for (ref_losses, ref_grads, _), (losses, grads, _) in zip(reference, fused):
        torch.testing.assert_close(torch.from_numpy(losses), torch.from_numpy(ref_losses), rtol=1e-5, atol=1e-5)
        assert ref_grads.keys() == grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(torch.from_numpy(grads[name]), torch.from_numpy(ref_grads[name]),
                                       rtol=1e-4, atol=1e-6, msg=name)


def _fp16_ulps_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise |a - b| in units in the last place of fp16 at the larger magnitude (a, b: fp16 values)."""
    return np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)


def test_fused_kernel_in_fp16_applies_the_loss_scale_before_writing_the_gradient():
    """The fp16 gradient each micro batch's logits receive, from the kernel and from the labels= path
    (which scales in fp32 and then casts), must be the same fp16 rounding of the scaled gradient: at
    most one unit in the last place apart, element by element. Written unscaled and scaled after, the
    gradient's smallest values (the softmax's tail, below fp16's normal range) would lose their
    digits: the check is shown to reject that. The samples' weights are divided by 64 to bring the
    per-token gradients of this 4-sample batch down to where a real batch of thousands of tokens puts
    them (unscaled, 1e-7 to 1e-5: fp16's subnormal range; measured: 75% of the elements then move
    by 2 to 128 units, the kernel's by at most 1). The parameters' gradients, which the fp16 matrix
    products downstream round differently on different CPUs (measured: at most 5e-6 of the largest
    value on an Intel Xeon with the weights undivided, 7e-4 on an AMD EPYC), agree to a few fp16 roundings (4e-3)."""
    scale = 2.0**12
    reference = run_distributed(_step, 1, args=("torch", scale, 1 / 64))[0]
    fused = run_distributed(_step, 1, args=("fused", scale, 1 / 64))[0]
    torch.testing.assert_close(torch.from_numpy(fused[0]), torch.from_numpy(reference[0]), rtol=1e-5, atol=1e-5)
    assert len(fused[2]) == len(reference[2]) == 2  # one logits gradient per micro batch
    for ours, theirs in zip(fused[2], reference[2]):
        assert np.any(theirs != 0) and np.abs(theirs).max() < 2.0**15  # scaled, finite, in fp16's range
        assert _fp16_ulps_apart(ours, theirs).max() <= 1
        unscaled_then_scaled = (theirs / scale).astype(np.float16).astype(np.float32) * scale
        assert _fp16_ulps_apart(unscaled_then_scaled, theirs).max() > 16  # the check sees a missing scale
    for name, expected in reference[1].items():
        error = abs(fused[1][name] - expected).max() / abs(expected).max()
        assert error < 4e-3, f"{name}: {error:.1e}"
