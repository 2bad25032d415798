"""The weighting policies without a DWM (megatron_dwm.training.policies): Sow et al.'s loss-based
weights against an independent float64 implementation, the fixed per-domain weights, the weighted
loss with weights computed from the same forward pass's losses, the weight statistics every policy
reports, and the --weighting flags."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_dwm.arguments import LOSS_STRATEGIES, ConfigError, parse_args
from megatron_dwm.dwm.colocated import GlobalBatchWeights
from megatron_dwm.training.loss import WeightedLoss
from megatron_dwm.training.policies import (
    DomainWeighting,
    LossWeighting,
    UniformWeighting,
    build_local_weighting,
    loss_based_weights,
)
from megatron_dwm.training.weight_stats import WeightLog, weight_scalars

REPO = Path(__file__).resolve().parents[2]


# -- an independent implementation of Sow et al.'s weights (float64, element by element) ----------

def reference_weights(losses, strategy: str, temperature: float) -> np.ndarray:
    """h_i = (2 l_i - (lmax + lmin)) / (lmax - lmin) (0 when all equal); f_i by the strategy;
    w_i = n exp((f_i - max f) / r) / sum_j exp((f_j - max f) / r)."""
    losses = [float(value) for value in losses]
    high, low = max(losses), min(losses)
    h = [0.0 if high == low else (2 * value - (high + low)) / (high - low) for value in losses]
    if strategy == "linupper":
        f = [min(x + 1.0, 1.0) for x in h]
    elif strategy == "quadratic":
        f = [1.0 - x * x for x in h]
    else:
        assert strategy == "extremes"
        f = [abs(x) for x in h]
    top = max(f)
    exps = [math.exp((x - top) / temperature) for x in f]
    return np.array([len(losses) * e / sum(exps) for e in exps])


def _random_losses(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=generator) * 6 + 0.5).float()


RTOL, ATOL = 2e-5, 1e-6  # float32 against float64


@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
@pytest.mark.parametrize("temperature", [0.1, 1.0, 4.0])
def test_loss_based_weights_match_the_formula(strategy, temperature):
    for n in (3, 5, 16, 257):
        for seed in range(4):
            losses = _random_losses(n, seed)
            weights = loss_based_weights(losses, strategy, temperature)
            assert weights.dtype == torch.float32 and weights.shape == (n,)
            expected = reference_weights(losses.double().tolist(), strategy, temperature)
            np.testing.assert_allclose(weights.double().numpy(), expected, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{strategy} r={temperature} n={n} seed={seed}")
            assert float(weights.double().mean()) == pytest.approx(1.0, abs=1e-5)
            # a weight paired with another sample's loss would be seen
            assert np.abs(weights.double().numpy() - np.roll(expected, 1)).max() > 100 * ATOL
            # and so would another strategy's weights
            for other in set(LOSS_STRATEGIES) - {strategy}:
                assert np.abs(weights.double().numpy() - reference_weights(losses.tolist(), other, temperature)).max() \
                    > 100 * ATOL


def test_loss_based_weights_of_a_hand_computed_case():
    """losses 1, 2, 3: h = -1, 0, 1."""
    e = math.exp(-1.0)
    expected = {
        "linupper": [3 * e / (e + 2), 3 / (e + 2), 3 / (e + 2)],  # f = 0, 1, 1
        "quadratic": [3 * e / (2 * e + 1), 3 / (2 * e + 1), 3 * e / (2 * e + 1)],  # f = 0, 1, 0
        "extremes": [3 / (e + 2), 3 * e / (e + 2), 3 / (e + 2)],  # f = 1, 0, 1
    }
    for strategy, values in expected.items():
        actual = loss_based_weights(torch.tensor([3.0, 1.0, 2.0]), strategy, 1.0)  # any order
        torch.testing.assert_close(actual, torch.tensor([values[2], values[0], values[1]]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
def test_what_each_strategy_favours(strategy):
    """linupper: non-decreasing in the loss (the losses above the midpoint all weigh the most);
    quadratic: the middle most, both ends least; extremes: both ends most, the middle least."""
    losses = torch.linspace(1.0, 3.0, 21)  # the midpoint, 2.0, is sample 10
    weights = loss_based_weights(losses, strategy, 1.0)
    if strategy == "linupper":
        assert torch.all(weights[1:] >= weights[:-1])
        assert torch.allclose(weights[10:], weights[10].expand(11)) and weights[0] < weights[9] < weights[10]
    elif strategy == "quadratic":
        assert int(weights.argmax()) == 10 and torch.allclose(weights[0], weights[20])
        assert weights[0] == weights.min()
    else:
        assert int(weights.argmin()) == 10 and torch.allclose(weights[0], weights[20])
        assert weights[0] == weights.max()


@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
def test_ties_and_a_single_sample(strategy):
    for value in (0.0, 1.0, 7.25, 1e4):
        for n in (1, 2, 5, 64):
            torch.testing.assert_close(loss_based_weights(torch.full((n,), value), strategy, 0.5), torch.ones(n),
                                       rtol=0, atol=1e-6)
    for temperature in (1e-3, 1.0, 100.0):
        torch.testing.assert_close(loss_based_weights(torch.tensor([2.5]), strategy, temperature), torch.ones(1))
    losses = torch.tensor([1.0, 3.0, 1.0, 2.0, 3.0, 2.0, 2.0, 1.5])
    weights = loss_based_weights(losses, strategy, 0.7)
    for value in losses.unique():
        same = weights[losses == value]
        assert torch.all(same == same[0]), (strategy, float(value), same)
    np.testing.assert_allclose(weights.double().numpy(), reference_weights(losses.tolist(), strategy, 0.7),
                               rtol=RTOL, atol=ATOL)
    assert float(weights.double().mean()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
def test_temperature(strategy):
    """A larger temperature flattens the weights (uniform in the limit); a tiny one puts the whole
    mass on the samples of largest f, with the mean still 1 and nothing infinite or NaN."""
    losses = _random_losses(32, 7)
    spreads = []
    for temperature in (0.05, 0.3, 1.0, 3.0, 30.0):
        weights = loss_based_weights(losses, strategy, temperature)
        spreads.append(float(weights.max() - weights.min()))
    assert all(a > b for a, b in zip(spreads, spreads[1:])), spreads
    torch.testing.assert_close(loss_based_weights(losses, strategy, 1e6), torch.ones(32), rtol=0, atol=1e-5)
    sharp = loss_based_weights(losses, strategy, 1e-6)
    assert torch.isfinite(sharp).all() and float(sharp.double().mean()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(sharp.double().numpy(), reference_weights(losses.tolist(), strategy, 1e-6),
                               rtol=RTOL, atol=ATOL)


def test_weights_are_detached_from_the_losses():
    losses = _random_losses(6, 1).requires_grad_()
    for strategy in LOSS_STRATEGIES:
        weights = loss_based_weights(losses * 1.0, strategy, 1.0)
        assert not weights.requires_grad and weights.grad_fn is None
        losses.grad = None
        (weights * losses).sum().backward()
        torch.testing.assert_close(losses.grad, weights)  # d/dl sum w l = w: nothing through w


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="linupper, quadratic, extremes"):
        loss_based_weights(torch.ones(3), "cubic", 1.0)


# -- the policies ----------------------------------------------------------------------------------

@pytest.fixture
def single_process(monkeypatch):
    """A policy outside a job: this process is the last pipeline stage and its own DP group."""
    from megatron.core import parallel_state

    monkeypatch.setattr(parallel_state, "is_pipeline_last_stage", lambda *a, **k: True)
    monkeypatch.setattr(parallel_state, "get_data_parallel_group", lambda *a, **k: None)


def _microbatches(domain_ids: list[list[int]]) -> list[dict[str, torch.Tensor]]:
    batches, document = [], 0
    for ids in domain_ids:
        tokens = torch.arange(len(ids) * 4).reshape(len(ids), 4)
        batches.append({"tokens": tokens, "domain_id": torch.tensor(ids),
                        "document_id": torch.arange(document, document + len(ids))})
        document += len(ids)
    return batches


def test_uniform_weighting(single_process):
    batches = _microbatches([[0, 1], [2, 2, 0]])
    weights = UniformWeighting(None).weights(batches, 5)
    assert [w.tolist() for w in weights] == [[1.0, 1.0], [1.0, 1.0, 1.0]]


def test_domain_weighting_maps_domain_ids_to_their_weights(single_process):
    table = [0.0, 0.5, 2.0]
    ids = [[2, 0], [1, 1], [0, 2, 1]]
    policy = DomainWeighting(table, None)
    for iteration in (0, 100):  # fixed: the same at every iteration
        weights = policy.weights(_microbatches(ids), iteration)
        assert [w.tolist() for w in weights] == [[table[d] for d in batch] for batch in ids]
        assert all(w.dtype == torch.float32 for w in weights)


def test_loss_weighting_is_uniform_during_its_warm_up_then_weighs_by_loss(single_process):
    batches = _microbatches([[0, 1, 2], [1, 0, 0]])
    policy = LossWeighting("quadratic", 0.5, 3, None)
    for iteration in range(3):
        weights = policy.weights(batches, iteration)
        assert all(isinstance(w, torch.Tensor) for w in weights)
        assert [w.tolist() for w in weights] == [[1.0] * 3, [1.0] * 3]
    for iteration in (3, 10):
        weights = policy.weights(batches, iteration)
        assert len(weights) == 2 and all(callable(w) for w in weights)
        losses = torch.tensor([1.0, 4.0, 2.0])
        np.testing.assert_allclose(weights[0](losses).double().numpy(),
                                   reference_weights(losses.tolist(), "quadratic", 0.5), rtol=RTOL, atol=ATOL)
    assert all(callable(w) for w in LossWeighting("extremes", 1.0, 0, None).weights(batches, 0))  # no warm-up


def test_build_local_weighting(single_process):
    args = argparse.Namespace(weighting="uniform", domain_weights=None, loss_weighting_strategy="linupper",
                              loss_weighting_temperature=2.0, loss_weighting_warmup_iters=4)
    assert type(build_local_weighting(args, None)) is UniformWeighting
    args.weighting, args.domain_weights = "domain", [1.0, 3.0]
    policy = build_local_weighting(args, None)
    assert type(policy) is DomainWeighting and policy.domain_weights.tolist() == [1.0, 3.0]
    args.weighting = "loss"
    policy = build_local_weighting(args, "samples.jsonl")
    assert type(policy) is LossWeighting
    assert (policy.strategy, policy.temperature, policy.warmup_iters, policy.log.samples_log) == \
        ("linupper", 2.0, 4, "samples.jsonl")
    args.weighting = "dwm"
    with pytest.raises(ValueError, match="--weighting dwm"):
        build_local_weighting(args, None)


def test_gathered_rows_are_global_batches_in_rank_order(monkeypatch):
    """Two data-parallel ranks' [iterations, b] tensors, gathered once, give each iteration's global
    batch as one row: rank 0's samples, then rank 1's (gather_over concatenates rank by rank)."""
    from megatron_dwm.training import policies

    local = torch.arange(6).reshape(3, 2)  # 3 iterations of 2 samples on rank 0
    monkeypatch.setattr(policies, "gather_over", lambda tensor, group: torch.cat([tensor, tensor + 100]))
    rows = policies.gathered_by_iteration(local, group=None)
    assert rows.tolist() == [[0, 1, 100, 101], [2, 3, 102, 103], [4, 5, 104, 105]]


def test_observed_weights_reach_the_statistics_and_the_samples_log(single_process, tmp_path):
    log_path = tmp_path / "logs" / "dwm_samples.jsonl"
    policy = DomainWeighting([0.0, 0.5, 2.0], str(log_path))
    domains = ["a", "b", "c"]
    first, second = _microbatches([[2, 0], [1, 1]]), _microbatches([[0, 2], [2, 1]])
    policy.observe(first, policy.weights(first, 0))
    policy.observe(second, policy.weights(second, 1))
    scalars = policy.pop_metrics(domains, 2)
    assert {k: scalars[f"dwm/weight/{k}"] for k in domains} == {"a": 0.0, "b": 0.5, "c": 2.0}
    assert scalars["dwm/weight share/c"] == pytest.approx(6.0 / 7.5)  # 2 + 2 + 2 of 7.5
    assert policy.pop_metrics(domains, 3) == {}  # the interval was emptied
    [record] = [json.loads(line) for line in log_path.read_text().splitlines()]
    expected = {"iteration": 2, "domain": ["a", "c", "c", "b"], "document_id": [0, 1, 2, 3],
                "weight": [0.0, 2.0, 2.0, 0.5]}  # the last global batch, in order
    assert {key: record[key] for key in expected} == expected


# -- the weighted loss with weights from the losses -------------------------------------------------

class TinyChunk:
    """A stand-in for a model chunk: per-token losses (theta_0 x - theta_1 y)^2 / 100 of tokens x
    and labels y, as megatron-core's labels= path returns them ([b, s])."""

    def __init__(self) -> None:
        self.theta = torch.tensor([0.7, -0.3], requires_grad=True)
        self.calls = []

    def __call__(self, tokens, position_ids, attention_mask, labels=None):
        self.calls.append((tokens, position_ids, attention_mask, labels))
        return self.per_token(tokens, labels)

    def per_token(self, tokens, labels):
        return (self.theta[0] * tokens.float() - self.theta[1] * labels.float()) ** 2 / 100


