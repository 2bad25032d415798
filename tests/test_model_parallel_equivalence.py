"""TP=2, PP=2 and TP=2 x PP=2 (gloo) give the same per-token losses, gradients and loss curve as
TP=1, PP=1 from identical weights. Weights travel through a distributed checkpoint written at
TP=1 and resharded on load; gradients come back the same way (written as a checkpoint from the
parallel run, read into a TP=1 model), so the comparison covers megatron-core's own layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed import run_distributed

VOCAB = 256
SEQ = 33
MICRO_BATCH = 2
GLOBAL_BATCH = 4
TRAIN_STEPS = 3


def _arch():
    from megatron_dwm.model.presets import get_preset

    return get_preset("tiny").with_overrides(vocab_size=VOCAB)


def _tokens(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(100 + step))


def _optimizer(model):
    from megatron_dwm.training.build import build_optimizer

    return build_optimizer(model, lr=3e-3, weight_decay=0.01, clip_grad=1.0)


def _run(rank, world_size, tp, pp, weights_dir, grads_dir, save_initial):
    from megatron_dwm.training.checkpointing import load_checkpoint, save_checkpoint
    from tests.megatron_model import build_on_rank, forward_backward, wrap_ddp

    arch = _arch()
    model = build_on_rank(arch, VOCAB, tp=tp, pp=pp, seq_length=SEQ)
    if save_initial:
        save_checkpoint(weights_dir, 0, model, arch)
    else:
        load_checkpoint(weights_dir, model)
    ddp = wrap_ddp(model)

    # 1. per-token losses and gradients of one global batch
    per_token = forward_backward(ddp, _tokens(0), MICRO_BATCH)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.main_grad)
    save_checkpoint(grads_dir, 0, model, arch)

    # 2. a short training run from the same weights
    load_checkpoint(weights_dir, model)
    ddp.zero_grad_buffer()
    optimizer = _optimizer(ddp)
    curve = []
    for step in range(TRAIN_STEPS):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        losses = forward_backward(ddp, _tokens(1), MICRO_BATCH)  # one batch, so the loss must fall
        _, grad_norm, _ = optimizer.step()
        curve.append((None if losses is None else losses.mean().item(), grad_norm))
    return {"per_token": per_token, "curve": curve}


def _read_full(rank, world_size, checkpoint):
    from megatron_dwm.training.checkpointing import load_checkpoint
    from tests.megatron_model import build_on_rank

    model = build_on_rank(_arch(), VOCAB, seq_length=SEQ)
    load_checkpoint(checkpoint, model)
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    result = run_distributed(_run, 1, args=(1, 1, str(root / "weights"), str(root / "grads"), True))[0]
    result["weights"] = root / "weights"
    result["grads"] = run_distributed(_read_full, 1, args=(str(root / "grads"),))[0]
    return result


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_parallel_layout_matches_single_rank(reference, tmp_path, tp, pp):
    grads_dir = tmp_path / "grads"
    results = run_distributed(_run, tp * pp, args=(tp, pp, str(reference["weights"]), str(grads_dir), False))
    last_stage = [r for r in results if r["per_token"] is not None]
    assert len(last_stage) == tp  # every TP rank of the last stage holds the full per-token losses
    for result in last_stage:
        torch.testing.assert_close(result["per_token"], reference["per_token"], rtol=0, atol=2e-5)

    grads = run_distributed(_read_full, 1, args=(str(grads_dir),))[0]
    assert sorted(grads) == sorted(reference["grads"])
    for name, expected in reference["grads"].items():
        assert expected.abs().max() > 0, name
        error = (grads[name] - expected).norm() / expected.norm()
        assert error < 1e-5, f"{name}: relative gradient error {error:.2e}"

    ref_losses = [loss for loss, _ in reference["curve"]]
    ref_norms = [norm for _, norm in reference["curve"]]
    for result in results:
        norms = [norm for _, norm in result["curve"]]
        assert norms == pytest.approx(ref_norms, rel=1e-5)
    for result in last_stage:
        losses = [loss for loss, _ in result["curve"]]
        assert losses == pytest.approx(ref_losses, abs=2e-5)
    assert ref_losses[-1] < ref_losses[0]  # it is a training run, not a constant
