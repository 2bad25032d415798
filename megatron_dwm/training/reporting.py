"""What a training run reports, and where: Megatron-LM's console line, TensorBoard, ``metrics.jsonl``
(:class:`~megatron_dwm.training.metrics.MetricsWriter`) and the per-sample weights
(``dwm_samples.jsonl``, written by the weighting policy's :class:`~megatron_dwm.training.weight_stats.WeightLog`).

- :class:`IntervalStats`: what one log line covers (losses, gradient norms, skipped iterations, time).
- :class:`TrainingReport`: builds each training and validation record and writes it, on the logging
  rank; on the other ranks it only takes part in the collectives.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from megatron_dwm.platform import Platform
from megatron_dwm.training.flops import model_flops_utilization
from megatron_dwm.training.metrics import (METRICS_FILE, PEAK_MEMORY_METRIC, SAMPLES_FILE, DomainTotals, MetricsWriter,
                                          format_log_line, schedule_scalars, set_aside_records_after,
                                          superseded_path)
from megatron_dwm.training.weight_stats import WEIGHT_PREFIX


class IntervalStats:
    """What the console line and TensorBoard report, accumulated since the last log line."""

    def __init__(self, num_domains: int) -> None:
        self.num_domains = num_domains
        self.restart()

    def restart(self) -> None:
        self.totals = DomainTotals(self.num_domains)
        self.grad_norms: list[float] = []
        self.skipped = 0  # updates skipped (a NaN/Inf loss or gradient on some rank, an fp16 overflow)
        self.nan = 0  # iterations whose loss, as this rank sees it, was NaN/Inf
        self.iterations = 0
        self.start = time.time()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpointing) does not count as iteration time."""
        start = time.time()
        try:
            yield
        finally:
            self.start += time.time() - start

    def add(self, collected: tuple[torch.Tensor, torch.Tensor] | None, grad_norm: float | None,
            skipped: bool) -> None:
        if collected is not None:
            self.nan += int(not bool(torch.isfinite(collected[0]).all()))
            if not skipped:
                self.totals.add(*collected)
        if grad_norm is not None:
            self.grad_norms.append(float(grad_norm))
        self.skipped += int(skipped)
        self.iterations += 1

    def seconds_per_iteration(self) -> float:
        return (time.time() - self.start) / max(self.iterations, 1)

    def mean_grad_norm(self) -> float:
        return sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else math.nan


def loss_scalars(name: str, totals: DomainTotals | None, domains: list[str]) -> dict[str, float]:
    """`name`, its perplexity and its per-domain means ({} without totals)."""
    if totals is None:
        return {}
    loss = totals.mean()
    scalars = {name: loss, f"{name} ppl": math.exp(min(loss, 50.0))}
    scalars.update({f"{name}/{domain}": value for domain, value in totals.domain_means(domains).items()})
    return scalars


def metrics_path(args: argparse.Namespace) -> str | None:
    """--metrics-file, or metrics.jsonl in --tensorboard-dir or --save (None: no file)."""
    if args.metrics_file:
        return args.metrics_file
    directory = args.tensorboard_dir or args.save
    return os.path.join(directory, METRICS_FILE) if directory else None


def samples_log_path(args: argparse.Namespace) -> str | None:
    """dwm_samples.jsonl, beside the metrics file (the weighting policy's per-sample weights)."""
    path = metrics_path(args)
    return os.path.join(os.path.dirname(os.path.abspath(path)), SAMPLES_FILE) if path else None


@dataclass(frozen=True)
class Throughput:
    """What turns seconds per iteration into throughput figures."""

    flops_per_step: float
    llm_world_size: int
    peak_flops: float | None  # per device; None where unknown (CPU)


