"""The LLM side of the DWM's outer step (DESIGN.md section 4, steps 3-6), over megatron-core (the ``BilevelModel`` protocol of
:mod:`megatron_dwm.dwm.hypergradient`).

Passes go through megatron-core's pipeline schedule: forward+backward (gradients reduced over
data-parallel ranks by DDP) for the validation gradient, forward-only for the per-sample losses,
which are then gathered over the data-parallel group into the global batch's order. Under context
parallelism DDP reduces v over DP x CP ranks, so every rank holds the whole v, and each per-sample
loss is already the whole sample's on every CP rank (WeightedLoss): the gather is over DP only, and
every CP rank displaces its parameters alike.

Under --fp16 the validation loss is multiplied by a loss scale S before backward, as in a training
step, so that small gradients survive in fp16, and v is divided by S after, as megatron-core's
optimizer unscales its gradients. S starts at the optimizer's loss scale; where v overflows (the
validation batch's gradient can be larger than the training batch's the scale was found for), the
pass is run again at half the scale, down to 1, as the dynamic loss scaler would back off (the
optimizer's scaler itself is left alone). The forward-only passes are never scaled.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import param_is_not_tensor_parallel_duplicate
from megatron.core.utils import get_model_config

from megatron_dwm.dwm.colocated import gather_over
from megatron_dwm.training.build import distributed_optimizer, model_chunks
from megatron_dwm.training.faults import grads_are_finite
from megatron_dwm.training.loss import WeightedLoss, calculates_per_token_loss, per_token_terms, schedule_loss_scale
from megatron_dwm.training.step import run_global_batch


class MegatronBilevel:
    """One outer step's view of the LLM: its training batch B and validation batch V.

    `model`: the DDP-wrapped model chunk, or this rank's list of them (the interleaved schedule's);
    theta is the parameters of every chunk, in chunk order."""

    def __init__(self, model, optimizer, loss: WeightedLoss, train_batch: list, valid_batch: list,
                 direction: str = "adam") -> None:
        self.chunks = model_chunks(model)
        self.optimizer = optimizer
        self.loss = loss
        self.train_batch = train_batch
        self.valid_batch = valid_batch
        prefixes = [""] if len(self.chunks) == 1 else [f"model{index}." for index in range(len(self.chunks))]
        names = {id(param): prefix + name
                 for prefix, chunk in zip(prefixes, self.chunks) for name, param in chunk.named_parameters()}
        self._adam = AdamPreconditioner(optimizer, names) if direction == "adam" else None
        self._parameters = [param for chunk in self.chunks for param in chunk.parameters() if param.requires_grad]
        self.valid_loss: float | None = None
        self.valid_loss_scale = 1.0  # the loss scale v's pass used

    def parameters(self) -> Sequence[torch.nn.Parameter]:
        return self._parameters

    def validation_gradient(self) -> Sequence[torch.Tensor]:
        """Step 3: v = grad L_V(theta_{t+1}), reduced over data-parallel ranks by DDP (unscaled under --fp16)."""
        scale = float(schedule_loss_scale(self.chunks[0], self._parameters[0].device))
        collected = self._validation_pass(scale)
        while scale > 1.0 and not self._gradients_finite():  # an fp16 overflow: again at half the scale
            scale = max(scale / 2.0, 1.0)
            collected = self._validation_pass(scale)
        self.valid_loss_scale = scale
        if collected is not None:
            losses = gather_over(collected[0], parallel_state.get_data_parallel_group())
            self.valid_loss = float(losses.mean())
        return [param.main_grad for param in self._parameters]

    def _validation_pass(self, scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Forward+backward of V with the loss multiplied by `scale`, the gradient divided by it after."""
        # megatron-core's fp32 optimizer step leaves each parameter's .grad aliasing its DDP main_grad:
        # backward would then accumulate into that buffer and DDP's hook add the result once more
        # (the first micro batch counted twice). Clear them, as a training step does.
        self.optimizer.zero_grad()
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        config = get_model_config(self.chunks[0])
        grad_scale_func = config.grad_scale_func
        config.grad_scale_func = None if scale == 1.0 else (lambda loss: loss * scale)
        try:
            # The distributed optimizer's reduce-scatter would leave each rank the reduced gradient of
            # its own shard only: megatron-core's force_all_reduce gives every rank the whole of v.
            collected = run_global_batch(self.chunks, self.valid_batch, None, self.loss, force_all_reduce=True)
        finally:
            config.grad_scale_func = grad_scale_func
        if scale != 1.0:
            for chunk in self.chunks:
                chunk.scale_gradients(1.0 / scale)
        return collected

    def _gradients_finite(self) -> bool:
        """Whether the gradient buffers hold only finite values on every model-parallel rank (the
        data-parallel ranks hold the same reduced gradient)."""
        nonfinite = torch.tensor([float(not grads_are_finite(self.chunks))], device=self._parameters[0].device)
        dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX, group=parallel_state.get_model_parallel_group())
        return not bool(nonfinite)

    def preconditioner(self, index: int, gradient: torch.Tensor) -> torch.Tensor | float:
        """Step 4: P of --dwm-fd-direction (adam: Adam's 1 / (sqrt(v_hat) + eps); grad: 1)."""
        return 1.0 if self._adam is None else self._adam(self._parameters[index], gradient)

    def global_norm(self, tensors: Sequence[torch.Tensor]) -> float:
        squares = torch.zeros(1, dtype=torch.float64, device=tensors[0].device if tensors else None)
        for param, tensor in zip(self._parameters, tensors):
            if param_is_not_tensor_parallel_duplicate(param):
                squares += tensor.double().pow(2).sum()
        dist.all_reduce(squares, group=parallel_state.get_model_parallel_group())
        return math.sqrt(float(squares))

    def per_sample_losses(self) -> torch.Tensor | None:
        """Step 5: l_i at the current (displaced) parameters, forward only, in the global batch's order:
        the terms of the objective (1/n) sum_i w_i l_i the LLM stepped on (with --calculate-per-token-loss
        each sample's loss times its tokens over the batch's mean, :func:`per_token_terms`)."""
        with torch.no_grad():
            collected = run_global_batch(self.chunks, self.train_batch, None, self.loss, forward_only=True)
        if collected is None:
            return None
        group = parallel_state.get_data_parallel_group()
        losses = gather_over(collected[0], group)
        if not calculates_per_token_loss(self.chunks[0]):
            return losses
        return per_token_terms(losses, gather_over(self.loss.collected_tokens(), group))


