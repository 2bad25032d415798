"""--calculate-per-token-loss on DP=2 (gloo), through megatron-core's schedule, DDP and
finalize_model_grads, against independent references:

- with non-uniform weights and samples of different numbers of loss tokens, the gradient is
  autograd's of the explicit formula sum_i w_i sum_t m_it l_it / N (N: the global batch's loss
  tokens), the whole batch in one forward;
- with every weight 1 it is the gradient of Megatron-LM's own per-token loss function
  (pretrain_gpt.py's, copied below) through the same schedule;
- the DWM's finite difference measures the per-sample terms of that objective,
  c_i = n sum_t m_it l_it / N, and its hypergradient is the directional derivative
  -(eta / N) grad(sum_t m_it l_it) . d of the explicit formula (autograd) at theta_{t+1}."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_dwm.training.bilevel import MegatronBilevel
from tests.distributed import run_distributed

VOCAB, SEQ = 256, 33
BATCH, MICRO_BATCH, DP = 8, 2, 2
LR = 3e-3
GRAD_RTOL = 1e-5  # float32 reduction order (micro batches, DP ranks), as in test_model_parallel_equivalence


def _samples(seed: int) -> dict[str, torch.Tensor]:
    """BATCH samples; sample i counts its tokens from position 3 i on (32, 29, ..., 11 loss tokens)."""
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(SEQ - 1)
    loss_mask = (positions[None, :] >= 3 * torch.arange(BATCH)[:, None]).float()
    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask,
            "position_ids": positions.expand(BATCH, -1), "domain_id": torch.arange(BATCH)}


WEIGHTS = torch.tensor([0.25 + 0.5 * ((5 * i) % BATCH) for i in range(BATCH)])  # eight weights, none 1


def _token_sums(model, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_t m_it l_it per sample, m): torch's cross-entropy over the model's logits, one forward."""
    logits = model(samples["tokens"], samples["position_ids"], None)
    token_losses = F.cross_entropy(logits.float().transpose(1, 2), samples["labels"], reduction="none")
    return (token_losses * samples["loss_mask"]).sum(dim=1), samples["loss_mask"]


def _explicit_gradients(model, samples, weights) -> list[torch.Tensor]:
    """Autograd of sum_i w_i sum_t m_it l_it / N over the whole global batch."""
    sums, mask = _token_sums(model, samples)
    return list(torch.autograd.grad((weights * sums).sum() / mask.sum(), list(model.parameters())))


