"""A copy of the DWM among the ranks that hold one, and its colocated placement (``--dwm-ranks 0``).

:class:`DWMCopy` scores a whole global batch. Each copy encodes its own share of the samples, one
chunk per data-parallel replica it serves; the sample vectors are all-gathered over the holders'
group (n x d floats), and every copy scores the whole global batch, so a weight can depend on the
rest of the batch. Global order: data-parallel replica, then the replica's own order (micro batch,
then sample).

A DWM update backpropagates ``sum_i g_i w_i`` on every copy; each copy holds the encoder's
gradient for its own samples only, so the encoder's gradients are summed over the group (the
mixer's and head's are already identical), and the copies stay identical.

Colocated (:class:`ColocatedDWM`), the holders are the last pipeline stage's ranks and the group
is the data-parallel group: one chunk per copy. On its own ranks (``megatron_dwm.dwm.remote``)
the group is the DWM group and each copy serves DP / A replicas.

Colocated, every tensor- and context-parallel rank of a replica's last stage holds a copy, scoring
the same whole samples with its own data-parallel group: a replica group of copies that see the
same samples (the TP x CP group). Their gradients are taken from the group's first copy before each
step, so the copies stay identical even where their data-parallel groups sum in another order.

:class:`WeightingPlacement` is the interface the trainer uses; both placements implement it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist

from megatron_dwm.dwm.model import DataWeightingModel, safe_weights

Samples = dict[str, torch.Tensor]  # tokens [b, s], domain_id [b], document_id [b]


class WeightingPlacement(Protocol):
    last: "GlobalBatchWeights | None"  # the last weighted global batch (where this rank knows it)

    def weights(self, microbatches: list[Samples], iteration: int, progress: float,
                keep_graph: bool) -> list[torch.Tensor]:
        """This rank's sample weights for `iteration`, one tensor per micro batch."""

    def apply_hypergradient(self, hypergradient: torch.Tensor) -> None:
        """One DWM step from g = dL_V/dw of the last weighted global batch (global order)."""


@dataclass
class GlobalBatchWeights:
    """The last global batch as the DWM saw it (global order)."""

    weights: torch.Tensor  # [n], with the DWM's graph while an update is pending
    domain_id: torch.Tensor  # [n]
    document_id: torch.Tensor  # [n]
    fell_back: bool  # the DWM's output was not finite: uniform weights were used
    local_slice: slice = field(default=slice(0, 0))  # the samples this copy encoded


def gather_over(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate `tensor` of every rank of `group` in rank order (same shape on every rank)."""
    size = dist.get_world_size(group) if dist.is_initialized() else 1
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts)


def concat_samples(microbatches: list[Samples], seq_length: int) -> Samples:
    """One replica's micro batches as one chunk: the DWM's prefix of the tokens, domain and document ids."""
    chunk = {key: torch.cat([batch[key] for batch in microbatches]) for key in ("domain_id", "document_id")}
    chunk["tokens"] = torch.cat([batch["tokens"][:, :seq_length] for batch in microbatches])
    return chunk


class DWMCopy:
    """One copy of the DWM and its optimizer; see the module docstring."""

    def __init__(self, model: DataWeightingModel, optimizer: torch.optim.Optimizer | None,
                 group: dist.ProcessGroup | None, device: torch.device,
                 replica_group: dist.ProcessGroup | None = None) -> None:
        self.model = model.to(device)
        self.optimizer = optimizer
        self.group = group
        self.replica_group = replica_group  # copies that see the same samples (TP x CP); None: none
        self.device = device
        self.last: GlobalBatchWeights | None = None

    def score(self, chunks: list[Samples], progress: float, keep_graph: bool) -> GlobalBatchWeights:
        """Weights of the whole global batch from this copy's chunks (equal sizes on every copy)."""
        local_ids = {key: torch.cat([chunk[key] for chunk in chunks]).to(self.device)
                     for key in ("domain_id", "document_id")}
        with torch.set_grad_enabled(keep_graph):
            vectors_local = torch.cat([self.model.encode(chunk["tokens"].to(self.device)) for chunk in chunks])
            vectors = gather_over(vectors_local.detach(), self.group)
            rank = dist.get_rank(self.group) if dist.is_initialized() else 0
            own = slice(rank * vectors_local.shape[0], (rank + 1) * vectors_local.shape[0])
            vectors = torch.cat([vectors[: own.start], vectors_local, vectors[own.stop:]])  # own slice keeps its graph
            weights, ok = safe_weights(self.model.weights_from_scores(self.model.score(vectors, progress)))
        self.last = GlobalBatchWeights(weights, gather_over(local_ids["domain_id"], self.group),
                                       gather_over(local_ids["document_id"], self.group), not ok, own)
        return self.last

    def apply_hypergradient(self, hypergradient: torch.Tensor) -> None:
        """DESIGN.md section 4, step 7: backpropagate sum_i g_i w_i(phi) (g detached), sum the encoder's
        gradients over the copies, take every gradient from the replica group's first copy, and step the
        DWM's optimizer."""
        if self.optimizer is None or self.last is None or self.last.fell_back:
            return
        self.optimizer.zero_grad(set_to_none=False)
        (hypergradient.detach().to(self.last.weights) * self.last.weights).sum().backward()
        if dist.is_initialized() and dist.get_world_size(self.group) > 1:
            for param in self.model.encoder.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad, group=self.group)
        if self.replica_group is not None and dist.get_world_size(self.replica_group) > 1:
            first = dist.get_global_rank(self.replica_group, 0)
            for param in self.model.parameters():
                if param.grad is not None:
                    dist.broadcast(param.grad, first, group=self.replica_group)
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


class ColocatedDWM(DWMCopy):
    """A copy on a last-stage rank, scoring with the data-parallel group; its own replica's weights."""

    def weights(self, microbatches: list[Samples], iteration: int, progress: float,
                keep_graph: bool) -> list[torch.Tensor]:
        last = self.score([concat_samples(microbatches, self.model.config.seq_length)], progress, keep_graph)
        mine = last.weights[last.local_slice].detach()
        return list(mine.split([batch["tokens"].shape[0] for batch in microbatches]))