class AdamPreconditioner:
    """Adam's ``1 / (sqrt(v_hat) + eps)`` for each model parameter (its fp32 main copy's state under bf16),
    with ``v_hat = exp_avg_sq / (1 - beta2 ** step)``.

    Ours: ``v_hat`` is floored at the validation gradient's square, ``max(v_hat, v^2)``, so every
    element of ``d = P v`` is at most 1 in size. Without the floor a parameter Adam has barely
    seen (an embedding row first met in the validation batch: ``v_hat ~ 0``, ``P ~ 1 / eps``)
    dominates ``d``, ``eps = r / ||d||`` collapses, and the finite difference drowns in rounding.

    A parameter without Adam state (the optimizer has not stepped it) is an error: ``v_hat = 0``
    would silently turn the direction into ``v / (|v| + eps)``.

    Under megatron-core's distributed optimizer each data-parallel rank holds Adam's state for its
    own shard of each parameter only: the shards are put together (an all-reduce over the
    optimizer's data-parallel group, each rank adding its own slice) before ``v_hat`` is formed.
    """

    def __init__(self, optimizer, names: dict[int, str] | None = None) -> None:
        self.names = names or {}  # id(model parameter) -> its name, for error messages
        self.main_of: dict[int, torch.Tensor] = {}  # bf16: the fp32 copy Adam steps; fp32: the parameter itself
        self.group_of: dict[int, tuple[dict, dict]] = {}  # id(main parameter) -> (its group, its optimizer's state)
        # every parameter is sharded over the distributed optimizer's data-parallel group, this
        # rank's shard possibly empty
        self.distributed = distributed_optimizer(optimizer)
        for megatron_optimizer in getattr(optimizer, "chained_optimizers", [optimizer]):  # megatron-core chains them
            if megatron_optimizer is self.distributed:
                continue
            for model_group, main_group in zip(getattr(megatron_optimizer, "float16_groups", []),
                                               getattr(megatron_optimizer, "fp32_from_float16_groups", [])):
                self.main_of.update({id(model_param): main_param
                                     for model_param, main_param in zip(model_group, main_group)})
            inner = megatron_optimizer.optimizer
            self.group_of.update({id(param): (group, inner.state)
                                  for group in inner.param_groups for param in group["params"]})

    def __call__(self, param: torch.nn.Parameter, gradient: torch.Tensor) -> torch.Tensor:
        if self.distributed is not None:
            exp_avg_sq, group, step = _gathered_adam_state(self.distributed, param)
        else:
            main = self.main_of.get(id(param), param)
            group, states = self.group_of[id(main)]
            state = states.get(main, {})
            exp_avg_sq, step = state.get("exp_avg_sq"), _adam_step(state, group)
        if exp_avg_sq is None or not step:
            name = self.names.get(id(param), f"of shape {tuple(param.shape)}")
            raise RuntimeError(f"--dwm-fd-direction adam: the optimizer holds no Adam state for parameter {name} "
                               "(it has not stepped it); use --dwm-fd-direction grad or check the optimizer")
        v_hat = (exp_avg_sq.float() / (1.0 - group["betas"][1] ** step)).view_as(gradient)
        return 1.0 / (torch.maximum(v_hat, gradient.float() ** 2).sqrt() + group["eps"])


