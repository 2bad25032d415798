"""TP=2, PP=2 and TP=2 x PP=2 (gloo) give the same per-token losses, gradients and loss curve as
TP=1, PP=1 from identical weights. Weights travel through a distributed checkpoint written at
TP=1 and resharded on load; gradients come back the same way (written as a checkpoint from the
parallel run, read into a TP=1 model), so the comparison covers megatron-core's own layouts.

The weighted loss with non-uniform per-sample weights on DP=1, DP=2 and TP=2 x DP=2 against the
explicit formula sum_i w_i l_i / n (autograd): per-sample losses, gradients after DDP, the
validation gradient of the DWM's outer step and its hypergradients. The same formula with the
weights of --weighting domain (DomainWeighting) on TP=1 and TP=2 x PP=2."""

from __future__ import annotations

import pytest
import torch

from megatron_dwm.training.bilevel import MegatronBilevel
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


def _run(rank, world_size, tp, pp, weights_dir, grads_dir, save_initial, features=None):
    from megatron.core.distributed import finalize_model_grads

    from megatron_dwm.training.checkpointing import load_checkpoint, save_checkpoint
    from tests.megatron_model import build_on_rank, forward_backward, wrap_ddp

    arch = _arch()
    model = build_on_rank(arch, VOCAB, tp=tp, pp=pp, seq_length=SEQ, **(features or {}))
    model.config.finalize_model_grads_func = finalize_model_grads  # as the trainer (sequence-parallel norms)
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


SEQUENCE_PARALLEL = {"sequence_parallel": True}
FULL_RECOMPUTE = {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 1}
SELECTIVE_RECOMPUTE = {"recompute_granularity": "selective"}


@pytest.mark.parametrize("tp,pp,features", [
    (2, 1, None), (1, 2, None), (2, 2, None),
    # megatron-core's memory features: the same losses and gradients (tests/training/test_scale_features.py: in training)
    (2, 1, SEQUENCE_PARALLEL), (2, 2, {**SEQUENCE_PARALLEL, **FULL_RECOMPUTE}), (1, 2, SELECTIVE_RECOMPUTE),
], ids=["tp2", "pp2", "tp2-pp2", "tp2-sequence-parallel", "tp2-pp2-sequence-parallel-full-recompute",
        "pp2-selective-recompute"])
def test_parallel_layout_matches_single_rank(reference, tmp_path, tp, pp, features):
    grads_dir = tmp_path / "grads"
    results = run_distributed(_run, tp * pp, args=(tp, pp, str(reference["weights"]), str(grads_dir), False,
                                                   features))
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


# -- the weighted loss on data-parallel layouts ---------------------------------------------------
# A global batch of 8 samples with fixed, non-uniform weights and per-sample loss masks of
# different lengths goes through WeightedLoss and megatron-core's schedule and DDP on DP=1, DP=2 and
# TP=2 x DP=2; DP rank r holds samples [r n/DP, (r+1) n/DP) in micro batches of 2, as the DWM orders
# them (DP rank, then micro batch, then sample). Every layout is compared with one independent
# reference: autograd of the explicit formula sum_i w_i l_i / n over the whole batch in one
# forward (l_i the masked mean of torch's cross-entropy over the model's logits).
WEIGHTED_BATCH = 8
VALID_BATCH = 4
# Tolerances, all from float32 reduction order (gradients summed over micro batches and DP ranks
# in a different order, TP's split matmuls): the per-sample losses agree to 2e-5 as the per-token
# losses of the TP/PP test above; each gradient tensor to a relative error of 1e-5 (measured:
# below 1e-6). The hypergradient g_i = -(eta/n) (l_i^+ - l_i^-) / (2 eps) inherits the losses'
# disagreement divided by 2 eps: |g_i - g_i^ref| <= (eta/n) (2 LOSS_ATOL) / (2 eps).
LOSS_ATOL = 2e-5
GRAD_RTOL = 1e-5


