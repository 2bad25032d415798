"""`--dwm-fd-direction adam`: the preconditioner of DESIGN.md section 4 against a hand
computation from the gradients megatron-core's Adam was given, in fp32 and in bf16 (where Adam
steps fp32 main copies of the bf16 parameters).

After two steps with gradients g1, g2 (no clipping), Adam's second moment is
``v = (1 - b2) (b2 g1^2 + g2^2)`` and ``v_hat = v / (1 - b2^2)``; the preconditioner for a validation
gradient u is ``P = 1 / (sqrt(max(v_hat, u^2)) + eps)`` (the floor is ours, docs/dwm.md). b2 and eps
are not megatron-core's defaults, so a preconditioner that ignored the optimizer's settings, the
bias correction or eps would fail."""

from __future__ import annotations

import pytest
import torch

from tests.distributed import run_distributed

VOCAB, SEQ, MICRO_BATCH, BATCH = 256, 17, 2, 4
BETA2, EPS = 0.99, 1e-3
TOLERANCE = 1e-5  # max relative error of P: fp32 Adam state against a float64 hand computation


def _tokens(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(300 + step))


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: param.main_grad.double().clone() for name, param in model.named_parameters()}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((actual.double() - expected) / expected).abs().max())


def _unstepped_error(optimizer, names, parameters) -> tuple[str, str] | None:
    """(parameter name, message) of the error for a parameter Adam has not stepped yet; None if none."""
    from megatron_dwm.training.bilevel import AdamPreconditioner

    first = next(iter(parameters))
    try:
        AdamPreconditioner(optimizer, names)(parameters[first], torch.ones_like(parameters[first], dtype=torch.float))
    except RuntimeError as error:
        return first, str(error)
    return None


def _two_steps_and_a_validation_gradient(ddp, model, optimizer) -> list[dict[str, torch.Tensor]]:
    """[g1, g2, u]: the gradients of Adam's two steps (no clipping), then a third one, u."""
    from tests.megatron_model import forward_backward

    gradients = []
    for step in range(3):
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        forward_backward(ddp, _tokens(step), MICRO_BATCH)
        gradients.append(_gradients(model))
        if step < 2:
            assert optimizer.step()[0]
    return gradients


def _hand_computations(g1, g2, u) -> dict[str, torch.Tensor]:
    """P by hand, and three wrong variants of it."""
    v_hat = (1 - BETA2) * (BETA2 * g1 ** 2 + g2 ** 2) / (1 - BETA2 ** 2)
    floor = torch.maximum(v_hat, u ** 2).sqrt()
    return {"P": 1 / (floor + EPS),
            "without eps": torch.where(floor > 0, 1 / floor, 1 / EPS),
            "without bias correction": 1 / (torch.maximum(v_hat * (1 - BETA2 ** 2), u ** 2).sqrt() + EPS),
            "without the floor": 1 / (v_hat.sqrt() + EPS),
            "floored": u ** 2 > v_hat}


def _count_steps_per_group(optimizer) -> None:
    """Move Adam's step count from each parameter's state to its group, as Transformer Engine's and
    Apex's FusedAdam (megatron-core's optimizer on GPU) keep it."""
    for megatron_optimizer in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = megatron_optimizer.optimizer
        for group in inner.param_groups:
            group["step"] = inner.state[group["params"][0]]["step"]
            for param in group["params"]:
                inner.state[param].pop("step")


def _case(rank: int, world_size: int, bf16: bool) -> dict:
    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.training.bilevel import AdamPreconditioner
    from megatron_dwm.training.build import build_optimizer
    from tests.megatron_model import build_on_rank, wrap_ddp

    model = build_on_rank(get_preset("tiny").with_overrides(vocab_size=VOCAB), VOCAB, seq_length=SEQ, bf16=bf16)
    ddp = wrap_ddp(model)
    optimizer = build_optimizer(ddp, lr=1e-3, clip_grad=0.0, bf16=bf16, adam_beta2=BETA2, adam_eps=EPS)
    names = {id(param): name for name, param in model.named_parameters()}
    parameters = dict(model.named_parameters())
    result: dict = {"dtypes": {str(param.dtype) for param in parameters.values()},
                    "unstepped": _unstepped_error(optimizer, names, parameters)}

    g1, g2, u = _two_steps_and_a_validation_gradient(ddp, model, optimizer)
    preconditioner = AdamPreconditioner(optimizer, names)
    values = {name: preconditioner(param, u[name].float()) for name, param in parameters.items()}
    errors = {"P": 0.0, "without eps": 0.0, "without bias correction": 0.0, "without the floor": 0.0}
    floored = 0
    for name, value in values.items():
        expected = _hand_computations(g1[name], g2[name], u[name])
        floored += int(expected.pop("floored").sum())
        errors = {key: max(errors[key], _relative_error(value, expected[key])) for key in errors}
    result["errors"] = errors
    result["floored fraction"] = floored / sum(value.numel() for value in values.values())

    _count_steps_per_group(optimizer)
    per_group = AdamPreconditioner(optimizer, names)
    result["per-group step equal"] = all(torch.equal(per_group(param, u[name].float()), values[name])
                                         for name, param in parameters.items())
    return result


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_adam_preconditioner_matches_a_hand_computation(bf16):
    result = run_distributed(_case, 1, args=(bf16,))[0]
    print(result)
    assert result["dtypes"] == ({"torch.bfloat16"} if bf16 else {"torch.float32"})
    errors = result["errors"]
    assert errors["P"] <= TOLERANCE, errors
    # each wrong variant is far outside the tolerance, so the comparison can tell them apart
    for variant in ("without eps", "without bias correction", "without the floor"):
        assert errors[variant] > 100 * TOLERANCE, (variant, errors)
    assert 0.01 < result["floored fraction"] < 0.99  # both sides of max(v_hat, u^2) are exercised
    assert result["per-group step equal"]

    assert result["unstepped"] is not None, "no error for parameters Adam has not stepped (v_hat taken as 0)"
    name, message = result["unstepped"]
    assert f"no Adam state for parameter {name}" in message and "--dwm-fd-direction" in message
