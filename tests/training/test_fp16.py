"""--fp16, run on the CPU: fp16 parameters and compute, fp32 main weights in megatron-core's
mixed-precision optimizer, the loss scaled by its DynamicGradScaler (or a constant --loss-scale).

- A DWM run trains; its logged loss scale follows the scaler's rule (written out here) step by
  step: overflows from a large initial scale are skipped and back it off (after --hysteresis of
  them), runs of --loss-scale-window good steps double it; a skipped step neither moves the
  learning-rate schedule nor teaches the DWM.
- The DWM's validation gradient v is not multiplied by the loss scale S: it equals the same pass
  at S = 1 and the fp32 model's v; where S makes it overflow, the pass is redone at a lower scale.
  The finite difference's forward passes see unscaled losses, and the hypergradient agrees with
  fp32's."""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from megatron_dwm.training.metrics import read_metrics
from tests.distributed import run_distributed
from tests.training.corpus import training_flags
from tests.training.launch import run_job

ITERATIONS = 12
INITIAL_SCALE, WINDOW, HYSTERESIS = 2.0**24, 2, 2  # 2**24 overflows the tiny model's fp16 gradients


def dynamic_scales(initial: float, window: int, hysteresis: int, overflows: list[bool]) -> list[float]:
    """megatron-core's DynamicGradScaler (growth factor 2, backoff 0.5, minimum 1, as Megatron-LM builds
    it): its scale after each step, given which steps overflowed."""
    scale, good_steps, tracker, scales = initial, 0, hysteresis, []
    for overflow in overflows:
        if overflow:
            good_steps, tracker = 0, tracker - 1
            if tracker <= 0:
                scale = max(scale / 2, 1.0)
        else:
            good_steps += 1
            if good_steps == window:
                good_steps, tracker, scale = 0, hysteresis, scale * 2
        scales.append(scale)
    return scales