def _loss_batch(seed: int, b: int = 4, s: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 20, (b, s + 1), generator=generator)
    loss_mask = (torch.arange(s)[None, :] >= torch.arange(b)[:, None]).float()  # 6, 5, 4, 3 tokens
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask,
            "position_ids": torch.arange(s).expand(b, s), "domain_id": torch.arange(b) % 3}


def _explicit(chunk: TinyChunk, batch, weigh, detach: bool = True):
    """sum_i w_i l_i / b, w = weigh(l), and its gradient in theta."""
    per_token = chunk.per_token(batch["tokens"], batch["labels"])
    mask = batch["loss_mask"]
    losses = (per_token * mask).sum(dim=1) / mask.sum(dim=1)
    weights = weigh(losses.detach() if detach else losses)
    loss = (weights * losses).sum() / len(losses)
    (grad,) = torch.autograd.grad(loss, chunk.theta)
    return loss.detach(), losses.detach(), weights.detach(), grad


def _run_loss(loss: WeightedLoss, chunk: TinyChunk, batch, weights, forward_only: bool = False):
    output, loss_func = loss.forward_step(chunk, batch, weights, forward_only)
    value, reported = loss_func(output)
    assert torch.equal(reported["lm loss"], value.detach())
    chunk.theta.grad = None
    value.backward()
    return value.detach(), chunk.theta.grad.clone()


