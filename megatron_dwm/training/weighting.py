"""The DWM's weighting policy (``--weighting dwm``): which weights each step uses, when the DWM
learns, and what is reported about it. The policies without a DWM live in
:mod:`megatron_dwm.training.policies`.

- ``DWMWeighting``: the DWM (colocated on the last pipeline stage, or on its own ranks through
  :class:`~megatron_dwm.dwm.remote.RemoteDWM`) weighs every global batch; on
  the iterations of a DWM phase (:class:`StageSchedule`) it learns from the finite-difference
  hypergradient that :func:`megatron_dwm.training.iteration.train_iteration` computes after the
  LLM's step.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import torch

from megatron_dwm.dwm.colocated import ColocatedDWM, DWMCopy, WeightingPlacement
from megatron_dwm.dwm.hypergradient import FiniteDifference, standardized
from megatron_dwm.dwm.model import (DataWeightingModel, DWMConfig, dwm_config_from_checkpoint,
                                    load_encoder_from_checkpoint)
from megatron_dwm.dwm.schedule import StageSchedule
from megatron_dwm.training.weight_stats import WeightLog


def weight_clip_bounds(args: argparse.Namespace) -> tuple[float, float] | None:
    """--dwm-weight-clip as DWMConfig's bounds: None for "0 inf" (no clip); an infinite MAX becomes the
    global batch size, which no weight of mean-1 weights can exceed."""
    if args.dwm_weight_clip is None:
        return None
    lo, hi = args.dwm_weight_clip
    if lo == 0 and hi == math.inf:
        return None
    return lo, hi if math.isfinite(hi) else float(args.global_batch_size)


def build_dwm(args: argparse.Namespace, vocab_size: int, device: torch.device, group, cls=ColocatedDWM,
              replica_group=None) -> DWMCopy:
    """A copy of the DWM among the holders' `group`, initialised identically on every rank (from --seed);
    `replica_group`: the copies that see the same samples (DWMCopy's)."""
    weighting = dict(vocab_size=vocab_size, seq_length=args.dwm_seq_length, temperature=args.dwm_temperature,
                     weight_clip=weight_clip_bounds(args))
    if args.dwm_init:  # the encoder takes the LM checkpoint's shape
        config = dwm_config_from_checkpoint(args.dwm_init, **weighting)
    else:
        config = DWMConfig(num_layers=args.dwm_num_layers, hidden_size=args.dwm_hidden_size,
                           num_attention_heads=args.dwm_num_attention_heads, **weighting)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = DataWeightingModel(config)
    if args.dwm_init:
        load_encoder_from_checkpoint(model, args.dwm_init)
    optimizer = None if args.dwm_freeze else torch.optim.Adam(model.parameters(), lr=args.dwm_lr)
    return cls(model, optimizer, group, device, replica_group)


def stage_schedule(args: argparse.Namespace) -> StageSchedule:
    """The DWM's stages and phases from --train-iters and the --dwm-* schedule flags."""
    return StageSchedule(args.train_iters, args.dwm_stages, args.dwm_update_iters, args.dwm_update_interval,
                         frozen=args.dwm_freeze)


class DWMWeighting:
    """Weights from the DWM and its outer steps; statistics for the logs."""

    def __init__(self, args: argparse.Namespace, schedule: StageSchedule, dwm: WeightingPlacement | None,
                 samples_log: str | None) -> None:
        self.args = args
        self.schedule = schedule
        self.dwm = dwm  # None off the last pipeline stage
        self.log = WeightLog(samples_log)  # every weighted global batch since the last log
        self._reset_interval()

    def _reset_interval(self) -> None:
        self.fd_records: list[FiniteDifference] = []
        self.valid_losses: list[float] = []
        self.fd_skipped = 0
        self.weights_seconds: list[float] = []  # per iteration: the DWM's forward, or the wait for the DWM ranks
        self._last_hypergradient: torch.Tensor | None = None
        self._last_resolution = math.nan

    def weights(self, microbatches, iteration: int) -> list[torch.Tensor] | None:
        if self.dwm is None:
            return None
        start = time.perf_counter()
        weights = self.dwm.weights(microbatches, iteration, iteration / self.args.train_iters,
                                   keep_graph=self.schedule.updates_dwm(iteration))
        self.weights_seconds.append(time.perf_counter() - start)
        last = self.dwm.last
        if last is not None:  # on the ranks that see the whole global batch
            self.log.add(replace(last, weights=last.weights.detach()))
        return weights

    def observe(self, microbatches, used: list[torch.Tensor]) -> None:
        """The loss used the DWM's weights, already logged by :meth:`weights`."""

    def learns_at(self, iteration: int) -> bool:
        return self.schedule.updates_dwm(iteration)

    def learn(self, result: FiniteDifference, valid_loss: float | None, iteration: int) -> None:
        """DESIGN.md section 4, step 7: the DWM's step from the hypergradient of `iteration` (0-based),
        standardized first unless --dwm-hypergradient-scaling raw; the logs keep the raw one."""
        if self.dwm is None:
            return
        self.fd_records.append(result)
        if valid_loss is not None:
            self.valid_losses.append(valid_loss)
        if result.finite and result.hypergradient is not None:
            self._last_hypergradient = result.hypergradient.detach().double()
            self._last_resolution = result.resolution
            scaled = result.hypergradient
            if self.args.dwm_hypergradient_scaling == "standardized":
                scaled = standardized(scaled)
            self.dwm.apply_hypergradient(scaled)
        else:
            self.fd_skipped += 1
            print(f"iteration {iteration + 1}: the finite-difference pass was not finite; DWM update skipped",
                  flush=True)

    def pop_metrics(self, domains: list[str], iteration: int) -> dict[str, float]:
        """Scalars since the last call (on DWM holders; {} elsewhere), and the batch's weights to
        the samples log."""
        extra = {"stage": self.schedule.stage_of(iteration - 1)}
        if self._last_hypergradient is not None:
            extra.update(hypergradient=self._last_hypergradient.tolist(),
                         hypergradient_resolution=self._last_resolution)
        weight_scalars = self.log.pop(domains, iteration, extra) if self.dwm is not None else {}
        if not weight_scalars:
            self._reset_interval()
            return {}
        scalars: dict[str, float] = {
            "dwm/stage": self.schedule.stage_of(iteration - 1),
            "dwm/phase": int(self.schedule.in_dwm_phase(iteration - 1)),
            **weight_scalars,
            "dwm/weights time (ms)": 1000.0 * sum(self.weights_seconds) / len(self.weights_seconds),
        }
        if self.fd_records:
            norms = [float(r.hypergradient.norm()) for r in self.fd_records if r.hypergradient is not None]
            scalars["dwm/hypergrad norm"] = sum(norms) / len(norms) if norms else math.nan
            scalars["dwm/fd epsilon"] = sum(r.epsilon for r in self.fd_records) / len(self.fd_records)
            scalars["dwm/fd skipped"] = self.fd_skipped
        if self.valid_losses:
            scalars["dwm/valid loss"] = sum(self.valid_losses) / len(self.valid_losses)
        self._reset_interval()
        return scalars