class TrainingReport:
    """The run's records: one per log interval (training) and one per evaluation."""

    def __init__(self, args: argparse.Namespace, is_logging_rank: bool, start_iteration: int, domains: list[str],
                 throughput: Throughput, platform: Platform, schedule: Any = None) -> None:
        self.args = args
        self.is_logging_rank = is_logging_rank
        self.domains = domains
        self.throughput = throughput
        self.platform = platform
        self.interval = IntervalStats(len(domains))
        # The DWM's stage schedule, with a fresh run's first record only: a resumed run's records then
        # equal those of an uninterrupted run.
        self._first_record = schedule_scalars(schedule) if schedule is not None and start_iteration == 0 else {}
        self.writer = MetricsWriter(args.tensorboard_dir, metrics_path(args), start_iteration) \
            if is_logging_rank else None
        if is_logging_rank:
            self._set_aside_later_records(start_iteration)

    def _set_aside_later_records(self, start_iteration: int) -> None:
        """One history: what a replaced run logged after this run's start moves to *.superseded.jsonl."""
        moved = {metrics_path(self.args): self.writer.set_aside}
        samples = samples_log_path(self.args)
        if samples:
            moved[samples] = set_aside_records_after(samples, start_iteration)
        for path, count in moved.items():
            if count:
                print(f"moved {count} records of iterations after {start_iteration} from {path} to "
                      f"{superseded_path(path)} (logged by a run this one replaces)", flush=True)

    def training(self, iteration: int, optimizer: Any, policy: Any, consumed_samples: int,
                 last_stage: bool, data_parallel_group: Any) -> None:
        """The record of the log interval ending at `iteration` (collective over the last stage's
        data-parallel group: the losses are reduced, and the weighting policy gathers its statistics)."""
        stats = self.interval
        if last_stage:
            stats.totals.all_reduce(data_parallel_group, self.platform.device)
        policy_scalars = policy.pop_metrics(self.domains, iteration)
        if self.is_logging_rank:
            scalars = {**self._training_scalars(optimizer, consumed_samples), **policy_scalars, **self._first_record}
            self._first_record = {}
            self.writer.write(iteration, scalars)
            print(format_log_line(iteration, self.args.train_iters, self._console(scalars, policy_scalars)),
                  flush=True)
        stats.restart()

    def _training_scalars(self, optimizer: Any, consumed_samples: int) -> dict[str, float]:
        args, stats, throughput = self.args, self.interval, self.throughput
        seconds = stats.seconds_per_iteration()
        tokens = args.global_batch_size * args.seq_length
        scalars: dict[str, float] = {
            "consumed samples": consumed_samples,
            "elapsed time per iteration (ms)": 1000.0 * seconds,
            "throughput per GPU (TFLOP/s/GPU)": throughput.flops_per_step / seconds / throughput.llm_world_size / 1e12,
            "learning rate": optimizer.param_groups[0]["lr"],
            "global batch size": args.global_batch_size,
            "lm loss": stats.totals.mean(),
            "loss scale": float(optimizer.get_loss_scale()),
            "grad norm": stats.mean_grad_norm(),
            "number of skipped iterations": stats.skipped,
            "number of nan iterations": stats.nan,
            "tokens per second": tokens / seconds,
            "samples per second": args.global_batch_size / seconds,
        }
        mfu = model_flops_utilization(throughput.flops_per_step, seconds, throughput.llm_world_size,
                                      throughput.peak_flops)
        if mfu is not None:
            scalars["MFU"] = mfu
        peak_memory = self.platform.peak_memory_gib()
        if peak_memory is not None:
            scalars[PEAK_MEMORY_METRIC] = peak_memory
        scalars.update({f"lm loss/{name}": value for name, value in stats.totals.domain_means(self.domains).items()})
        return scalars

    def _console(self, scalars: dict[str, float], policy_scalars: dict[str, float]) -> dict[str, float]:
        """The console's share of a record: no per-domain losses; the mean weight per domain as w[...]."""
        console = {k: v for k, v in scalars.items() if "/" not in k or "TFLOP" in k}
        if self.platform.is_cpu:  # FLOP/s of a CPU mean nothing; the metrics file keeps them
            console.pop("throughput per GPU (TFLOP/s/GPU)")
        console.update({f"w[{k.removeprefix(WEIGHT_PREFIX)}]": v for k, v in policy_scalars.items()
                        if k.startswith(WEIGHT_PREFIX)})
        return console

    def evaluation(self, iteration: int, results: dict[str, float]) -> None:
        """The validation record, and Megatron-LM's framed console line."""
        if not self.is_logging_rank or not results:
            return
        self.writer.write(iteration, results)
        line = " | ".join(f"{key}: {value:.6E}" for key, value in results.items() if "/" not in key)
        bar = "-" * (len(line) + 40)
        print(f"{bar}\n validation at iteration {iteration} | {line} |\n{bar}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