def _differentiable_quadratic_weights(losses: torch.Tensor) -> torch.Tensor:
    """loss_based_weights' formula (quadratic, r = 1) in differentiable torch operations."""
    h = (2 * losses - (losses.max() + losses.min())) / (losses.max() - losses.min())
    return len(losses) * torch.softmax(1 - h ** 2, dim=0)


@pytest.mark.parametrize("strategy", LOSS_STRATEGIES)
def test_weighted_loss_with_weights_from_its_losses(strategy):
    chunk, batch = TinyChunk(), _loss_batch(0)
    loss = WeightedLoss("torch", torch.device("cpu"))
    seen = []

    def weigh(losses):
        seen.append(losses)
        return loss_based_weights(losses, strategy, 0.5)

    value, grad = _run_loss(loss, chunk, batch, weigh)
    expected, losses, weights, expected_grad = _explicit(chunk, batch, lambda l: loss_based_weights(l, strategy, 0.5))
    [(tokens, positions, mask, labels)] = chunk.calls  # how forward() calls a chunk
    assert tokens is batch["tokens"] and positions is batch["position_ids"] and mask is None
    assert labels is batch["labels"]
    [given] = seen  # the callable is called once, on the detached per-sample losses
    assert not given.requires_grad and given.dtype == torch.float32
    torch.testing.assert_close(given, losses)
    np.testing.assert_allclose(weights.double().numpy(), reference_weights(losses.tolist(), strategy, 0.5),
                               rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(value, (weights * losses).sum() / 4)
    torch.testing.assert_close(grad, expected_grad)
    [used] = loss.weights  # what the loss used, recorded
    torch.testing.assert_close(used, weights)
    torch.testing.assert_close(torch.cat(loss.per_sample), losses)
    assert not used.requires_grad
    # the checks can fail: other pairings and weights do not give this loss
    assert abs(float((weights.roll(1) * losses).sum() / 4 - value)) > 1e-4
    assert abs(float(losses.mean() - value)) > 1e-4


def test_weighted_loss_takes_no_gradient_through_the_weights():
    """Even a callable that returns weights with a graph: the gradient is sum_i w_i dl_i / b."""
    chunk, batch = TinyChunk(), _loss_batch(1)
    _, grad = _run_loss(WeightedLoss("torch", torch.device("cpu")), chunk, batch, _differentiable_quadratic_weights)
    *_, detached_grad = _explicit(chunk, batch, _differentiable_quadratic_weights, detach=True)
    *_, through_weights = _explicit(chunk, batch, _differentiable_quadratic_weights, detach=False)
    torch.testing.assert_close(grad, detached_grad)
    assert (through_weights - detached_grad).abs().max() > 1e-3 * detached_grad.abs().max()  # a difference to see


def test_weighted_loss_records_the_weights_of_each_micro_batch():
    chunk, loss = TinyChunk(), WeightedLoss("torch", torch.device("cpu"))
    batches = [_loss_batch(2), _loss_batch(3), _loss_batch(4)]
    given = [torch.tensor([0.0, 0.5, 2.0, 1.5]), lambda l: loss_based_weights(l, "extremes", 1.0), None]
    for batch, weights in zip(batches, given):
        value, _ = _run_loss(loss, chunk, batch, weights)
        expected, losses, used, _ = _explicit(chunk, batch, weights if callable(weights) else
                                              (lambda l, w=weights: torch.ones(4) if w is None else w))
        torch.testing.assert_close(value, expected)
    assert len(loss.weights) == 3
    torch.testing.assert_close(loss.weights[0], given[0])
    torch.testing.assert_close(loss.weights[1], loss_based_weights(loss.per_sample[1], "extremes", 1.0))
    torch.testing.assert_close(loss.weights[2], torch.ones(4))
    losses, domains = loss.collected()
    assert losses.shape == (12,) and domains.tolist() == [0, 1, 2, 0] * 3
    loss.reset()
    assert loss.weights == [] and loss.collected() is None


@pytest.mark.parametrize("forward_only", [False, True])
def test_fused_kernel_with_weights_from_its_losses(forward_only):
    """The fused path (Triton's interpreter on CPU) computes the losses first, then the weights
    from them, and gives torch's loss, weights and gradient."""
    pytest.importorskip("triton")
    import torch.nn.functional as F

    b, s, vocab = 3, 5, 16
    generator = torch.Generator().manual_seed(5)
    table = torch.randn(vocab, vocab, generator=generator).requires_grad_()
    tokens = torch.randint(0, vocab, (b, s + 1), generator=generator)
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "position_ids": torch.arange(s).expand(b, s),
             "loss_mask": (torch.arange(s)[None, :] >= torch.arange(b)[:, None]).float(),
             "domain_id": torch.arange(b)}

    def chunk(tokens, position_ids, attention_mask, labels=None):
        assert labels is None  # the fused kernel takes the logits
        return (table[tokens] * 1.0).contiguous()  # [b, s, V]

    weigh = lambda l: loss_based_weights(l, "linupper", 0.3)  # noqa: E731
    loss = WeightedLoss("fused", torch.device("cpu"))
    output, loss_func = loss.forward_step(chunk, batch, weigh, forward_only)
    value, _ = loss_func(output)

    logits = table[batch["tokens"]]
    per_token = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
    losses = (per_token * batch["loss_mask"]).sum(1) / batch["loss_mask"].sum(1)
    weights = weigh(losses.detach())
    expected = (weights * losses).sum() / b
    torch.testing.assert_close(value.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.weights[0], weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.per_sample[0], losses.detach(), rtol=1e-5, atol=1e-6)
    if not forward_only:
        (expected_grad,) = torch.autograd.grad(expected, table)
        value.backward()
        torch.testing.assert_close(table.grad, expected_grad, rtol=1e-4, atol=1e-6)


