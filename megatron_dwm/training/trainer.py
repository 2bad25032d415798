"""The pretraining loop on megatron-core: build, resume, train, evaluate, checkpoint, log.

One iteration (``train_step``): read this DP rank's micro batches of the global batch, ask the
sample weighting for their weights (uniform unless a weighting is attached), run megatron-core's
pipeline schedule with the weighted per-sample loss, agree over all LLM ranks on NaN/Inf and
stop requests, then take (or skip) the optimizer and learning-rate steps.

Every stateful piece is saved in the checkpoint: model and optimizer (sharded), RNG states (per
rank), scheduler, progress counters (iteration, consumed samples: the data position), and any
component registered with :meth:`Trainer.register_state`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_dwm.data import build_tokenizer
from megatron_dwm.dwm.schedule import StageSchedule
from megatron_dwm.model.provider import build_llama_model, llama_transformer_config
from megatron_dwm.parallel import ParallelContext
from megatron_dwm.platform import get_platform
from megatron_dwm.training import checkpointing
from megatron_dwm.training.build import build_optimizer, llm_arch, wrap_ddp
from megatron_dwm.training.data_iterators import TrainingData
from megatron_dwm.training.dwm_ranks import DWMRanksLink, remote_dwm
from megatron_dwm.training.evaluation import DomainTotals, evaluate
from megatron_dwm.training.faults import (
    Deadline,
    NonFiniteStepsError,
    StopSignalHandler,
    agree,
    grads_are_finite,
)
from megatron_dwm.training.flops import model_flops_utilization, num_floating_point_operations, peak_flops_per_device
from megatron_dwm.training.loss import WeightedLoss
from megatron_dwm.training.metrics import (PEAK_MEMORY_METRIC, MetricsWriter, format_log_line, schedule_scalars,
                                          set_aside_records_after, superseded_path)
from megatron_dwm.training.progress import TrainingProgress
from megatron_dwm.training.rng import RNG_KEY, rank_coordinates, set_rng_state, sharded_rng_state
from megatron_dwm.training.step import run_global_batch
from megatron_dwm.training.policies import build_local_weighting
from megatron_dwm.training.weighting import DWM_COMPONENT, DWMWeighting, build_dwm


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def print_rank0(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


class Trainer:
    """Owns the model, optimizer, scheduler, data and progress of one run on the LLM ranks."""

    def __init__(self, args: argparse.Namespace, context: ParallelContext) -> None:
        self.args = args
        self.context = context
        self.device = get_platform().device
        self.progress = TrainingProgress()
        self.components: dict[str, tuple[Stateful | None, int]] = {}  # name -> (component or None, replica id)
        self.deadline = Deadline(args.exit_duration_in_mins)
        self._signals: StopSignalHandler | None = None  # installed while train() runs
        self._loaded_rng_state: dict[str, Any] | None = None  # the checkpoint's random states, restored last
        resume, dwm_source = self._check_checkpoints()  # before anything is built or written

        tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
        self.arch, self.padded_vocab = llm_arch(args, tokenizer)
        tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
        config = llama_transformer_config(self.arch, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                          bf16=args.bf16)
        model = build_llama_model(self.arch, config, self.padded_vocab, args.seq_length,
                                  pg_collection=context.pg_collection)
        self.model = wrap_ddp(model, use_distributed_optimizer=args.use_distributed_optimizer)
        self.optimizer = build_optimizer(
            self.model, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay, clip_grad=args.clip_grad,
            bf16=args.bf16, use_distributed_optimizer=args.use_distributed_optimizer,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps)
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss
        self.scheduler = self._build_scheduler()
        self.loss = WeightedLoss(args.loss_kernel, self.device)
        self.is_logging_rank = context.rank == context.leader  # last stage, as Megatron
        self.dwm_ranks = DWMRanksLink(args, context) if context.layout.dwm_ranks else None
        self.weighting = self._build_weighting()

        if dwm_source is not None:
            self._load_dwm(dwm_source)
        if resume is not None:
            self.load(resume)
        if args.save:
            checkpointing.start_write_results_queue()
        if self.dwm_ranks:
            self.dwm_ranks.start(self.progress.state_dict())  # they build the datasets with us
        self.data = TrainingData(args, tokenizer, self.progress, self.device)
        self.flops_per_step = num_floating_point_operations(self.arch, self.padded_vocab, args.seq_length,
                                                            args.global_batch_size)
        self.peak_flops = peak_flops_per_device(torch.cuda.get_device_name(), args.bf16) \
            if self.device.type == "cuda" else None
        self.metrics = MetricsWriter(args.tensorboard_dir, self._metrics_path(), self.progress.iteration) \
            if self.is_logging_rank else None
        if self.is_logging_rank:
            self._set_aside_later_records()
        self._interval = _IntervalStats(len(self.data.domains))
        self._schedule_to_log = self._schedule_scalars() if self.progress.iteration == 0 else {}
        if self._loaded_rng_state is not None:
            # Last: building the data loaders draws from torch's generator, as it did at the start of
            # the run that saved these states; the streams continue where that run's stopped.
            set_rng_state(self._loaded_rng_state)

    # -- state -------------------------------------------------------------------------------
    def register_state(self, name: str, component: Stateful | None, replica_id: int = 0) -> None:
        """Save `component.state_dict()` in every checkpoint and restore it on load.

        Collective: every LLM rank registers every name. The component's state is one replicated
        object of the distributed checkpoint: the ranks that hold it pass it (the one with
        `replica_id` 0 writes it), the others pass None. Register before :meth:`load` runs.
        """
        if name in self.components:
            raise ValueError(f"checkpoint component {name!r} is already registered")
        self.components[name] = (component, replica_id)

    def _component_shards(self, names: list[str] | None = None) -> dict[str, ShardedObject]:
        return checkpointing.component_shards(self.components, names)

    def save(self) -> None:
        if not self.args.save:
            return
        sizes, _ = rank_coordinates()
        common = {
            "progress": self.progress.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_layout": sizes,
            "components": sorted(self.components),
            "args": {key: value for key, value in vars(self.args).items() if _plain(value)},
        }
        start = time.time()
        if self.dwm_ranks:
            self.dwm_ranks.save(self.args.save, self.progress.iteration,
                                checkpointing.checkpoint_common(self.progress.iteration, self.model, self.arch, common))
        path = checkpointing.save_checkpoint(self.args.save, self.progress.iteration, self.model, self.arch,
                                             common=common, optimizer=self.optimizer,
                                             sharded={**sharded_rng_state(), **self._component_shards()})
        print_rank0(f"saved checkpoint at iteration {self.progress.iteration:7d} to {path} "
                    f"in {time.time() - start:.2f} s")

    def _check_checkpoints(self) -> tuple[checkpointing.ResumePoint | None, Path | None]:
        """The checkpoint --load starts from (None: a first run) and the one --dwm-load reads, both
        checked to be complete; and --save must hold no checkpoint this run could replace. Raises
        CheckpointError naming the path otherwise, before anything is built or written."""
        args = self.args
        resume = checkpointing.find_resume_point(args.load, args.ckpt_step, args.finetune) if args.load else None
        if args.load and resume is None:
            print_rank0(f"no checkpoint under --load {args.load} (no {checkpointing.TRACKER_FILE}, no iter_*): "
                        "training from scratch")
        elif resume is not None and args.ckpt_step is None:
            tracker = checkpointing.read_tracker(args.load)
            if tracker is not None and checkpointing.checkpoint_name(tracker) != resume.path.name:
                print_rank0(f"{Path(args.load) / checkpointing.TRACKER_FILE} names {tracker}, but {resume.path} is "
                            "newer and complete: resuming from it")
        dwm_source = self._dwm_checkpoint(args.dwm_load) if args.dwm_load and not args.dwm_disable else None
        if args.save:
            checkpointing.check_save_dir(args.save, resume and resume.path, resume.iteration if resume else 0)
        return resume, dwm_source

    @staticmethod
    def _dwm_checkpoint(root: str) -> Path:
        """--dwm-load's checkpoint: the newest complete one under `root`, holding a DWM."""
        path = checkpointing.find_checkpoint(root, flag="--dwm-load")
        if path is None:
            raise checkpointing.CheckpointError(f"--dwm-load {root}: no checkpoint there (no "
                                                f"{checkpointing.TRACKER_FILE}, no iter_*)")
        if DWM_COMPONENT not in checkpointing.load_common(path).get("components", []):
            raise checkpointing.CheckpointError(f"--dwm-load {root}: {path} holds no DWM (its run had none, "
                                                "e.g. --dwm-disable)")
        return path

    def load(self, resume: checkpointing.ResumePoint) -> None:
        """Resume from the checkpoint that :meth:`_check_checkpoints` found."""
        common, path, model_only = resume.common, resume.path, resume.model_only
        self._check_arch(common["arch"], path)
        load_optim = not model_only and not self.args.no_load_optim
        sizes, _ = rank_coordinates()
        same_layout = tuple(common.get("rng_layout", ())) == tuple(sizes)
        load_rng = not model_only and not self.args.no_load_rng and same_layout
        saved = [] if model_only else [name for name in common.get("components", []) if name in self.components]
        if self.dwm_ranks:
            self.dwm_ranks.load(path, saved, load_optimizer=True)
        try:
            state = checkpointing.load_checkpoint(
                path, self.model, optimizer=self.optimizer if load_optim else None,
                sharded={**(sharded_rng_state() if load_rng else {}), **self._component_shards(saved)})
        except checkpointing.CheckpointError as error:  # complete, but its bytes are not what they were
            raise checkpointing.CheckpointError(
                f"--load {self.args.load}: {error}.{checkpointing.resume_hint(path.parent, bad=path)}") from error
        for name in saved:
            component = self.components[name][0]
            if component is not None:
                component.load_state_dict(state[f"components/{name}"])
        if load_rng:
            self._loaded_rng_state = state[RNG_KEY]  # set once the data loaders have drawn their seeds
        elif not model_only and not self.args.no_load_rng:
            print_rank0(f"checkpoint layout (PP, TP, DP) {tuple(common.get('rng_layout', ()))} differs from this "
                        f"run's {tuple(sizes)}: random states start from --seed")
        if not model_only:
            self.progress.load_state_dict(common["progress"])
            if load_optim:
                self.scheduler.load_state_dict(common["scheduler"])
        what = "model" if model_only else "model, progress" + (", optimizer" if load_optim else "")
        print_rank0(f"loaded {what} from {path} "
                    f"(iteration {self.progress.iteration}, consumed samples {self.progress.consumed_train_samples})")

    def _build_weighting(self):
        args = self.args
        samples_log = self._samples_log_path() if self.is_logging_rank else None
        if args.weighting != "dwm":
            return build_local_weighting(args, samples_log)
        schedule = StageSchedule(args.train_iters, args.dwm_stages, args.dwm_update_iters, args.dwm_update_interval,
                                 frozen=args.dwm_freeze)
        holder = parallel_state.is_pipeline_last_stage()
        if not holder:
            dwm = None
        elif self.dwm_ranks:
            dwm = remote_dwm(args, self.context, parallel_state.get_data_parallel_rank(), self.device)
        else:
            dwm = build_dwm(args, self.padded_vocab, self.device, parallel_state.get_data_parallel_group())
        weighting = DWMWeighting(args, schedule, dwm, samples_log)
        replica = (parallel_state.get_tensor_model_parallel_rank() * parallel_state.get_data_parallel_world_size()
                   + parallel_state.get_data_parallel_rank())
        self.register_state(DWM_COMPONENT, None if self.dwm_ranks else dwm, replica_id=replica)  # or the DWM ranks'
        return weighting

    def _load_dwm(self, path: Path) -> None:
        """--dwm-load: the DWM alone from another run's checkpoint `path` (any size of LLM)."""
        key = f"components/{DWM_COMPONENT}"
        if self.dwm_ranks:
            self.dwm_ranks.load(path, [DWM_COMPONENT], load_optimizer=not self.args.dwm_freeze)
        state = checkpointing.load_sharded(self._component_shards([DWM_COMPONENT]), path)
        if key in state:
            self.weighting.dwm.load_state_dict(state[key], load_optimizer=not self.args.dwm_freeze)
        print_rank0(f"loaded the DWM from {path}" + (" (frozen)" if self.args.dwm_freeze else ""))

    def _check_arch(self, saved: dict[str, Any], root: Path) -> None:
        mismatched = [f"{key}: checkpoint {saved[key]}, this run {getattr(self.arch, key)}"
                      for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                                  "num_query_groups", "kv_channels", "vocab_size")
                      if key in saved and saved[key] != getattr(self.arch, key)]
        if mismatched:
            raise checkpointing.CheckpointError(f"--load {root}: the checkpoint's model differs from this run's: "
                                                + "; ".join(mismatched))

    # -- one iteration -----------------------------------------------------------------------
    def train_step(self) -> tuple[bool, Any]:
        """One global batch; returns (stop requested, the step's record for logging)."""
        args = self.args
        microbatches = self.data.next_global_batch(self.data.train)
        weights = self.weighting.weights(microbatches, self.progress.iteration)
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        collected = run_global_batch(self.model, microbatches, weights, self.loss)
        self.weighting.observe(microbatches, self.loss.weights)
        loss_nonfinite = collected is not None and not bool(torch.isfinite(collected[0]).all())
        decision = agree(loss_nonfinite or not grads_are_finite(self.model),
                         self._signals is not None and self._signals.received is not None,
                         self.deadline.passed(), self.context.llm_group, self.device)
        grad_norm = None
        if decision.nonfinite:
            self.progress.skipped_iterations += 1
            self.progress.consecutive_nonfinite += 1
        else:
            learning_rate = self.optimizer.param_groups[0]["lr"]  # eta_t, before the scheduler moves it
            updated, grad_norm, _ = self.optimizer.step()
            if updated:
                self.scheduler.step(increment=args.global_batch_size)
            self.progress.consecutive_nonfinite = 0
            self.weighting.outer_step(self, microbatches, learning_rate)
        self.progress.iteration += 1
        self.progress.consumed_train_samples += args.global_batch_size
        self._interval.add(collected, grad_norm, decision.nonfinite)
        if decision.nonfinite:
            print_rank0(f"iteration {self.progress.iteration}: the loss or gradient is NaN/Inf; update skipped "
                        f"({self.progress.consecutive_nonfinite} in a row, halting at "
                        f"{args.max_consecutive_nonfinite_iters})")
            if self.progress.consecutive_nonfinite >= args.max_consecutive_nonfinite_iters:
                raise NonFiniteStepsError(
                    f"{self.progress.consecutive_nonfinite} consecutive iterations (up to {self.progress.iteration}) "
                    f"had a NaN/Inf loss or gradient; halting (--max-consecutive-nonfinite-iters "
                    f"{args.max_consecutive_nonfinite_iters}). Resume from the last checkpoint with a lower "
                    "--lr or check the data.")
        return decision.stop_signal or decision.out_of_time, decision

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> int:
        """Run to --train-iters (or an exit condition); returns the process exit code."""
        args = self.args
        print_rank0(f"training from iteration {self.progress.iteration} to {args.train_iters}: "
                    f"global batch {args.global_batch_size} = {self.data.num_microbatches} micro batches of "
                    f"{args.micro_batch_size} x DP {self.data.dp_size}")
        self._signals = StopSignalHandler().__enter__() if args.exit_signal_handler else None
        saved_at = self.progress.iteration if args.load else None
        self._interval.restart()
        try:
            while self.progress.iteration < args.train_iters:
                stop, decision = self.train_step()
                iteration = self.progress.iteration
                if iteration % args.log_interval == 0:
                    self._log_training()
                if iteration % args.eval_interval == 0:
                    with self._interval.paused():
                        self.run_evaluation()
                if stop or (args.exit_interval and iteration % args.exit_interval == 0):
                    self.save()
                    reason = ("signal received" if decision.stop_signal else
                              "--exit-duration-in-mins reached" if decision.out_of_time else "--exit-interval reached")
                    print_rank0(f"exiting at iteration {iteration}: {reason}")
                    self._stop_dwm_ranks()
                    return 0
                if args.save_interval and iteration % args.save_interval == 0:
                    with self._interval.paused():
                        self.save()
                    saved_at = iteration
            if args.train_iters % args.eval_interval:
                self.run_evaluation()
            if saved_at != self.progress.iteration:
                self.save()
            self._stop_dwm_ranks()
            return 0
        finally:
            if self._signals is not None:
                self._signals.__exit__()
            if self.metrics is not None:
                self.metrics.close()

    def _stop_dwm_ranks(self) -> None:
        """A run that ends well lets the DWM ranks go; one that fails leaves them to notice it is gone."""
        if self.dwm_ranks:
            self.dwm_ranks.stop()

    # -- evaluation and logging --------------------------------------------------------------
    def run_evaluation(self) -> None:
        """Valid split of the blend (--eval-iters global batches) and the LAMBADA-style set."""
        results: dict[str, float] = {}
        iteration = self.progress.iteration
        if self.data.has_valid:
            totals = evaluate(self.model, lambda: self.data.next_global_batch(self.data.valid), self.args.eval_iters,
                              self.loss, len(self.data.domains), self.device)
            self.progress.consumed_valid_samples += self.args.eval_iters * self.args.global_batch_size
            results.update(_loss_scalars("lm loss validation", totals, self.data.domains))
        lambada, batches = self.data.lambada_batches()
        if batches > 0:
            totals = evaluate(self.model, lambda: self.data.next_global_batch(lambada), batches, self.loss, 0,
                              self.device)
            results.update(_loss_scalars("dwm-valid loss", totals, []))
        if self.is_logging_rank and results:
            self.metrics.write(iteration, results)
            line = " | ".join(f"{key}: {value:.6E}" for key, value in results.items() if "/" not in key)
            bar = "-" * (len(line) + 40)
            print(f"{bar}\n validation at iteration {iteration} | {line} |\n{bar}", flush=True)

    def _log_training(self) -> None:
        stats = self._interval
        if parallel_state.is_pipeline_last_stage():
            stats.totals.all_reduce(parallel_state.get_data_parallel_group(), self.device)
        if self.is_logging_rank:
            args = self.args
            seconds = stats.seconds_per_iteration()
            tokens = args.global_batch_size * args.seq_length
            world = self.context.layout.llm_world_size
            scalars: dict[str, float] = {
                "consumed samples": self.progress.consumed_train_samples,
                "elapsed time per iteration (ms)": 1000.0 * seconds,
                "throughput per GPU (TFLOP/s/GPU)": self.flops_per_step / seconds / world / 1e12,
                "learning rate": self.optimizer.param_groups[0]["lr"],
                "global batch size": args.global_batch_size,
                "lm loss": stats.totals.mean(),
                "loss scale": float(self.optimizer.get_loss_scale()),
                "grad norm": stats.mean_grad_norm(),
                "number of skipped iterations": stats.skipped,
                "number of nan iterations": stats.skipped,
                "tokens per second": tokens / seconds,
                "samples per second": args.global_batch_size / seconds,
            }
            mfu = model_flops_utilization(self.flops_per_step, seconds, world, self.peak_flops)
            if mfu is not None:
                scalars["MFU"] = mfu
            if self.device.type == "cuda":
                scalars[PEAK_MEMORY_METRIC] = torch.cuda.max_memory_allocated() / 2**30
            scalars.update({f"lm loss/{name}": value
                            for name, value in stats.totals.domain_means(self.data.domains).items()})
            dwm = self.weighting.pop_metrics(self.data.domains, self.progress.iteration)
            scalars.update(dwm)
            scalars.update(self._schedule_to_log)  # a fresh run's first record only
            self._schedule_to_log = {}
            self.metrics.write(self.progress.iteration, scalars)
            console = {k: v for k, v in scalars.items() if "/" not in k or "TFLOP" in k}
            if self.device.type != "cuda":  # FLOP/s of a CPU mean nothing; the metrics file keeps them
                console.pop("throughput per GPU (TFLOP/s/GPU)")
            console.update({f"w[{k.removeprefix('dwm/weight/')}]": v for k, v in dwm.items()
                            if k.startswith("dwm/weight/")})
            print(format_log_line(self.progress.iteration, args.train_iters, console), flush=True)
        else:
            self.weighting.pop_metrics(self.data.domains, self.progress.iteration)
        stats.restart()

    def _schedule_scalars(self) -> dict[str, int]:
        """The DWM's stage schedule as `dwm/schedule/...` scalars ({} without a DWM), logged with the
        first training record of a run that starts at iteration 0: a resumed run logs none, so its
        records equal those of an uninterrupted run, and no record of its own holds only them.

        Numbering: the schedule counts 0-based steps (stage s covers steps [s*L, (s+1)*L)), while a
        record's "iteration" counts the steps completed, so step j is logged as iteration j + 1 and
        stage s as iterations s*L + 1 .. (s+1)*L; the analysis draws stage s's start at s*L.
        """
        schedule = getattr(self.weighting, "schedule", None)  # only the DWM's policy has one
        return schedule_scalars(schedule) if isinstance(schedule, StageSchedule) else {}

    def _metrics_path(self) -> str | None:
        if self.args.metrics_file:
            return self.args.metrics_file
        directory = self.args.tensorboard_dir or self.args.save
        return os.path.join(directory, "metrics.jsonl") if directory else None

    def _set_aside_later_records(self) -> None:
        """One history: what a replaced run logged after this run's start moves to *.superseded.jsonl."""
        moved = {self._metrics_path(): self.metrics.set_aside}
        if self._samples_log_path():
            moved[self._samples_log_path()] = set_aside_records_after(self._samples_log_path(), self.progress.iteration)
        for path, count in moved.items():
            if count:
                print(f"moved {count} records of iterations after {self.progress.iteration} from {path} to "
                      f"{superseded_path(path)} (logged by a run this one replaces)", flush=True)

    def _samples_log_path(self) -> str | None:
        """dwm_samples.jsonl, beside the metrics file (the weighting policy's per-sample weights)."""
        if not self._metrics_path():
            return None
        return os.path.join(os.path.dirname(os.path.abspath(self._metrics_path())), "dwm_samples.jsonl")

    def _build_scheduler(self) -> OptimizerParamScheduler:
        """Megatron-LM's sample-based schedule: every step counts `global batch size` samples."""
        args, samples = self.args, self.args.global_batch_size
        return OptimizerParamScheduler(
            self.optimizer, init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr,
            lr_warmup_steps=args.lr_warmup_iters * samples, lr_decay_steps=args.lr_decay_iters * samples,
            lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay, end_wd=args.weight_decay,
            wd_incr_steps=args.train_iters * samples, wd_incr_style="constant",
            wsd_decay_steps=(args.lr_wsd_decay_iters or 0) * samples or None,
            lr_wsd_decay_style="exponential" if args.lr_decay_style == "WSD" else None,
        )


class _IntervalStats:
    """What the console line and TensorBoard report, accumulated since the last log line."""

    def __init__(self, num_domains: int) -> None:
        self.num_domains = num_domains
        self.restart()

    def restart(self) -> None:
        self.totals = DomainTotals(self.num_domains)
        self.grad_norms: list[float] = []
        self.skipped = 0
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

    def add(self, collected, grad_norm: float | None, skipped: bool) -> None:
        if collected is not None and not skipped:
            self.totals.add(*collected)
        if grad_norm is not None:
            self.grad_norms.append(float(grad_norm))
        self.skipped += int(skipped)
        self.iterations += 1

    def seconds_per_iteration(self) -> float:
        return (time.time() - self.start) / max(self.iterations, 1)

    def mean_grad_norm(self) -> float:
        return sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else math.nan


def _loss_scalars(name: str, totals: DomainTotals | None, domains: list[str]) -> dict[str, float]:
    if totals is None:
        return {}
    loss = totals.mean()
    scalars = {name: loss, f"{name} ppl": math.exp(min(loss, 50.0))}
    scalars.update({f"{name}/{domain}": value for domain, value in totals.domain_means(domains).items()})
    return scalars


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, list) and all(isinstance(item, (int, float, str)) for item in value))