def _sample_weights() -> torch.Tensor:
    """w_i = 0.25 + 0.5 (5 i mod 8): eight different weights, none equal to 1."""
    return torch.tensor([0.25 + 0.5 * ((5 * i) % WEIGHTED_BATCH) for i in range(WEIGHTED_BATCH)])


def _samples(count: int, seed: int, masked: bool) -> dict[str, torch.Tensor]:
    """`count` samples as one micro-batch dict; domain_id holds the sample's index (its identity)."""
    tokens = torch.randint(0, VOCAB, (count, SEQ), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(SEQ - 1)
    # sample i counts its tokens from position 3 i on: 32, 29, ..., 11 tokens
    loss_mask = (positions[None, :] >= 3 * torch.arange(count)[:, None]).float() if masked else \
        torch.ones(count, SEQ - 1)
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask,
            "position_ids": positions.expand(count, -1), "domain_id": torch.arange(count),
            "document_id": torch.arange(count)}


def _micro_batches(samples: dict[str, torch.Tensor], dp_rank: int, dp_size: int) -> list[dict[str, torch.Tensor]]:
    count = samples["tokens"].shape[0]
    mine = range(dp_rank * count // dp_size, (dp_rank + 1) * count // dp_size, MICRO_BATCH)
    return [{key: value[i:i + MICRO_BATCH] for key, value in samples.items()} for i in mine]


def _explicit_per_sample(model, samples) -> torch.Tensor:
    """l_i: the masked mean of torch's cross-entropy over the model's logits, the whole batch in one
    forward (TP=1, PP=1)."""
    import torch.nn.functional as F

    logits = model(samples["tokens"], samples["position_ids"], None)  # [b, s, V]
    token_losses = F.cross_entropy(logits.float().transpose(1, 2), samples["labels"], reduction="none")
    mask = samples["loss_mask"]
    return (token_losses * mask).sum(dim=1) / mask.sum(dim=1)


def _explicit_weighted_gradients(model, samples, weights) -> dict[str, torch.Tensor]:
    """Autograd of sum_i w_i l_i / n, the whole batch in one forward, torch's cross-entropy
    (torch.autograd.grad: nothing reaches .grad or the DDP buffers)."""
    per_sample = _explicit_per_sample(model, samples)
    names, parameters = zip(*model.named_parameters())
    gradients = torch.autograd.grad((weights * per_sample).sum() / len(weights), parameters)
    return dict(zip(names, gradients))


def _relative_errors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float((actual[name] - value).norm() / value.norm()) for name, value in expected.items()}


def _write_reference(model, arch, samples, weights, weights_dir, grads_dir) -> float:
    """Save the weights and, as a checkpoint any layout can read, autograd's gradient of the explicit
    formula; returns how far the same formula with each weight on its neighbour's sample lands."""
    from megatron_dwm.training.checkpointing import save_checkpoint

    save_checkpoint(weights_dir, 0, model, arch)
    gradients = _explicit_weighted_gradients(model, samples, weights)
    permuted = _explicit_weighted_gradients(model, samples, weights.roll(1))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(gradients[name])
    save_checkpoint(grads_dir, 0, model, arch)
    return max(_relative_errors(permuted, gradients).values())


def _gradient_errors(model, weights_dir, grads_dir) -> dict[str, float]:
    """This layout's DDP gradients against the reference gradient resharded to it; the weights are
    loaded back after, and the DDP buffers keep this layout's gradient for the optimizer."""
    from megatron_dwm.training.checkpointing import load_checkpoint

    main_grads = {name: param.main_grad.clone() for name, param in model.named_parameters()}
    load_checkpoint(grads_dir, model)
    errors = _relative_errors(main_grads, dict(model.named_parameters()))
    load_checkpoint(weights_dir, model)
    return errors