# -- the weight statistics -------------------------------------------------------------------------

def test_weight_scalars_against_a_hand_computation():
    batches = [
        GlobalBatchWeights(torch.tensor([0.5, 2.0, 1.0, 0.5]), torch.tensor([0, 1, 1, 2]), torch.arange(4), False),
        GlobalBatchWeights(torch.tensor([1.5, 0.0, 3.0]), torch.tensor([0, 2, 1]), torch.arange(3), True),
    ]
    scalars = weight_scalars(batches, ["a", "b", "c", "unseen"])
    total = 0.5 + 2.0 + 1.0 + 0.5 + 1.5 + 0.0 + 3.0
    expected = {
        "dwm/weight/a": (0.5 + 1.5) / 2, "dwm/weight/b": (2.0 + 1.0 + 3.0) / 3, "dwm/weight/c": (0.5 + 0.0) / 2,
        "dwm/weight share/a": 2.0 / total, "dwm/weight share/b": 6.0 / total, "dwm/weight share/c": 0.5 / total,
        "dwm/weight min": 0.0, "dwm/weight max": 3.0,
        "dwm/weight std": (statistics.stdev([0.5, 2.0, 1.0, 0.5]) + statistics.stdev([1.5, 0.0, 3.0])) / 2,
        # ESS (sum w)^2 / sum w^2, per global batch, averaged over the interval
        "dwm/ess": (4.0 ** 2 / (0.25 + 4 + 1 + 0.25) + 4.5 ** 2 / (2.25 + 0 + 9)) / 2,
        "dwm/fallbacks": 1,
    }
    assert scalars.keys() == expected.keys()  # no entry for a domain without samples
    for key, value in expected.items():
        assert scalars[key] == pytest.approx(value, rel=1e-12), key
    assert sum(scalars[f"dwm/weight share/{d}"] for d in "abc") == pytest.approx(1.0)