def _gathered_adam_state(optimizer, param: torch.nn.Parameter) -> tuple[torch.Tensor | None, dict, float]:
    """(exp_avg_sq of the whole of `param`, its Adam group, Adam's step) from megatron-core's
    DistributedOptimizer, whose data-parallel ranks each hold the state of one slice of `param`
    (possibly none): each rank writes its slice into zeros and the slices are summed over the group.
    Collective: every rank of the optimizer's data-parallel group calls it for the same parameters."""
    inner = optimizer.optimizer
    group, step = inner.param_groups[0], 0.0
    values = torch.zeros(param.numel() + 1, dtype=torch.float32, device=param.device)  # the slices, then a flag
    if param in optimizer.model_param_group_index_map:
        group_index, _ = optimizer.model_param_group_index_map[param]
        group = inner.param_groups[group_index]
        states = optimizer._get_main_param_and_optimizer_states(param)
        step = _adam_step(inner.state.get(states["param"], {}), group)
        if "exp_avg_sq" in states and step:
            piece = optimizer._get_model_param_range_map(param)["param"]
            values[piece.start: piece.end] = states["exp_avg_sq"].float().view(-1)
            values[-1] = 1.0
    steps = torch.tensor([step], dtype=torch.float64, device=param.device)
    dist.all_reduce(values, group=optimizer.data_parallel_group)
    dist.all_reduce(steps, op=dist.ReduceOp.MAX, group=optimizer.data_parallel_group)
    return (values[:-1] if values[-1] > 0 else None), group, float(steps)


def _adam_step(state: dict, group: dict) -> float:
    """How many steps Adam has taken: torch's Adam keeps the count per parameter, Transformer
    Engine's and Apex's FusedAdam (megatron-core's choice on GPU) per parameter group."""
    return float(state.get("step", group.get("step", 0)))