def _weighted_run(rank, world_size, tp, weights_dir, grads_dir, is_reference):
    """One step of the weighted loss on this layout, then the finite-difference hypergradient."""
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    from megatron_dwm.dwm.colocated import gather_over
    from megatron_dwm.dwm.hypergradient import finite_difference_hypergradient
    from megatron_dwm.training.checkpointing import load_checkpoint
    from megatron_dwm.training.loss import WeightedLoss
    from megatron_dwm.training.step import run_global_batch
    from tests.megatron_model import build_on_rank, wrap_ddp

    arch = _arch()
    model = build_on_rank(arch, VOCAB, tp=tp, seq_length=SEQ)
    samples, weights = _samples(WEIGHTED_BATCH, 200, masked=True), _sample_weights()
    result = {}
    if is_reference:
        result["permuted weights"] = _write_reference(model, arch, samples, weights, weights_dir, grads_dir)
    load_checkpoint(weights_dir, model)

    ddp = wrap_ddp(model)
    optimizer = _optimizer(ddp)
    model.config.finalize_model_grads_func = finalize_model_grads  # as the trainer: DP reduction, tied embeddings
    model.config.grad_scale_func = optimizer.scale_loss
    dp_group = parallel_state.get_data_parallel_group()
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    microbatches = _micro_batches(samples, dp_rank, dp_size)
    # this replica's slice of the global-order weights, split per micro batch, as the DWM hands them out
    micro_weights = list(weights[dp_rank * WEIGHTED_BATCH // dp_size:].split(MICRO_BATCH))[:len(microbatches)]
    loss = WeightedLoss("torch", torch.device("cpu"))

    ddp.zero_grad_buffer()
    per_sample, ids = run_global_batch(ddp, microbatches, micro_weights, loss)
    result["ids"], result["per_sample"] = gather_over(ids, dp_group), gather_over(per_sample, dp_group)
    result["grad errors"] = _gradient_errors(model, weights_dir, grads_dir)

    optimizer.step()
    result["lr"] = optimizer.param_groups[0]["lr"]
    valid = _micro_batches(_samples(VALID_BATCH, 201, masked=False), dp_rank, dp_size)
    bilevel = RecordingBilevel(ddp, optimizer, loss, microbatches, valid, direction="adam")
    fd = finite_difference_hypergradient(bilevel, result["lr"], WEIGHTED_BATCH)  # v right after the step, as in training
    result["hypergradient"], result["epsilon"] = fd.hypergradient, fd.epsilon
    result["per_sample at theta_next"] = bilevel.per_sample_losses()
    if is_reference:
        explicit = _explicit_weighted_gradients(model, _samples(VALID_BATCH, 201, masked=False), torch.ones(VALID_BATCH))
        result["v errors"] = _relative_errors(dict(zip(explicit, bilevel.v)), explicit)
    return result


class RecordingBilevel(MegatronBilevel):
    """The trainer's outer-step model, keeping a copy of the validation gradient v it used."""

    def validation_gradient(self):
        self.v = [tensor.clone() for tensor in super().validation_gradient()]
        return self.v


@pytest.fixture(scope="module")
def weighted_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("weighted")
    result = run_distributed(_weighted_run, 1, args=(1, str(root / "weights"), str(root / "grads"), True))[0]
    return result | {"weights": root / "weights", "grads": root / "grads"}


def test_weighted_gradient_on_one_rank_matches_the_formula(weighted_reference):
    """DP=1, four micro batches: the schedule's reduction of WeightedLoss is sum_i w_i l_i / n."""
    ref = weighted_reference
    assert torch.equal(ref["ids"], torch.arange(WEIGHTED_BATCH))
    errors = ref["grad errors"]
    assert max(errors.values()) < GRAD_RTOL, errors
    assert ref["permuted weights"] > 1000 * GRAD_RTOL  # a pairing error would be seen


def test_validation_gradient_after_the_step_matches_autograd(weighted_reference):
    """v of the outer step, taken right after the LLM's optimizer step (two micro batches), is the
    gradient of the validation batch's mean loss."""
    errors = weighted_reference["v errors"]
    assert max(errors.values()) < GRAD_RTOL, errors


@pytest.mark.parametrize("tp,dp", [(1, 2), (2, 2)], ids=["dp2", "tp2-dp2"])
def test_weighted_loss_on_data_parallel_layouts_matches_dp1(weighted_reference, tp, dp):
    """Per-sample losses, every gradient tensor (after DDP) and the hypergradient of each sample
    match DP=1; the hypergradient comes back in the global order."""
    ref = weighted_reference
    results = run_distributed(_weighted_run, tp * dp, args=(tp, str(ref["weights"]), str(ref["grads"]), False))
    g_ref, epsilon = ref["hypergradient"].double(), ref["epsilon"]
    g_atol = (ref["lr"] / WEIGHTED_BATCH) * 2 * LOSS_ATOL / (2 * epsilon)
    assert g_ref.abs().max() > 20 * g_atol  # the hypergradients are well above their tolerance
    assert (g_ref.roll(1) - g_ref).abs().max() > 10 * g_atol  # and differ enough between samples to see a pairing error
    for rank, result in enumerate(results):
        assert torch.equal(result["ids"], torch.arange(WEIGHTED_BATCH)), rank  # the global order
        torch.testing.assert_close(result["per_sample"], ref["per_sample"], rtol=0, atol=LOSS_ATOL)
        errors = result["grad errors"]
        assert max(errors.values()) < GRAD_RTOL, (rank, errors)
        torch.testing.assert_close(result["per_sample at theta_next"], ref["per_sample at theta_next"],
                                   rtol=0, atol=LOSS_ATOL)
        error = (result["hypergradient"].double() - g_ref).abs().max()
        print(f"rank {rank}: hypergradient max |g - g_ref| {error:.2e} (tolerance {g_atol:.2e}, "
              f"max |g_ref| {g_ref.abs().max():.2e})")
        assert error <= g_atol, rank


# -- --weighting domain on TP=1 and TP=2 x PP=2 -----------------------------------------------------
# DomainWeighting gives each sample its domain's weight; the step through megatron-core's pipeline
# schedule must minimise sum_i w_i l_i / n with those weights, on every stage of a pipeline layout.
# The reference is the explicit formula on TP=1 (autograd, weights w_i = DOMAIN_WEIGHTS[d_i] looked
# up here, not by the policy); its gradient reaches each layout as a resharded checkpoint.
DOMAIN_WEIGHTS = [0.0, 0.5, 2.0]  # 0 drops a domain's samples from the loss
DOMAIN_NAMES = ["dropped", "halved", "doubled"]
DOMAIN_IDS = torch.tensor([2, 0, 1, 2, 1, 0, 2, 1])  # of the WEIGHTED_BATCH samples, in global order


def _domain_samples() -> dict[str, torch.Tensor]:
    return _samples(WEIGHTED_BATCH, 202, masked=True) | {"domain_id": DOMAIN_IDS.clone()}


def _domain_sample_weights() -> torch.Tensor:
    return torch.tensor([DOMAIN_WEIGHTS[d] for d in DOMAIN_IDS.tolist()])


def _domain_run(rank, world_size, tp, pp, weights_dir, grads_dir, is_reference):
    """One global batch with DomainWeighting's weights on this layout (DP=1, four micro batches)."""
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    from megatron_dwm.training.checkpointing import load_checkpoint
    from megatron_dwm.training.loss import WeightedLoss
    from megatron_dwm.training.policies import DomainWeighting
    from megatron_dwm.training.step import run_global_batch
    from tests.megatron_model import build_on_rank, wrap_ddp

    arch = _arch()
    model = build_on_rank(arch, VOCAB, tp=tp, pp=pp, seq_length=SEQ)
    samples = _domain_samples()
    result = {"stage": parallel_state.get_pipeline_model_parallel_rank(),
              "tp rank": parallel_state.get_tensor_model_parallel_rank()}
    if is_reference:
        result["permuted weights"] = _write_reference(model, arch, samples, _domain_sample_weights(), weights_dir,
                                                      grads_dir)
    load_checkpoint(weights_dir, model)
    if is_reference:
        with torch.no_grad():
            result["explicit per_sample"] = _explicit_per_sample(model, samples)

    ddp = wrap_ddp(model)
    model.config.finalize_model_grads_func = finalize_model_grads  # as the trainer
    assert parallel_state.get_data_parallel_world_size() == 1
    microbatches = _micro_batches(samples, 0, 1)
    policy = DomainWeighting(DOMAIN_WEIGHTS, None)
    loss = WeightedLoss("torch", torch.device("cpu"))
    ddp.zero_grad_buffer()
    collected = run_global_batch(ddp, microbatches, policy.weights(microbatches, 0), loss)
    result["per_sample"], result["ids"] = collected if collected is not None else (None, None)
    result["used"] = torch.cat(loss.weights) if loss.weights else None
    policy.observe(microbatches, loss.weights)
    result["scalars"] = policy.pop_metrics(DOMAIN_NAMES, 1)
    result["grad errors"] = _gradient_errors(model, weights_dir, grads_dir)
    return result


@pytest.fixture(scope="module")
def domain_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("domain")
    result = run_distributed(_domain_run, 1, args=(1, 1, str(root / "weights"), str(root / "grads"), True))[0]
    return result | {"weights": root / "weights", "grads": root / "grads"}


def _check_domain_last_stage(result, reference) -> None:
    """The last stage's per-sample losses, the weights the loss used and their statistics."""
    explicit = reference["explicit per_sample"]
    assert torch.equal(result["ids"], DOMAIN_IDS)  # the global order
    assert torch.equal(result["used"], _domain_sample_weights())
    torch.testing.assert_close(result["per_sample"], explicit, rtol=0, atol=LOSS_ATOL)
    scalars = result["scalars"]
    assert [scalars[f"dwm/weight/{name}"] for name in DOMAIN_NAMES] == DOMAIN_WEIGHTS
    total = float(_domain_sample_weights().sum())
    for name, weight in zip(DOMAIN_NAMES, DOMAIN_WEIGHTS):
        share = weight * int((DOMAIN_IDS == DOMAIN_NAMES.index(name)).sum()) / total
        assert scalars[f"dwm/weight share/{name}"] == pytest.approx(share)


def test_domain_weights_on_one_rank_match_the_formula(domain_reference):
    ref = domain_reference
    _check_domain_last_stage(ref, ref)
    errors = ref["grad errors"]
    print(f"TP=1: max relative gradient error {max(errors.values()):.2e}, with the weights rolled by one "
          f"{ref['permuted weights']:.2e}")
    assert max(errors.values()) < GRAD_RTOL, errors
    assert ref["permuted weights"] > 1000 * GRAD_RTOL  # a pairing error would be seen
    explicit = ref["explicit per_sample"]
    assert (explicit.roll(1) - explicit).abs().min() > 100 * LOSS_ATOL  # and so would a reordering of the losses


def test_domain_weights_on_tp2_pp2_match_the_formula(domain_reference):
    """TP=2 x PP=2: the per-sample losses on both TP ranks of the last stage, every gradient tensor
    of every stage against the explicit formula's."""
    ref = domain_reference
    results = run_distributed(_domain_run, 4, args=(2, 2, str(ref["weights"]), str(ref["grads"]), False))
    assert sorted((r["stage"], r["tp rank"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for result in results:
        if result["stage"] == 1:
            _check_domain_last_stage(result, ref)
        else:
            assert result["per_sample"] is None and result["used"] is None and result["scalars"] == {}
        errors = result["grad errors"]
        print(f"stage {result['stage']}, TP rank {result['tp rank']}: max relative gradient error "
              f"{max(errors.values()):.2e}")
        assert max(errors.values()) < GRAD_RTOL, (result["stage"], result["tp rank"], errors)
    # every parameter tensor of the model was compared: each stage holds half the layers
    stages = {r["stage"]: set(r["grad errors"]) for r in results if r["tp rank"] == 0}
    assert len(stages[0]) + len(stages[1]) == len(ref["grad errors"]), stages
    assert any("embedding" in name for name in stages[0]) and any("output_layer" in name for name in stages[1])
