"""The pretraining loop on megatron-core: build, resume, train, evaluate, checkpoint, log.

One iteration is :func:`megatron_dwm.training.iteration.train_iteration` (DESIGN.md section 4: the
weights, the LLM's step, the finite-difference hypergradient, the DWM's update); the trainer feeds it
global batches, counts the progress, and decides when to log, evaluate, save and stop.

Every stateful piece is saved in the checkpoint by a
:class:`~megatron_dwm.training.checkpoint_manager.CheckpointManager`: model and optimizer
(sharded), RNG states (per rank), scheduler, progress counters (iteration, consumed samples: the
data position) and the weighting policy's DWM. What the run reports goes through a
:class:`~megatron_dwm.training.reporting.TrainingReport`.
"""

from __future__ import annotations

import argparse

from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_dwm.arguments import schedule_flags
from megatron_dwm.model.provider import build_llama_model_chunks, llama_transformer_config
from megatron_dwm.parallel import ParallelContext, print_rank0
from megatron_dwm.platform import get_platform
from megatron_dwm.training import checkpointing
from megatron_dwm.training.build import (
    LossScaling,
    build_optimizer,
    ddp_options,
    enable_overlaps,
    llm_arch,
    transformer_options,
    wrap_ddp_chunks,
)
from megatron_dwm.training.checkpoint_manager import DWM_COMPONENT, CheckpointManager, check_checkpoints
from megatron_dwm.training.data_iterators import TrainingData
from megatron_dwm.training.dwm_ranks import DWMRanksLink, remote_dwm
from megatron_dwm.training.evaluation import evaluate
from megatron_dwm.training.faults import Agreement, Deadline, NonFiniteStepsError, StopSignalHandler, agree
from megatron_dwm.training.flops import num_floating_point_operations, peak_flops_per_device
from megatron_dwm.training.iteration import LLM, FiniteDifferenceSettings, IterationResult, train_iteration
from megatron_dwm.training.loss import WeightedLoss
from megatron_dwm.training.policies import build_local_weighting
from megatron_dwm.training.progress import TrainingProgress
from megatron_dwm.training.reporting import Throughput, TrainingReport, loss_scalars, samples_log_path
from megatron_dwm.training.rng import set_rng_state
from megatron_dwm.training.weighting import DWMWeighting, build_dwm, stage_schedule


