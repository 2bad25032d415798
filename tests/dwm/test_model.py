"""The Data Weighting Model: uniform start, mean-1 weights, temperature and clipping, permutation
equivariance, batch dependence, prefix-only reading, gradient flow, the NaN guard, and an encoder
initialised from this project's LM checkpoint reproducing the LM."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from megatron_dwm.dwm import (
    DataWeightingModel,
    DWMConfig,
    clip_and_renormalise,
    dwm_config_from_checkpoint,
    load_encoder_from_checkpoint,
    safe_weights,
)
from tests.distributed import run_distributed

SMALL = DWMConfig(vocab_size=64, num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                  seq_length=8)


def _tokens(n: int, s: int = 12, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, s), generator=torch.Generator().manual_seed(seed))


def _model(config: DWMConfig = SMALL, perturb_head: float = 0.0, seed: int = 0) -> DataWeightingModel:
    """A DWM; with perturb_head > 0 its zero-initialised score head gets random weights."""
    torch.manual_seed(seed)
    model = DataWeightingModel(config)
    if perturb_head:
        with torch.no_grad():
            model.head.out.weight.normal_(0, perturb_head)
            model.head.out.bias.normal_(0, perturb_head)
    return model


# --- weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 16])
@pytest.mark.parametrize("progress", [0.0, 0.37, 1.0])
def test_untrained_dwm_gives_exactly_uniform_weights(n, progress):
    model = _model()
    weights = model(_tokens(n, seed=n), progress)
    assert weights.shape == (n,) and weights.dtype == torch.float32
    assert torch.equal(weights, torch.ones(n))


def test_mean_weight_stays_one_after_training_the_head():
    model = _model()
    tokens = _tokens(16)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):  # plain SGD steps (a torch.optim optimizer costs seconds to import)
        upstream = torch.randn(16, generator=generator)  # stands in for the hypergradient g_i
        model.zero_grad()
        (upstream * model(tokens, 0.5)).sum().backward()
        with torch.no_grad():
            for param in model.head.parameters():
                param -= 0.5 * param.grad
    weights = model(tokens, 0.5)
    assert weights.std() > 1e-3  # the head moved: no longer uniform
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert (weights > 0).all()


def test_lower_temperature_spreads_the_weights():
    scores = torch.randn(32, generator=torch.Generator().manual_seed(2))
    spreads = []
    for temperature in (0.5, 1.0, 2.0, 8.0):
        weights = DataWeightingModel(replace(SMALL, temperature=temperature)).weights_from_scores(scores)
        assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
        spreads.append(weights.std().item())
    assert spreads == sorted(spreads, reverse=True) and spreads[0] > 2 * spreads[-1]


def test_weights_follow_a_permutation_of_the_batch():
    model = _model(perturb_head=1.0)
    tokens = _tokens(10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    weights = model(tokens, 0.3)
    assert weights.std() > 1e-3
    torch.testing.assert_close(model(tokens[perm], 0.3), weights[perm], rtol=0, atol=1e-6)


def test_a_sample_score_depends_on_the_rest_of_the_batch():
    model = _model(perturb_head=1.0)
    tokens = _tokens(8)
    other = tokens.clone()
    other[5] = _tokens(1, seed=99)[0]
    scores, other_scores = (model.score(model.encode(t), 0.3) for t in (tokens, other))
    # Sample 0 is unchanged, so its score moves only through the batch mixer (the softmax is not involved).
    assert (scores[0] - other_scores[0]).abs() > 1e-5
    torch.testing.assert_close(model.encode(tokens)[0], model.encode(other)[0], rtol=0, atol=0)


def test_progress_changes_the_weights():
    model = _model(perturb_head=1.0)
    tokens = _tokens(8)
    assert (model(tokens, 0.0) - model(tokens, 1.0)).abs().max() > 1e-4
    torch.testing.assert_close(model(tokens, 0.25), model(tokens, torch.tensor(0.25)), rtol=0, atol=0)


def test_only_the_first_seq_length_tokens_matter():
    model = _model(perturb_head=1.0)
    tokens = _tokens(6, s=20)
    suffix_changed = tokens.clone()
    suffix_changed[:, SMALL.seq_length:] = _tokens(6, s=20 - SMALL.seq_length, seed=7)
    prefix_changed = tokens.clone()
    prefix_changed[:, SMALL.seq_length - 1] = (tokens[:, SMALL.seq_length - 1] + 1) % SMALL.vocab_size
    weights = model(tokens, 0.5)
    assert torch.equal(model(suffix_changed, 0.5), weights)
    assert (model(prefix_changed, 0.5) - weights).abs().max() > 1e-5


# --- clipping ----------------------------------------------------------------------------------


def test_clipping_keeps_weights_within_bounds_with_mean_one():
    lo, hi = 0.5, 2.0
    model = _model(replace(SMALL, weight_clip=(lo, hi)), perturb_head=3.0)
    scores = model.score(model.encode(_tokens(64)), 0.5)
    unclipped = 64 * torch.softmax(scores, dim=0)
    assert unclipped.min() < lo and unclipped.max() > hi  # the case is a real test of clipping
    weights = model.weights_from_scores(scores)
    assert weights.min() >= lo * (1 - 1e-6) and weights.max() <= hi * (1 + 1e-6)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert (weights == lo).any() and (weights == hi).any()
    # The order of the weights is kept (clip of a common rescale).
    inside = (weights > lo) & (weights < hi)
    assert torch.equal(weights[inside].argsort(), unclipped[inside].argsort())


def test_clip_and_renormalise_reaches_the_exact_fixed_point():
    # clip then divide by the mean would give [2, 0.571, ...]; the answer has mean 1 inside [0.5, 2].
    weights = clip_and_renormalise(torch.tensor([3.7, 0.1, 0.1, 0.1]), 0.5, 2.0)
    torch.testing.assert_close(weights, torch.tensor([2.0, 2 / 3, 2 / 3, 2 / 3]))
    # lo = 0 and weights that underflowed to 0
    weights = clip_and_renormalise(1000 * torch.softmax(torch.randn(1000) * 30, dim=0), 0.0, 3.0)
    assert weights.min() >= 0 and weights.max() <= 3.0 * (1 + 1e-6)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-5)


def test_clipped_weights_are_differentiable():
    model = _model(replace(SMALL, weight_clip=(0.5, 2.0)), perturb_head=3.0)
    weights = model(_tokens(32), 0.5)
    (torch.randn(32) * weights).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.out.weight.grad.abs().sum() > 0


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="weight_clip"):
        DWMConfig(vocab_size=8, weight_clip=(1.5, 2.0))
    with pytest.raises(ValueError, match="temperature"):
        DWMConfig(vocab_size=8, temperature=0.0)
    with pytest.raises(ValueError, match="num_query_groups"):
        DWMConfig(vocab_size=8, num_attention_heads=4, num_query_groups=3)
    with pytest.raises(ValueError, match="hidden_size"):
        DWMConfig(vocab_size=8, hidden_size=30, num_attention_heads=4)


# --- gradients and the guard -------------------------------------------------------------------


def test_gradients_reach_every_parameter_once_the_head_is_non_zero():
    model = _model(perturb_head=1.0)
    (torch.randn(12, generator=torch.Generator().manual_seed(4)) * model(_tokens(12), 0.5)).sum().backward()
    for group in ("encoder", "mixer", "head"):
        for name, param in getattr(model, group).named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{group}.{name}"


def test_untrained_head_still_passes_gradient_to_itself():
    model = _model()
    (torch.randn(12) * model(_tokens(12), 0.5)).sum().backward()
    assert model.head.out.weight.grad.abs().sum() > 0  # so a zero-initialised DWM can start learning


def test_safe_weights_falls_back_to_uniform():
    good = torch.tensor([0.5, 1.5, 1.0])
    weights, ok = safe_weights(good)
    assert ok and weights is good
    for bad in ([float("nan"), 1.0, 2.0], [float("inf"), 1.0, 2.0], [1.0, float("-inf"), 2.0], [0.0, 0.0, 0.0],
                [-1.0, -2.0, 0.0]):
        weights, ok = safe_weights(torch.tensor(bad))
        assert not ok and torch.equal(weights, torch.ones(3))


# --- the encoder from an LM checkpoint ---------------------------------------------------------

LM_VOCAB, LM_PADDED, LM_SEQ = 200, 256, 16


def _save_lm_and_compare(rank: int, world_size: int, root: str, tokens: torch.Tensor):
    """Build the tiny LM, give it O(1) random weights, save it; return its logits, and those of a DWM
    encoder loaded from the checkpoint inside this running job (process group and megatron-core's
    parallel state are up; the load must not depend on either)."""
    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.training.checkpointing import save_checkpoint
    from tests.megatron_model import build_on_rank, full_logits

    arch = get_preset("tiny").with_overrides(vocab_size=LM_VOCAB)
    model = build_on_rank(arch, LM_PADDED, seq_length=LM_SEQ)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():  # norms around 1, matrices of unit gain (megatron's 0.02 is too tame)
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.2 * noise if param.dim() == 1 else noise / param.shape[-1] ** 0.5)
    save_checkpoint(root, 7, model, arch)
    model.eval()
    result = {"logits": full_logits(model, tokens), "output_weight": model.output_layer.weight.detach().clone()}
    dwm = DataWeightingModel(dwm_config_from_checkpoint(root, seq_length=LM_SEQ))
    load_encoder_from_checkpoint(dwm, root)
    with torch.no_grad():
        result["dwm_logits"] = dwm.hidden_states(tokens) @ result["output_weight"].T
    return result


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm") / "checkpoints"
    tokens = _tokens(3, s=LM_SEQ, vocab=LM_VOCAB, seed=6)
    (result,) = run_distributed(_save_lm_and_compare, world_size=1, args=(str(root), tokens))
    return {"root": root, "tokens": tokens, **result}


def test_encoder_from_checkpoint_reproduces_the_lm(lm_checkpoint):
    reference = lm_checkpoint["logits"]
    assert reference.shape == (3, LM_SEQ, LM_PADDED) and reference.abs().max() > 1.0
    # loaded here, in a process with no distributed state at all: no collective is involved
    config = dwm_config_from_checkpoint(lm_checkpoint["root"], seq_length=LM_SEQ)
    assert (config.num_layers, config.hidden_size, config.num_query_groups, config.vocab_size) == (4, 64, 2, LM_PADDED)
    dwm = DataWeightingModel(config)
    load_encoder_from_checkpoint(dwm, lm_checkpoint["root"])
    with torch.no_grad():
        logits = dwm.hidden_states(lm_checkpoint["tokens"]) @ lm_checkpoint["output_weight"].T
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    # ... and inside the job that saved the checkpoint
    torch.testing.assert_close(lm_checkpoint["dwm_logits"], reference, rtol=0, atol=1e-5)
    # the mixer and head were left alone: still exactly uniform
    assert torch.equal(dwm(lm_checkpoint["tokens"], 0.5), torch.ones(3))


def test_encoder_with_a_smaller_vocabulary_drops_padding_rows(lm_checkpoint):
    dwm = DataWeightingModel(dwm_config_from_checkpoint(lm_checkpoint["root"], vocab_size=LM_VOCAB))
    load_encoder_from_checkpoint(dwm, lm_checkpoint["root"])
    with torch.no_grad():
        logits = dwm.hidden_states(lm_checkpoint["tokens"]) @ lm_checkpoint["output_weight"].T
    torch.testing.assert_close(logits, lm_checkpoint["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("field, value", [
    ("num_layers", 2), ("hidden_size", 128), ("num_attention_heads", 8), ("num_query_groups", 4),
    ("ffn_hidden_size", 192), ("vocab_size", LM_VOCAB - 1), ("vocab_size", LM_PADDED + 1),
])
def test_mismatched_shape_names_the_field(lm_checkpoint, field, value):
    dwm = DataWeightingModel(dwm_config_from_checkpoint(lm_checkpoint["root"], **{field: value}))
    before = {k: v.clone() for k, v in dwm.state_dict().items()}
    with pytest.raises(ValueError, match=field):
        load_encoder_from_checkpoint(dwm, lm_checkpoint["root"])
    assert all(torch.equal(before[k], v) for k, v in dwm.state_dict().items())


def test_dwm_init_flag_takes_the_checkpoint_shape(lm_checkpoint):
    """`--dwm-init` builds the encoder in the LM's shape (the size flags do not apply) and loads it."""
    from megatron_dwm.arguments import build_parser
    from megatron_dwm.training.weighting import build_dwm

    args = build_parser().parse_args(["--dwm-init", str(lm_checkpoint["root"]), "--dwm-num-layers", "1",
                                      "--dwm-hidden-size", "32", "--dwm-seq-length", str(LM_SEQ),
                                      "--dwm-temperature", "0.5"])
    dwm = build_dwm(args, LM_VOCAB, torch.device("cpu"), group=None).model
    config = dwm.config
    assert (config.num_layers, config.hidden_size, config.num_query_groups) == (4, 64, 2)
    assert (config.vocab_size, config.seq_length, config.temperature) == (LM_VOCAB, LM_SEQ, 0.5)
    with torch.no_grad():
        logits = dwm.hidden_states(lm_checkpoint["tokens"]) @ lm_checkpoint["output_weight"].T
    torch.testing.assert_close(logits, lm_checkpoint["logits"], rtol=0, atol=1e-5)
