"""The DWM placed on the training ranks that need the weights (``--dwm-ranks 0``).

Every rank of the last pipeline stage holds an identical copy of the DWM. Per step each encodes
its own samples, the sample vectors are all-gathered over the data-parallel group (n x d floats),
and every copy scores the whole global batch, so a weight can depend on the rest of the batch.
Global order: data-parallel rank, then the rank's own order (micro batch, then sample).

A DWM update backpropagates ``sum_i g_i w_i`` on every copy; each copy holds the encoder's
gradient for its own samples only, so the encoder's gradients are summed over the data-parallel
group (the mixer's and head's are already identical), and the copies stay identical.

:class:`WeightingPlacement` is the interface the trainer uses; another placement (the DWM on its
own ranks) implements the same two calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist

from megatron_dwm.dwm.model import DataWeightingModel, safe_weights


class WeightingPlacement(Protocol):
    def weights(self, microbatches: list[dict[str, torch.Tensor]], progress: float,
                keep_graph: bool) -> list[torch.Tensor] | None:
        """This rank's sample weights, one tensor per micro batch (None where no loss is computed)."""

    def apply_hypergradient(self, hypergradient: torch.Tensor) -> None:
        """One DWM step from g = dL_V/dw of the last weighted global batch (global order)."""


@dataclass
class GlobalBatchWeights:
    """The last global batch as the DWM saw it (global order)."""

    weights: torch.Tensor  # [n], with the DWM's graph while an update is pending
    domain_id: torch.Tensor  # [n]
    document_id: torch.Tensor  # [n]
    fell_back: bool  # the DWM's output was not finite: uniform weights were used
    local_slice: slice = field(default=slice(0, 0))


def gather_over(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate `tensor` of every rank of `group` in rank order (same shape on every rank)."""
    size = dist.get_world_size(group) if dist.is_initialized() else 1
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts)


class ColocatedDWM:
    """A DWM copy on one last-stage rank; see the module docstring."""

    def __init__(self, model: DataWeightingModel, optimizer: torch.optim.Optimizer | None,
                 dp_group: dist.ProcessGroup | None, device: torch.device) -> None:
        self.model = model.to(device)
        self.optimizer = optimizer
        self.dp_group = dp_group
        self.device = device
        self.last: GlobalBatchWeights | None = None

    def weights(self, microbatches: list[dict[str, torch.Tensor]], progress: float,
                keep_graph: bool) -> list[torch.Tensor]:
        tokens = torch.cat([batch["tokens"][:, : self.model.config.seq_length] for batch in microbatches])
        local = {key: torch.cat([batch[key] for batch in microbatches]) for key in ("domain_id", "document_id")}
        with torch.set_grad_enabled(keep_graph):
            vectors_local = self.model.encode(tokens)
            vectors = gather_over(vectors_local.detach(), self.dp_group)
            rank = dist.get_rank(self.dp_group) if dist.is_initialized() else 0
            own = slice(rank * tokens.shape[0], (rank + 1) * tokens.shape[0])
            vectors = torch.cat([vectors[: own.start], vectors_local, vectors[own.stop:]])  # own slice keeps its graph
            weights, ok = safe_weights(self.model.weights_from_scores(self.model.score(vectors, progress)))
        self.last = GlobalBatchWeights(weights, gather_over(local["domain_id"], self.dp_group),
                                       gather_over(local["document_id"], self.dp_group), not ok, own)
        mine = weights[own].detach()
        return list(mine.split([batch["tokens"].shape[0] for batch in microbatches]))

    def apply_hypergradient(self, hypergradient: torch.Tensor) -> None:
        if self.optimizer is None or self.last is None or self.last.fell_back:
            return
        self.optimizer.zero_grad(set_to_none=False)
        (hypergradient.detach().to(self.last.weights) * self.last.weights).sum().backward()
        if dist.is_initialized() and dist.get_world_size(self.dp_group) > 1:
            for param in self.model.encoder.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad, group=self.dp_group)
        self.optimizer.step()
        self.last = None

    # checkpoint slot
    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], load_optimizer: bool = True) -> None:
        self.model.load_state_dict(state["model"])
        if load_optimizer and self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