def test_weight_scalars_of_uniform_weights():
    batch = GlobalBatchWeights(torch.ones(8), torch.tensor([0, 0, 1, 1, 1, 1, 1, 1]), torch.arange(8), False)
    scalars = weight_scalars([batch], ["x", "y"])
    assert scalars["dwm/ess"] == pytest.approx(8.0) and scalars["dwm/weight std"] == 0.0
    assert (scalars["dwm/weight share/x"], scalars["dwm/weight share/y"]) == (0.25, 0.75)
    single = GlobalBatchWeights(torch.tensor([2.0]), torch.tensor([1]), torch.arange(1), False)
    assert weight_scalars([single], ["x", "y"])["dwm/weight std"] == 0.0  # one sample: no NaN


def test_weight_log(tmp_path):
    path = tmp_path / "dwm_samples.jsonl"
    log = WeightLog(str(path))
    assert log.pop(["a"], 1) == {}
    assert not path.exists()
    log.add(GlobalBatchWeights(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]), torch.tensor([7, 8]), False))
    log.add(GlobalBatchWeights(torch.tensor([0.25, 1.75]), torch.tensor([1, 5]), torch.tensor([9, 10]), False))
    scalars = log.pop(["a", "b"], 20, {"extra": 1})
    assert scalars["dwm/weight/b"] == pytest.approx((3.0 + 0.25) / 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"iteration": 20, "extra": 1, "domain": ["b", "5"], "document_id": [9, 10], "weight": [0.25, 1.75]}]
    silent = WeightLog(None)
    silent.add(GlobalBatchWeights(torch.ones(2), torch.zeros(2, dtype=torch.long), torch.arange(2), False))
    assert silent.pop(["a"], 1)["dwm/ess"] == pytest.approx(2.0)