class Trainer:
    """Owns the model, optimizer, scheduler, data and progress of one run on the LLM ranks."""

    def __init__(self, args: argparse.Namespace, context: ParallelContext) -> None:
        self.args = args
        self.context = context
        platform = get_platform()
        self.device = platform.device
        self.progress = TrainingProgress()
        self.deadline = Deadline(args.exit_duration_in_mins)
        self._signals: StopSignalHandler | None = None  # installed while train() runs
        resume, dwm_source = check_checkpoints(args)  # before anything is built or written

        tokenizer, self.arch, self.padded_vocab = llm_arch(args)
        config = llama_transformer_config(
            self.arch, tensor_model_parallel_size=args.tensor_model_parallel_size,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
            context_parallel_size=args.context_parallel_size, bf16=args.bf16, fp16=args.fp16,
            init_method_std=args.init_method_std, calculate_per_token_loss=args.calculate_per_token_loss,
            **transformer_options(args))
        chunks = build_llama_model_chunks(self.arch, config, self.padded_vocab, args.seq_length,
                                          pg_collection=context.pg_collection)
        # this rank's DDP-wrapped model chunks: one, or one per virtual pipeline stage (interleaved schedule)
        self.model = wrap_ddp_chunks(chunks, **ddp_options(args))
        enable_overlaps(config, self.model)
        self.optimizer = build_optimizer(
            self.model, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay, clip_grad=args.clip_grad,
            bf16=args.bf16, use_distributed_optimizer=args.use_distributed_optimizer,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
            fp16=args.fp16, loss_scaling=LossScaling.from_args(args))
        config.finalize_model_grads_func = finalize_model_grads
        config.grad_scale_func = self.optimizer.scale_loss
        self.scheduler = build_scheduler(args, self.optimizer)
        self.loss = WeightedLoss(args.loss_kernel, self.device, parallel_state.get_context_parallel_group())
        self.llm = LLM(self.model, self.optimizer, self.scheduler, self.loss, args.global_batch_size)
        self.finite_difference = FiniteDifferenceSettings(args.dwm_fd_direction, args.dwm_fd_radius)
        self.is_logging_rank = context.rank == context.leader  # last stage, as Megatron
        self.dwm_ranks = DWMRanksLink(args, context) if context.layout.dwm_ranks else None
        self.checkpoints = CheckpointManager(self.model, self.optimizer, self.arch)
        self.checkpoints.add("progress", self.progress)
        self.checkpoints.add("scheduler", self.scheduler, with_optimizer=True)
        self.weighting = self._build_weighting()

        if dwm_source is not None:
            self._load_dwm(dwm_source)
        rng_state = self._resume(resume) if resume is not None else None
        if args.save:
            checkpointing.start_write_results_queue()
        if self.dwm_ranks:
            self.dwm_ranks.start(self.progress.state_dict())  # they build the datasets with us
        self.data = TrainingData(args, tokenizer, self.progress, self.device)
        throughput = Throughput(num_floating_point_operations(self.arch, self.padded_vocab, args.seq_length,
                                                              args.global_batch_size), context.layout.llm_world_size,
                                peak_flops_per_device(platform.device_name, args.bf16 or args.fp16))
        self.report = TrainingReport(args, self.is_logging_rank, self.progress.iteration, self.data.domains,
                                     throughput, platform, getattr(self.weighting, "schedule", None))
        if rng_state is not None:
            # Last: building the data loaders draws from torch's generator, as it did at the start of
            # the run that saved these states; the streams continue where that run's stopped.
            set_rng_state(rng_state)

    def _build_weighting(self):
        """The --weighting policy; the DWM's is a checkpoint component (held here, or by the DWM ranks).

        Colocated, every TP and CP rank of the last stage holds a copy; the TP x CP ranks of a replica
        see the same samples (their copies' replica group), and each copy has its own checkpoint replica id."""
        args = self.args
        samples_log = samples_log_path(args) if self.is_logging_rank else None
        if args.weighting != "dwm":
            return build_local_weighting(args, samples_log)
        if not parallel_state.is_pipeline_last_stage():
            dwm = None
        elif self.dwm_ranks:
            dwm = remote_dwm(args, self.context, parallel_state.get_data_parallel_rank(), self.device)
        else:
            dwm = build_dwm(args, self.padded_vocab, self.device, parallel_state.get_data_parallel_group(),
                            replica_group=parallel_state.get_tensor_and_context_parallel_group())
        replica = (parallel_state.get_tensor_model_parallel_rank()
                   * parallel_state.get_data_parallel_world_size(with_context_parallel=True)
                   + parallel_state.get_data_parallel_rank(with_context_parallel=True))
        self.checkpoints.add_component(DWM_COMPONENT, None if self.dwm_ranks else dwm, replica_id=replica)
        return DWMWeighting(args, stage_schedule(args), dwm, samples_log)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        if not self.args.save:
            return
        self._gather_parameters()
        iteration = self.progress.iteration
        common = self.checkpoints.common_state(self.args)
        if self.dwm_ranks:
            self.dwm_ranks.save(self.args.save, iteration,
                                checkpointing.checkpoint_common(iteration, self.model, self.arch, common))
        self.checkpoints.save(self.args.save, iteration, common)

    def _resume(self, resume: checkpointing.ResumePoint) -> dict | None:
        """Restore the checkpoint :func:`check_checkpoints` found; returns the random states to set last."""
        if self.dwm_ranks:
            self.dwm_ranks.load(resume.path, self.checkpoints.saved_components(resume.common, resume.model_only),
                                load_optimizer=True)
        restored = self.checkpoints.load(resume, self.args)
        what = "model" if restored.model_only else "model, progress" + (", optimizer" if restored.with_optimizer
                                                                         else "")
        print_rank0(f"loaded {what} from {resume.path} (iteration {self.progress.iteration}, "
                    f"consumed samples {self.progress.consumed_train_samples})")
        return restored.rng_state

    def _load_dwm(self, path) -> None:
        """--dwm-load: the DWM alone from another run's checkpoint `path` (any size of LLM)."""
        load_optimizer = not self.args.dwm_freeze
        if self.dwm_ranks:
            self.dwm_ranks.load(path, [DWM_COMPONENT], load_optimizer=load_optimizer)
        self.checkpoints.load_components(path, [DWM_COMPONENT], load_optimizer=load_optimizer)
        print_rank0(f"loaded the DWM from {path}" + (" (frozen)" if self.args.dwm_freeze else ""))

    # -- one iteration -----------------------------------------------------------------------
    def train_step(self) -> IterationResult:
        """One global batch (:func:`train_iteration`), then the progress counters."""
        args, progress = self.args, self.progress
        result = train_iteration(self.llm, self.weighting, self.data.next_global_batch(self.data.train),
                                 progress.iteration, self._agree, self._next_dwm_valid_batch, self.finite_difference)
        progress.iteration += 1
        progress.consumed_train_samples += args.global_batch_size
        progress.skipped_iterations += int(result.skipped)
        progress.consecutive_nonfinite = progress.consecutive_nonfinite + 1 if result.decision.nonfinite else 0
        self.report.interval.add(result.collected, result.grad_norm, result.skipped)
        if result.decision.nonfinite:
            self._report_nonfinite()
        return result

    def _agree(self, nonfinite: bool) -> Agreement:
        """Every LLM rank's NaN/Inf, stop-signal and deadline flags, OR-ed (one all-reduce)."""
        return agree(nonfinite, self._signals is not None and self._signals.received is not None,
                     self.deadline.passed(), self.context.llm_group, self.device)

    def _next_dwm_valid_batch(self) -> list:
        """The next validation batch of the DWM's objective (--dwm-valid-batch-size samples)."""
        self.progress.consumed_dwm_valid_samples += self.args.dwm_valid_batch_size
        return self.data.next_global_batch(self.data.dwm_valid, self.args.dwm_valid_batch_size)

    def _report_nonfinite(self) -> None:
        progress, limit = self.progress, self.args.max_consecutive_nonfinite_iters
        print_rank0(f"iteration {progress.iteration}: the loss or gradient is NaN/Inf; update skipped "
                    f"({progress.consecutive_nonfinite} in a row, halting at {limit})")
        if progress.consecutive_nonfinite >= limit:
            raise NonFiniteStepsError(
                f"{progress.consecutive_nonfinite} consecutive iterations (up to {progress.iteration}) "
                f"had a NaN/Inf loss or gradient; halting (--max-consecutive-nonfinite-iters {limit}). "
                "Resume from the last checkpoint with a lower --lr or check the data.")

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> int:
        """Run to --train-iters (or an exit condition); returns the process exit code."""
        args = self.args
        print_rank0(f"training from iteration {self.progress.iteration} to {args.train_iters}: "
                    f"global batch {args.global_batch_size} = {self.data.num_microbatches} micro batches of "
                    f"{args.micro_batch_size} x DP {self.data.dp_size}")
        self._signals = StopSignalHandler().__enter__() if args.exit_signal_handler else None
        saved_at = self.progress.iteration if args.load else None
        interval = self.report.interval
        interval.restart()
        try:
            while self.progress.iteration < args.train_iters:
                decision = self.train_step().decision
                iteration = self.progress.iteration
                if iteration % args.log_interval == 0:
                    self.report.training(iteration, self.optimizer, self.weighting,
                                         self.progress.consumed_train_samples,
                                         parallel_state.is_pipeline_last_stage(),
                                         parallel_state.get_data_parallel_group())
                if iteration % args.eval_interval == 0:
                    with interval.paused():
                        self.run_evaluation()
                if decision.stop_signal or decision.out_of_time or (
                        args.exit_interval and iteration % args.exit_interval == 0):
                    self.save()
                    reason = ("signal received" if decision.stop_signal else
                              "--exit-duration-in-mins reached" if decision.out_of_time else "--exit-interval reached")
                    print_rank0(f"exiting at iteration {iteration}: {reason}")
                    self._stop_dwm_ranks()
                    return 0
                if args.save_interval and iteration % args.save_interval == 0:
                    with interval.paused():
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
            self.report.close()

    def _stop_dwm_ranks(self) -> None:
        """A run that ends well lets the DWM ranks go; one that fails leaves them to notice it is gone."""
        if self.dwm_ranks:
            self.dwm_ranks.stop()

    def _gather_parameters(self) -> None:
        """--overlap-param-gather leaves the all-gather of the updated parameters to the next training forward
        pass: complete it now, before an evaluation or a checkpoint reads them (Megatron-LM's force_param_sync)."""
        if self.args.overlap_param_gather:
            for chunk in self.model:
                chunk.start_param_sync(force_sync=True)

    def run_evaluation(self) -> None:
        """Valid split of the blend (--eval-iters global batches) and the LAMBADA-style set."""
        self._gather_parameters()
        results: dict[str, float] = {}
        if self.data.has_valid:
            totals = evaluate(self.model, lambda: self.data.next_global_batch(self.data.valid), self.args.eval_iters,
                              self.loss, len(self.data.domains), self.device)
            self.progress.consumed_valid_samples += self.args.eval_iters * self.args.global_batch_size
            results.update(loss_scalars("lm loss validation", totals, self.data.domains))
        lambada, batches = self.data.lambada_batches()
        if batches > 0:
            totals = evaluate(self.model, lambda: self.data.next_global_batch(lambada), batches, self.loss, 0,
                              self.device)
            results.update(loss_scalars("dwm-valid loss", totals, []))
        self.report.evaluation(self.progress.iteration, results)


def build_scheduler(args: argparse.Namespace, optimizer) -> OptimizerParamScheduler:
    """Megatron-LM's sample-based schedule: every step counts `global batch size` samples; the
    --*-samples flags are taken as they are, the --*-iters ones times the global batch."""
    flags = schedule_flags(args)
    per = args.global_batch_size if flags.unit == "iters" else 1
    wsd_decay = getattr(args, flags.wsd_decay)
    return OptimizerParamScheduler(
        optimizer, init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=getattr(args, flags.warmup) * per, lr_decay_steps=getattr(args, flags.decay) * per,
        lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay, end_wd=args.weight_decay,
        wd_incr_steps=getattr(args, flags.total) * per, wd_incr_style="constant",
        wsd_decay_steps=wsd_decay * per if wsd_decay else None,
        lr_wsd_decay_style="exponential" if args.lr_decay_style == "WSD" else None,
    )