def test_fp16_dwm_run_trains_with_megatron_core_dynamic_loss_scaling(corpus, tmp_path):
    flags = training_flags(corpus, "--fp16", "--initial-loss-scale", str(INITIAL_SCALE), "--loss-scale-window",
                           str(WINDOW), "--hysteresis", str(HYSTERESIS), "--train-iters", str(ITERATIONS),
                           "--dwm-stages", "1", "--dwm-update-iters", str(ITERATIONS),  # the DWM learns all along
                           "--metrics-file", str(tmp_path / "run" / "metrics.jsonl"), dwm=True)
    job = run_job(flags, 1, tmp_path / "logs")
    records = {r["iteration"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lm loss" in r}
    samples = {r["iteration"]: r for r in map(json.loads, (tmp_path / "run" / "dwm_samples.jsonl").read_text()
                                              .splitlines())}
    iterations = list(range(1, ITERATIONS + 1))
    overflows = [bool(records[i]["number of skipped iterations"]) for i in iterations]
    scales = [records[i]["loss scale"] for i in iterations]
    print("loss scale by iteration:", scales, "overflows:", overflows)
    assert scales == dynamic_scales(INITIAL_SCALE, WINDOW, HYSTERESIS, overflows)
    assert overflows[0] and scales[0] == INITIAL_SCALE  # the first overflow waits for the hysteresis
    assert any(b < a for a, b in zip(scales, scales[1:])) and any(b > a for a, b in zip(scales, scales[1:]))
    assert "is NaN/Inf; update skipped" not in job.output()  # an overflow is the scaler's signal, not a fault

    for i, overflow in zip(iterations, overflows):
        record = records[i]
        assert math.isnan(record["grad norm"]) == overflow
        if i > 1 and overflow:  # no step: the learning rate does not move either
            assert record["learning rate"] == records[i - 1]["learning rate"]
        # the DWM learns from the steps taken, and from those only
        assert ("hypergradient" in samples[i]) == (not overflow), i
    trained = [records[i]["lm loss"] for i, overflow in zip(iterations, overflows) if not overflow]
    print("lm loss of the steps taken:", trained)
    assert trained[-1] < trained[0] - 0.1  # measured 0.22 in three steps (the first is at the warm-up's lr 0)


# -- the DWM's validation gradient under a loss scale ------------------------------------------------
VOCAB, SEQ, MICRO_BATCH = 256, 33, 2
SCALE = 2.0**12
LR = 1e-3


def _micro_batches(count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    tokens = torch.randint(0, VOCAB, (count, SEQ), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(SEQ - 1)
    loss_mask = (positions[None, :] >= 3 * torch.arange(count)[:, None]).float()
    samples = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask,
               "position_ids": positions.expand(count, -1), "domain_id": torch.arange(count)}
    return [{key: value[i:i + MICRO_BATCH] for key, value in samples.items()} for i in range(0, count, MICRO_BATCH)]


def _outer_steps(rank: int, world_size: int) -> dict[str, dict]:
    """v, the per-sample losses and the hypergradient of one model's weights in fp32 and in fp16 under
    a dynamic scaler at SCALE, a constant scale of 1 and a constant scale that overflows."""
    from megatron.core.distributed import finalize_model_grads

    from megatron_dwm.dwm.hypergradient import finite_difference_hypergradient
    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.model.provider import build_llama_model, llama_transformer_config
    from megatron_dwm.parallel import initialize_parallel
    from megatron_dwm.training.bilevel import MegatronBilevel
    from megatron_dwm.training.build import LossScaling, build_optimizer, wrap_ddp
    from megatron_dwm.training.loss import WeightedLoss

    arch = get_preset("tiny").with_overrides(vocab_size=VOCAB)
    context = initialize_parallel(1, 1, seed=5)
    models = {fp16: build_llama_model(arch, llama_transformer_config(arch, use_cpu_initialization=True, fp16=fp16),
                                      VOCAB, SEQ - 1, pg_collection=context.pg_collection) for fp16 in (False, True)}
    with torch.no_grad():  # the same weights: fp32's, rounded to fp16
        for half, full in zip(models[True].parameters(), models[False].parameters()):
            half.copy_(full)
            full.copy_(half)
    train, valid = _micro_batches(8, 1), _micro_batches(4, 2)
    runs = {"fp32": None, "fp16": LossScaling(initial_loss_scale=SCALE), "fp16 scale 1": LossScaling(loss_scale=1.0),
            "fp16 overflowing scale": LossScaling(loss_scale=2.0**24)}
    results = {}
    for name, scaling in runs.items():
        model = models[scaling is not None]
        ddp = wrap_ddp(model)
        optimizer = build_optimizer(ddp, lr=LR, fp16=scaling is not None, loss_scaling=scaling or LossScaling())
        model.config.finalize_model_grads_func = finalize_model_grads  # as the trainer
        model.config.grad_scale_func = optimizer.scale_loss
        bilevel = MegatronBilevel(ddp, optimizer, WeightedLoss("torch", torch.device("cpu")), train, valid,
                                  direction="grad")
        v = [tensor.float().clone() for tensor in bilevel.validation_gradient()]
        fd = finite_difference_hypergradient(bilevel, LR, 8)
        results[name] = {"v": v, "v scale": bilevel.valid_loss_scale,
                         "optimizer scale": float(optimizer.get_loss_scale()), "losses": bilevel.per_sample_losses(),
                         "hypergradient": fd.hypergradient.double()}
    return results


def _relative(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    squares = sum(float(((a - e) ** 2).sum()) for a, e in zip(actual, expected))
    return math.sqrt(squares / sum(float((e ** 2).sum()) for e in expected))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def test_validation_gradient_under_fp16_is_not_scaled_by_the_loss_scale():
    results = run_distributed(_outer_steps, 1)[0]
    fp32, fp16, one, overflowing = (results[name] for name in ("fp32", "fp16", "fp16 scale 1",
                                                               "fp16 overflowing scale"))
    print({name: (result["v scale"], result["optimizer scale"]) for name, result in results.items()})
    print(f"v: fp16 at {SCALE:g} vs at 1 {_relative(fp16['v'], one['v']):.1e}, "
          f"vs fp32 {_relative(fp16['v'], fp32['v']):.1e}, "
          f"after backing off {_relative(overflowing['v'], fp16['v']):.1e}; "
          f"hypergradient cosine with fp32 {_cosine(fp16['hypergradient'], fp32['hypergradient']):.5f}")
    assert fp16["v scale"] == fp16["optimizer scale"] == SCALE  # v's pass was scaled, and did not overflow
    assert _relative(fp16["v"], one["v"]) < 5e-3  # measured 6e-4 (scale 1 loses the smallest gradients)
    assert _relative(fp16["v"], fp32["v"]) < 5e-3  # measured 8e-4; scaled by SCALE it would be 4095
    # A scale that overflows v is halved until v is finite; the optimizer's own scale stays as it was.
    assert 1.0 < overflowing["v scale"] < overflowing["optimizer scale"] == 2.0**24
    assert _relative(overflowing["v"], fp16["v"]) < 1e-3  # measured 5e-5
    # the finite difference's forward passes see the losses themselves (about 5.5), not S times them
    torch.testing.assert_close(fp16["losses"], fp32["losses"], rtol=0, atol=2e-3)
    g16, g32 = fp16["hypergradient"], fp32["hypergradient"]
    assert _cosine(g16, g32) > 0.99  # measured 0.9991
    assert _cosine(g32.roll(1), g32) < 0.5  # the bound would see hypergradients on the wrong samples