# -- the flags -------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    """Rank 0 under no launcher, whatever launched the tests."""
    for variable in ("RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(variable, raising=False)


DEMO = REPO / "demo_data"


def _demo_blend() -> list[str]:
    """The demo's five-dataset training blend (weight prefix pairs, absolute prefixes)."""
    values = (DEMO / "indexed" / "data_path.txt").read_text().split()
    return [value if i % 2 == 0 else str(REPO / value) for i, value in enumerate(values)]


BASE = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", str(DEMO / "tokenizers" / "demo-spm.model"),
        "--dwm-valid-data-path", str(DEMO / "indexed" / "lambada_style_text_document")]


def _parse(*flags: str, data: list[str] | None = None) -> argparse.Namespace:
    """Micro batches of 4 (the loss-based policy normalises over each); `flags` may override it."""
    return parse_args(["--data-path", *(_demo_blend() if data is None else data), *BASE, "--micro-batch-size", "4",
                       *flags], world_size=1)


def _problems(*flags: str, data: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as error:
        _parse(*flags, data=data)
    return [line.strip()[2:] for line in str(error.value).splitlines() if line.strip().startswith("- ")]


def test_demo_blend_has_five_datasets():
    assert len(_demo_blend()) == 10


@pytest.mark.parametrize("flags,weighting", [
    ([], "dwm"),
    (["--dwm-disable"], "uniform"),
    (["--domain-weights", "1", "0", "2.5", "1", "1"], "domain"),
    (["--weighting", "domain", "--domain-weights", "1", "0", "2.5", "1", "1"], "domain"),
    (["--weighting", "uniform"], "uniform"),
    (["--weighting", "uniform", "--dwm-disable"], "uniform"),
    (["--weighting", "loss"], "loss"),
    (["--weighting", "dwm"], "dwm"),
])
def test_the_weighting_flag_is_resolved(flags, weighting):
    args = _parse(*flags)
    assert args.weighting == weighting
    assert args.dwm_disable == (weighting != "dwm")


def test_weighting_defaults_and_values():
    args = _parse("--domain-weights", "1", "0", "2.5", "1", "0.25")
    assert args.domain_weights == [1.0, 0.0, 2.5, 1.0, 0.25]
    args = _parse("--weighting", "loss")
    assert (args.loss_weighting_strategy, args.loss_weighting_temperature, args.loss_weighting_warmup_iters) == \
        ("linupper", 1.0, 0)
    args = _parse("--weighting", "loss", "--loss-weighting-strategy", "extremes", "--loss-weighting-temperature",
                  "0.2", "--loss-weighting-warmup-iters", "30")
    assert (args.loss_weighting_strategy, args.loss_weighting_temperature, args.loss_weighting_warmup_iters) == \
        ("extremes", 0.2, 30)


def test_domain_weights_count_follows_the_blend(tmp_path):
    blend = _demo_blend()
    assert _parse("--domain-weights", "3", data=[blend[1]]).domain_weights == [3.0]  # one prefix, no weight
    assert _parse("--domain-weights", "1", "2", data=blend[:4]).weighting == "domain"
    per_split = tmp_path / "split.json"
    per_split.write_text(json.dumps({"train": blend[:6], "valid": blend[6:8]}))
    flags = ["--per-split-data-args-path", str(per_split), *BASE]
    args = parse_args([*flags, "--domain-weights", "1", "2", "3"], world_size=1)
    assert args.weighting == "domain"
    with pytest.raises(ConfigError) as error:
        parse_args([*flags, "--domain-weights", "1", "2", "3", "4", "5"], world_size=1)
    assert "--domain-weights gives 5 weights for 3 training datasets" in str(error.value)


@pytest.mark.parametrize("flags,message", [
    (["--domain-weights", "1", "2", "3"],
     "--domain-weights gives 3 weights for 5 training datasets: give one per dataset, in --data-path order"),
    (["--domain-weights", "0", "0", "0", "0", "0"], "--domain-weights are all 0: no sample would count in the loss"),
    (["--domain-weights", "1", "1", "1", "1", "1", "--weighting", "loss"],
     "--domain-weights applies to --weighting domain, not --weighting loss"),
    (["--domain-weights", "1", "1", "1", "1", "1", "--weighting", "uniform"],
     "--domain-weights applies to --weighting domain, not --weighting uniform"),
    (["--weighting", "domain"], "--weighting domain needs --domain-weights (one weight per training-blend dataset)"),
    (["--dwm-disable", "--weighting", "loss"],
     "--dwm-disable means --weighting uniform, but --weighting loss is given: keep one of them"),
    (["--dwm-disable", "--weighting", "dwm"],
     "--dwm-disable means --weighting uniform, but --weighting dwm is given: keep one of them"),
    (["--domain-weights", "1", "-1", "1", "1", "1"], "--domain-weights 1.0 -1.0 1.0 1.0 1.0 must be >= 0"),
    (["--domain-weights", "1", "-1"], "--domain-weights 1.0 -1.0 must be >= 0"),  # only the range: no count
    (["--domain-weights", "1", "nan", "1", "1", "1"], "--domain-weights 1.0 nan 1.0 1.0 1.0 must be a finite number >= 0"),
    (["--weighting", "loss", "--loss-weighting-temperature", "0"], "--loss-weighting-temperature 0.0 must be > 0"),
    (["--weighting", "loss", "--loss-weighting-temperature", "-2"], "--loss-weighting-temperature -2.0 must be > 0"),
    (["--weighting", "loss", "--loss-weighting-warmup-iters", "-1"], "--loss-weighting-warmup-iters -1 must be >= 0"),
    (["--weighting", "loss", "--micro-batch-size", "1"],
     "--weighting loss normalises the weights over each micro batch: --micro-batch-size 1 would give every sample "
     "weight 1 with --loss-weighting-strategy linupper; use --micro-batch-size 2 or more"),
    (["--weighting", "loss", "--loss-weighting-strategy", "quadratic", "--micro-batch-size", "2"],
     "--weighting loss normalises the weights over each micro batch: --micro-batch-size 2 would give every sample "
     "weight 1 with --loss-weighting-strategy quadratic; use --micro-batch-size 3 or more"),
])
def test_weighting_problems_name_the_flag(flags, message):
    assert _problems(*flags) == [message]


def test_dwm_ranks_without_the_dwm_names_the_policy():
    with pytest.raises(ConfigError) as error:
        parse_args(["--data-path", *_demo_blend(), *BASE, "--weighting", "loss", "--dwm-ranks", "1",
                    "--global-batch-size", "2"], world_size=3)
    assert "--dwm-ranks 1 reserves ranks for the DWM, which --weighting loss does not use: use --dwm-ranks 0" \
        in str(error.value)


def test_unknown_weighting_or_strategy_is_refused_naming_the_flag():
    for flags in (["--weighting", "random"], ["--weighting", "loss", "--loss-weighting-strategy", "cubic"]):
        with pytest.raises(ConfigError) as error:
            _parse(*flags)
        assert f"argument {flags[-2]}: invalid choice: '{flags[-1]}'" in str(error.value)