def _megatron_lm_loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Megatron-LM's pretrain_gpt.py loss function, as it reduces the per-token losses of the labels=
    path: their masked sum, the number of loss tokens, and the reporting pair."""
    losses = output_tensor.view(-1).float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    reporting_loss = torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])
    return loss, num_tokens, {"lm loss": reporting_loss}


def _megatron_lm_step(ddp, microbatches) -> None:
    from functools import partial

    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return output, partial(_megatron_lm_loss_func, batch["loss_mask"])

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(microbatches), model=[ddp],
                                num_microbatches=len(microbatches), seq_length=SEQ - 1,
                                micro_batch_size=MICRO_BATCH, forward_only=False)


def _relative_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(float((a - e).norm() / e.norm()) for a, e in zip(actual, expected))


class _RecordingBilevel(MegatronBilevel):
    def validation_gradient(self):
        self.v = [tensor.clone() for tensor in super().validation_gradient()]
        return self.v


def _run(rank: int, world_size: int) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.distributed import finalize_model_grads

    from megatron_dwm.dwm.hypergradient import finite_difference_hypergradient
    from megatron_dwm.model.presets import get_preset
    from megatron_dwm.training.build import build_optimizer
    from megatron_dwm.training.loss import WeightedLoss
    from megatron_dwm.training.step import run_global_batch
    from tests.megatron_model import build_on_rank, wrap_ddp

    model = build_on_rank(get_preset("tiny").with_overrides(vocab_size=VOCAB), VOCAB, seq_length=SEQ - 1,
                          calculate_per_token_loss=True)
    with torch.no_grad():  # the replicas start equal, as DDP assumes
        for param in model.parameters():
            dist.broadcast(param, src=0)
    ddp = wrap_ddp(model)
    optimizer = build_optimizer(ddp, lr=LR, clip_grad=0.0)
    model.config.finalize_model_grads_func = finalize_model_grads  # as the trainer
    model.config.grad_scale_func = optimizer.scale_loss
    dp_rank = parallel_state.get_data_parallel_rank()
    samples = _samples(0)
    mine = range(dp_rank * BATCH // DP, (dp_rank + 1) * BATCH // DP, MICRO_BATCH)
    microbatches = [{key: value[i:i + MICRO_BATCH] for key, value in samples.items()} for i in mine]
    weights = [WEIGHTS[i:i + MICRO_BATCH] for i in mine]
    loss = WeightedLoss("torch", torch.device("cpu"))

    def main_grads() -> list[torch.Tensor]:
        return [param.main_grad.clone() for param in model.parameters()]

    result = {}
    ddp.zero_grad_buffer()
    run_global_batch(ddp, microbatches, None, loss)
    uniform = main_grads()
    ddp.zero_grad_buffer()
    _megatron_lm_step(ddp, microbatches)
    result["uniform vs Megatron-LM"] = _relative_error(uniform, main_grads())
    result["uniform vs formula"] = _relative_error(uniform, _explicit_gradients(model, samples, torch.ones(BATCH)))

    ddp.zero_grad_buffer()
    run_global_batch(ddp, microbatches, weights, loss)
    explicit = _explicit_gradients(model, samples, WEIGHTS)
    result["weighted vs formula"] = _relative_error(main_grads(), explicit)
    result["formula vs rolled weights"] = _relative_error(_explicit_gradients(model, samples, WEIGHTS.roll(1)),
                                                         explicit)

    # The outer step after the LLM's step on that loss: the terms the finite difference measures and its
    # hypergradient, against the explicit formula at theta_{t+1} along the direction d = v it used.
    optimizer.step()
    valid = [{key: value[i:i + MICRO_BATCH] for key, value in _samples(1).items()} for i in mine]
    bilevel = _RecordingBilevel(ddp, optimizer, loss, microbatches, valid, direction="grad")
    fd = finite_difference_hypergradient(bilevel, LR, BATCH)
    sums, mask = _token_sums(model, samples)
    tokens = mask.sum()
    with torch.no_grad():
        result["terms"], result["explicit terms"] = bilevel.per_sample_losses(), BATCH * sums / tokens
    directional = [sum(float((g * v).sum()) for g, v in zip(torch.autograd.grad(sums[i], list(model.parameters()),
                                                                                 retain_graph=True), bilevel.v))
                   for i in range(BATCH)]
    result["hypergradient"] = fd.hypergradient.double()
    result["explicit hypergradient"] = -(LR / float(tokens)) * torch.tensor(directional, dtype=torch.float64)
    result["sample-mean hypergradient"] = result["explicit hypergradient"] * float(tokens) / BATCH / mask.sum(dim=1)
    result["resolution"] = fd.resolution
    return result


def test_per_token_loss_on_two_data_parallel_ranks_matches_the_formula():
    for rank, result in enumerate(run_distributed(_run, DP)):
        scalars = {key: value for key, value in result.items() if isinstance(value, float)}
        print(f"rank {rank}: " + ", ".join(f"{key} {value:.1e}" for key, value in scalars.items()))
        assert result["uniform vs Megatron-LM"] < GRAD_RTOL
        assert result["uniform vs formula"] < GRAD_RTOL
        assert result["weighted vs formula"] < GRAD_RTOL
        assert result["formula vs rolled weights"] > 1000 * GRAD_RTOL  # a weight on the wrong sample would show

        torch.testing.assert_close(result["terms"], result["explicit terms"], rtol=0, atol=5e-5)
        g, exact = result["hypergradient"], result["explicit hypergradient"]
        tolerance = 1e-3 * float(exact.abs().max()) + 4 * result["resolution"]
        print(f"rank {rank}: hypergradient max |g - exact| {float((g - exact).abs().max()):.1e} (tolerance "
              f"{tolerance:.1e}, max |exact| {float(exact.abs().max()):.1e}; sample means' "
              f"{float((g - result['sample-mean hypergradient']).abs().max()):.1e})")
        assert float((g - exact).abs().max()) <= tolerance, (g, exact)
        # what the finite difference of the samples' mean losses would give is far off: the tokens count
        assert float((g - result["sample-mean hypergradient"]).abs().max()) > 20 * tolerance
