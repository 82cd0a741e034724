"""Trainer: the training loop shared by all experiments (docs/design.md, "Training, checkpoints and resume").

One optimizer step: take a batch of `batch_size * gradient_accumulation_steps` samples, cut it into sub-batches of
`batch_size`, run forward/backward on each with the loss divided by the number of sub-batches (DDP syncs gradients
on the last one only), unscale and clip, then step the optimizer and the lr schedule unless the loss or gradients
are not finite. Around the step: logging, validation with best checkpoint, early stopping and lr drops, interval
checkpoints. Devices, DDP, autocast and gradient scaling are torch's own (`DistributedDataParallel`,
`torch.autocast`, `torch.amp.GradScaler`); accelerate's process-wide state would pin one precision per process.

Tensorboard tags (rank 0, under model_path): `{metric}/iterations/{split}`, `{metric}/samples/{split}`,
`lr/iterations/param_group_{i}`, `grad_norm/iterations/train` (global norm before clipping),
`time_per_iteration/iterations/train` (seconds), `nonfinite_steps/iterations/train` (skipped steps),
`validations_without_improvement/iterations/valid` (early-stopping patience used).
"""
import contextlib
import dataclasses
import itertools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_scheduler

from .batches import ForwardArgumentFilter, TrainBatchStream, batch_num_samples, move_to_device, split_batch
from .checkpoint import (apply_model_state, find_latest_checkpoint, iteration_checkpoint_name,
                         load_checkpoint, save_checkpoint)
from .errors import BadInputError, RunFailure, interrupt_exit_code
from .metrics import MetricsAccumulator, loss_batch_metrics
from .rng import get_rng_state, set_rng_state, set_seed
from .run_folder import check_writable
from .trainer_args import TrainerArgs
from .distributed import hold_process_group, init_distributed

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TENSORBOARD_QUEUE_SIZE = 1000


class NonFiniteLossError(RunFailure):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


class NonFiniteWeightsError(RunFailure):
    """The model holds NaN or infinite weights, or gives a non-finite validation loss: its metrics would be
    meaningless and its checkpoints useless."""


@dataclasses.dataclass
class _IntervalStats:
    """What the training log reports, accumulated since the last log line."""

    steps: int = 0
    skipped_steps: int = 0
    grad_norm_sum: float | torch.Tensor = 0.0
    started_at: float = dataclasses.field(default_factory=time.perf_counter)


@contextlib.contextmanager
def _deferred_stop_signals():
    """Record SIGTERM/SIGINT instead of dying, so that the current step can finish and be saved.

    Yields the list of received signal numbers. A second SIGINT interrupts at once (KeyboardInterrupt). When the
    block ends with SystemExit (the run stopped on a signal), the recording handlers stay: under torchrun a process
    may be stopped by another process's signal and receive its own a moment later, which must not kill it while it
    exits cleanly.
    """
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def record(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {signum: signal.signal(signum, record) for signum in STOP_SIGNALS}
    try:
        yield received
    except SystemExit:
        raise
    except BaseException:
        _restore_handlers(previous)
        raise
    _restore_handlers(previous)


def stop_exit_code(received_signals: list) -> int:
    """The exit code of a run stopped by a signal, after its resumable checkpoint is saved.

    Ctrl-C (SIGINT) gives `interrupt_exit_code()`: 130, or 0 under torchrun. SIGTERM gives 0: a scheduler's stop,
    after which the job is requeued and resumes.
    """
    return interrupt_exit_code() if signal.SIGINT in received_signals else 0


def _restore_handlers(handlers: dict) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


class Trainer:
    """Trains `model` with `optimizer` on `train_dataloader` and validates on `valid_dataloader`.

    Args:
        args: TrainerArgs, or any object (argparse Namespace) holding its fields; missing ones take defaults.
        model: returns a mapping with 'loss' when called with the batch keys its forward accepts.
        optimizer: built on `model.parameters()`; the Trainer moves the model to its device without copying them.
        train_dataloader: yields batches (mappings) of batch_size * gradient_accumulation_steps samples; may be
            None for evaluation-only use.
        valid_dataloader: validation batches, or None.
        train_sampler: the sampler whose `set_epoch` is called each epoch; defaults to train_dataloader.sampler.
        batch_transform_fn: applied to each batch before it is moved to the device and split.
        batch_metrics_fn, keep_for_metrics_fn, metrics_fn: metric hooks, see `lm_experiments_tools.metrics`.
            keep_for_metrics_fn also runs on training sub-batches (whose outputs have no generation_outputs).
        forward_kwargs: extra keyword arguments of every forward call.
        generate_kwargs: keyword arguments of model.generate when args.use_generate_on_valid.
    """

    def __init__(self, args, model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_dataloader,
                 valid_dataloader, train_sampler=None, batch_transform_fn: Callable | None = None,
                 batch_metrics_fn: Callable = loss_batch_metrics, keep_for_metrics_fn: Callable | None = None,
                 metrics_fn: Callable | None = None, forward_kwargs: dict | None = None,
                 generate_kwargs: dict | None = None):
        self.args = TrainerArgs.from_any(args)
        self.distributed = init_distributed()
        self.is_main = self.distributed.is_main
        self.device = self.distributed.device
        self.valid_dataloader = valid_dataloader
        self._check_setup()
        self.model = model.to(self.device)
        self.ddp_model = self._wrap_for_processes(self.model)
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.args.lr is not None:  # a group may run at a multiple of --lr (e.g. parameters that start from scratch)
            for group in optimizer.param_groups:
                group["lr"] = self.args.lr * group.get("lr_scale", 1.0)
        has_train_data = train_dataloader is not None
        self.batch_stream = TrainBatchStream(train_dataloader, train_sampler) if has_train_data else None
        self.batch_transform_fn = batch_transform_fn
        self.metric_hooks = (batch_metrics_fn, keep_for_metrics_fn, metrics_fn)
        self.train_metrics = MetricsAccumulator(*self.metric_hooks)
        self.forward_filter = ForwardArgumentFilter(model)
        self.forward_kwargs = forward_kwargs or {}
        self.generate_kwargs = generate_kwargs or {}
        self.autocast_dtype = torch.float16 if self.args.fp16 else torch.bfloat16 if self.args.bf16 else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.args.fp16)
        self.lr_scheduler = self._build_lr_scheduler()
        self.n_iter, self.n_samples = 0, 0
        self.best_metrics, self.best_metric_value, self.validations_without_improvement = None, None, 0
        self.nonfinite_streak = 0
        self.last_train_metrics = {}
        self._restore_point = None  # (data position, per-rank random states) applied when train() starts
        self._interval = _IntervalStats()
        self._last_validation_step, self._last_save_step = None, None
        self._resumed = self._load_initial_checkpoint()
        # purge_step hides events an interrupted run logged after its last checkpoint
        self._tb, self._tb_purge_step = None, self.n_iter + 1 if self.n_iter else None

    # ---- setup -------------------------------------------------------------------------------------------------
    def _check_setup(self) -> None:
        """Errors that depend on more than the arguments: raised before anything is trained."""
        if self.args.use_lr_drop and self.valid_dataloader is None:
            raise ValueError("use_lr_drop needs validation data: expected a valid_dataloader")
        if self.args.init_checkpoint is not None and not Path(self.args.init_checkpoint).is_file():
            raise BadInputError(f"init_checkpoint={self.args.init_checkpoint!r} does not exist: expected a "
                                f"checkpoint file")
        if self.args.model_path is not None:
            check_writable(Path(self.args.model_path))
        if self.valid_dataloader is None and (self.args.save_best or self.args.early_stopping_patience
                                              or self.args.early_stopping_target is not None):
            logger.warning("save_best / early_stopping_patience / early_stopping_target have no effect without a "
                           "valid_dataloader")

    def _wrap_for_processes(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.distributed.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        hold_process_group(self)
        return DistributedDataParallel(model, device_ids=device_ids,
                                       find_unused_parameters=self.args.ddp_find_unused_parameters)

    def release_process_group(self) -> None:
        """Drop the DistributedDataParallel wrapper, whose reducer holds the process group; the process group's
        teardown calls this (`lm_experiments_tools.distributed.hold_process_group`). Training needs a new Trainer
        after."""
        self.ddp_model = self.model

    def _build_lr_scheduler(self):
        """A per-step schedule (transformers.get_scheduler), a plateau lr drop, or None for a constant lr."""
        args = self.args
        if args.use_lr_drop:
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=args.optimize_mode, factor=args.lr_drop_factor, patience=args.lr_drop_patience,
                threshold=args.lr_drop_threshold, threshold_mode=args.lr_drop_threshold_mode,
                cooldown=args.lr_drop_cooldown, min_lr=args.lr_drop_min_lr, eps=args.lr_drop_eps)
        if args.lr_scheduler is None:
            return None
        return get_scheduler(args.lr_scheduler, self.optimizer, num_warmup_steps=args.num_warmup_steps,
                             num_training_steps=args.num_training_steps or args.iters)

    def _load_initial_checkpoint(self) -> bool:
        """Load what `resume` or `init_checkpoint` asks for; True when resuming a run exactly."""
        args = self.args
        if args.resume:
            latest = find_latest_checkpoint(args.model_path, loadable=True)  # skips damaged files, warning
            if latest is not None:
                self._log(f"resuming from {latest}")
                self.load(latest)
                return True
            self._log(f"resume: no checkpoint in {args.model_path} yet, starting a new run")
        if args.init_checkpoint is not None:
            self.load(args.init_checkpoint, reset_optimizer=args.reset_optimizer, reset_lr=args.reset_lr,
                      reset_iteration=args.reset_iteration)
        return False

    @property
    def tb(self):
        """The tensorboard writer (rank 0 with a model_path, else None), opened at its first use: a run that fails
        before it logs anything leaves no events file, so its folder holds no run (lm_experiments_tools.run_folder)."""
        if self._tb is None and self.is_main and self.args.model_path is not None:
            from torch.utils.tensorboard import SummaryWriter  # slow import, needed only when writing logs
            # a long queue keeps the training loop from waiting on the writer thread
            self._tb = SummaryWriter(log_dir=self.args.model_path, purge_step=self._tb_purge_step,
                                     max_queue=TENSORBOARD_QUEUE_SIZE)
        return self._tb

    def _log(self, message: str, level: int = logging.INFO) -> None:
        if self.is_main:
            logger.log(level, message)

    # ---- training ----------------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Train until `iters` optimizer steps or early stopping.

        On SIGTERM/SIGINT the current step finishes, a resumable checkpoint model_{n_iter}.pth is written and the
        process exits (SystemExit) with code 0 after SIGTERM, 130 after SIGINT (see `stop_exit_code`).

        Returns:
            The best validation metrics, or the last training metrics when there is no validation data.
        """
        if self.batch_stream is None:
            raise ValueError("train() needs a train_dataloader: expected a DataLoader, got None")
        self._check_optimize_metric()
        self._start_position()
        self.ddp_model.train()
        self._interval = _IntervalStats()
        progress = tqdm(total=self.args.iters, initial=self.n_iter, desc="train", disable=not self.is_main)
        try:
            with _deferred_stop_signals() as received_signals, progress:
                while self.n_iter < self.args.iters:
                    stop_requested = self._train_step(received_signals)
                    progress.update(1)
                    early_stop = self._after_step()
                    if stop_requested:
                        self._save_and_exit(received_signals)
                    if early_stop:
                        break
        finally:
            if self._tb is not None:
                self._tb.flush()  # a failed run keeps its curves: its process may end without shutting down
        self._finish()
        return self.best_metrics if self.best_metrics is not None else self.last_train_metrics

    def _start_position(self) -> None:
        """Seed a new run, or put data and random states where the loaded checkpoint left them."""
        rank = self.distributed.rank
        if self._restore_point is None or not (self._resumed or self.args.skip_used_data):
            set_seed(self.args.seed + rank)
            return
        position, rng_states = self._restore_point
        own_states = rng_states[rank] if rng_states and rank < len(rng_states) else None
        self.batch_stream.load_state_dict({**position, "epoch_rng_state": own_states and own_states["epoch_start"]})
        if own_states is None:
            self._log("the checkpoint has no random states for this process: reseeding", logging.WARNING)
            set_seed(self.args.seed + rank + self.n_iter)
        else:
            set_rng_state(own_states["step"])
        self._restore_point = None

    def _next_batch(self) -> dict:
        batch = next(self.batch_stream)
        expected = self.args.batch_size * self.args.gradient_accumulation_steps
        if batch_num_samples(batch) > expected:
            raise ValueError(f"train_dataloader yields batches of {batch_num_samples(batch)} samples: expected at "
                             f"most batch_size * gradient_accumulation_steps = {expected}")
        return self._prepare_batch(batch)

    def _prepare_batch(self, batch) -> dict:
        if self.batch_transform_fn is not None:
            batch = self.batch_transform_fn(batch)
        return move_to_device(batch, self.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()  # a disabled torch.autocast still costs tens of microseconds per call
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _forward(self, model: torch.nn.Module, batch: dict):
        with self._autocast():
            output = model(**self.forward_filter(batch), **self.forward_kwargs)
        if not isinstance(output, Mapping) or "loss" not in output:
            keys = list(output) if isinstance(output, Mapping) else type(output).__name__
            raise ValueError(f"the model output is {keys}: expected a mapping with 'loss'")
        return output

    def _train_step(self, received_signals: list) -> bool:
        """One optimizer step over one dataloader batch; returns whether all processes agreed to stop after it."""
        batch = self._next_batch()
        sub_batches = split_batch(batch, self.args.batch_size)
        loss_sum = 0.0
        for i, sub_batch in enumerate(sub_batches):
            is_last = i == len(sub_batches) - 1
            # gradients are all-reduced once per step, on the last sub-batch
            sync = contextlib.nullcontext() if is_last or self.ddp_model is self.model else self.ddp_model.no_sync()
            with sync:
                output = self._forward(self.ddp_model, sub_batch)
                loss = output["loss"] / len(sub_batches)
                self.scaler.scale(loss).backward()
            loss_sum = loss_sum + loss.detach()
            self.train_metrics.add(sub_batch, output)
        grad_norm = self._unscale_and_clip()
        # loss + norm is finite iff both are; with fp16 the scaler itself skips steps with overflowing gradients
        checked = loss_sum if self.scaler.is_enabled() else loss_sum + grad_norm
        nonfinite, stop_requested = self._agree_across_processes(~torch.isfinite(checked), bool(received_signals))
        self._apply_update(nonfinite, grad_norm)
        self.n_iter += 1
        self.n_samples += batch_num_samples(batch) * self.distributed.world_size
        return stop_requested

    def _unscale_and_clip(self) -> torch.Tensor:
        """Global gradient norm before clipping."""
        self.scaler.unscale_(self.optimizer)
        if self.args.clip_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(self.params, self.args.clip_grad_norm)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.args.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.args.clip_grad_value)
        return grad_norm

    def _agree_across_processes(self, nonfinite: torch.Tensor, signal_received: bool) -> tuple[bool, bool]:
        """Skip and stop decisions taken by one process apply to all (a signal may reach them at different steps)."""
        if self.distributed.world_size == 1:
            return bool(nonfinite), signal_received
        flags = torch.stack([nonfinite, torch.tensor(signal_received, device=self.device)]).int()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        nonfinite, stop_requested = flags.tolist()
        return bool(nonfinite), bool(stop_requested)

    def _apply_update(self, nonfinite: bool, grad_norm: torch.Tensor) -> None:
        """Optimizer and lr schedule step, unless the step is skipped (by us or by the fp16 grad scaler)."""
        self._interval.steps += 1
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        if nonfinite:
            self._count_nonfinite_step()
        else:
            self.nonfinite_streak = 0
            self._interval.grad_norm_sum = self._interval.grad_norm_sum + grad_norm.detach()
            self.scaler.step(self.optimizer)
        self.scaler.update()  # also after a skipped step: the scaler must see each unscale_ followed by update
        scaler_skipped = scale is not None and self.scaler.get_scale() < scale
        if not nonfinite and not scaler_skipped and self.lr_scheduler is not None and not self.args.use_lr_drop:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _count_nonfinite_step(self) -> None:
        self.nonfinite_streak += 1
        self._interval.skipped_steps += 1
        limit = self.args.max_nonfinite_steps
        self._log(f"step {self.n_iter + 1}: non-finite loss or gradients, optimizer step skipped "
                  f"({self.nonfinite_streak} in a row, limit {limit})", logging.WARNING)
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"{self.nonfinite_streak} consecutive steps up to step {self.n_iter + 1} had a non-finite loss or "
                f"gradients (max_nonfinite_steps={limit}); stopping without saving, the last good checkpoint in "
                f"{self.args.model_path} is kept")

    def _after_step(self) -> bool:
        """Log, validate and save as the intervals say; returns whether early stopping ends training."""
        args = self.args
        if self.n_iter % args.log_interval == 0:
            self._log_train()
        early_stop = False
        if self.valid_dataloader is not None and args.valid_interval and self.n_iter % args.valid_interval == 0:
            early_stop = self._validate_and_decide()
        if args.save_interval and self.n_iter % args.save_interval == 0:
            self.save(args.model_path)
        return early_stop

    def _finish(self) -> None:
        """Log the last partial interval, validate and save once more unless this step already did."""
        if self._interval.steps:
            self._log_train()
        if self.valid_dataloader is not None and self._last_validation_step != self.n_iter:
            self._validate_and_decide()
        if self.args.save_interval and self._last_save_step != self.n_iter:
            self.save(self.args.model_path)
        if self._tb is not None:
            self._tb.flush()

    def _save_and_exit(self, received_signals: list) -> None:
        # under torchrun another process may have been the one that got the signal
        name = signal.Signals(received_signals[0]).name if received_signals else "a stop signal on another process"
        if self.args.model_path is None:
            self._log(f"{name} received after step {self.n_iter}; no model_path, nothing saved", logging.WARNING)
        else:
            self.save(self.args.model_path)
            checkpoint = Path(self.args.model_path) / iteration_checkpoint_name(self.n_iter)
            self._log(f"{name} received: stopped after step {self.n_iter}, resumable checkpoint {checkpoint}; "
                      f"continue with --resume", logging.WARNING)
        if self._tb is not None:
            self._tb.close()
        raise SystemExit(stop_exit_code(received_signals))

    # ---- logging -----------------------------------------------------------------------------------------------
    def _log_train(self) -> None:
        """Training metrics of the interval (gathered over processes) to tensorboard and the log."""
        stats = self._interval
        metrics = self.train_metrics.compute()
        self.last_train_metrics = metrics
        seconds_per_step = (time.perf_counter() - stats.started_at) / max(stats.steps, 1)
        updated_steps = stats.steps - stats.skipped_steps
        grad_norm = float(stats.grad_norm_sum) / updated_steps if updated_steps else float("nan")
        self._write_scalars(metrics, "train")
        if self.tb is not None:
            for i, group in enumerate(self.optimizer.param_groups):
                self.tb.add_scalar(f"lr/iterations/param_group_{i}", group["lr"], self.n_iter)
            self.tb.add_scalar("grad_norm/iterations/train", grad_norm, self.n_iter)
            self.tb.add_scalar("time_per_iteration/iterations/train", seconds_per_step, self.n_iter)
            self.tb.add_scalar("nonfinite_steps/iterations/train", stats.skipped_steps, self.n_iter)
        shown = " | ".join(f"{name} {value:.4g}" for name, value in metrics.items())
        self._log(f"step {self.n_iter}/{self.args.iters} | {shown} | lr {self.optimizer.param_groups[0]['lr']:.3g} "
                  f"| grad_norm {grad_norm:.3g} | {seconds_per_step:.3f} s/step")
        self._interval = _IntervalStats()

    def _write_scalars(self, metrics: dict, split: str) -> None:
        if self.tb is None:
            return
        for name, value in metrics.items():
            self.tb.add_scalar(f"{name}/iterations/{split}", value, self.n_iter)
            self.tb.add_scalar(f"{name}/samples/{split}", value, self.n_samples)

    # ---- validation --------------------------------------------------------------------------------------------
    def validate(self, dataloader, split: str = "valid", write_tb: bool = True) -> dict:
        """Evaluate on `dataloader` (any dataloader, not only the trainer's own).

        The random states are left as they were, so validating does not change how training continues.

        Args:
            dataloader: batches as the model takes them (not split into sub-batches).
            split: name used in tensorboard tags and the log.
            write_tb: write `{metric}/iterations/{split}` and `{metric}/samples/{split}` (rank 0).

        Returns:
            {metric: float}, the same on every process.
        """
        self._check_finite_weights(f"before {split} validation")
        metrics = self._evaluate(dataloader, split)
        if not math.isfinite(metrics.get("loss", 0.0)):  # finite but huge weights overflow in the forward pass
            raise NonFiniteWeightsError(
                f"non-finite {split} loss ({metrics['loss']}) at step {self.n_iter}: the model's outputs overflow, "
                f"training diverged (lr {self.optimizer.param_groups[0]['lr']:.3g}) or the loaded weights are bad; "
                f"nothing recorded")
        if write_tb:
            self._write_scalars(metrics, split)
            if self._tb is not None:  # a caller's last validation (the test split) is on disk when it returns
                self._tb.flush()
        shown = " | ".join(f"{name} {value:.4g}" for name, value in metrics.items())
        self._log(f"step {self.n_iter} {split}: {shown}")
        return metrics

    def _evaluate(self, dataloader, split: str, max_batches: int | None = None) -> dict:
        rng_state = get_rng_state()
        was_training = self.model.training
        self.model.eval()
        accumulator = MetricsAccumulator(*self.metric_hooks)
        batches = itertools.islice(dataloader, max_batches)
        with torch.no_grad():
            for batch in tqdm(batches, desc=split, disable=not self.is_main, leave=False):
                batch = self._prepare_batch(batch)
                output = self._forward(self.model, batch)
                if self.args.use_generate_on_valid:
                    output = {**output, "generation_outputs": self._generate(batch)}
                accumulator.add(batch, output)
        self.model.train(was_training)
        set_rng_state(rng_state)
        return accumulator.compute()

    def _generate(self, batch: dict):
        input_ids = batch.get("input_ids_generate", batch["input_ids"])
        attention_mask = batch.get("attention_mask_generate", batch.get("attention_mask"))
        with self._autocast():
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **self.generate_kwargs)

    def _check_optimize_metric(self) -> None:
        """Fail before the first step if validation will not produce optimize_metric (one batch is evaluated)."""
        if self.valid_dataloader is None:
            return
        self._metric_value(self._evaluate(self.valid_dataloader, "check", max_batches=1))

    def _metric_value(self, metrics: dict) -> float:
        if self.args.optimize_metric not in metrics:
            raise ValueError(f"optimize_metric={self.args.optimize_metric!r} is not among the validation metrics: "
                             f"expected one of {sorted(metrics)}")
        return metrics[self.args.optimize_metric]

    def _is_improvement(self, value: float) -> bool:
        if self.best_metric_value is None:
            return True
        return value < self.best_metric_value if self.args.optimize_mode == "min" else value > self.best_metric_value

    def _reached_target(self, value: float) -> bool:
        target = self.args.early_stopping_target
        if target is None:
            return False
        return value <= target if self.args.optimize_mode == "min" else value >= target

    def _validate_and_decide(self) -> bool:
        """Validate; update best checkpoint, lr drop and early stopping. Returns whether to stop early."""
        metrics = self.validate(self.valid_dataloader)
        self._last_validation_step = self.n_iter
        value = self._metric_value(metrics)
        improved = self._is_improvement(value)
        if improved:
            self.best_metrics, self.best_metric_value, self.validations_without_improvement = metrics, value, 0
        else:
            self.validations_without_improvement += 1
        if self.args.use_lr_drop:
            self.lr_scheduler.step(value)
        if self.tb is not None:
            self.tb.add_scalar("validations_without_improvement/iterations/valid",
                               self.validations_without_improvement, self.n_iter)
        if improved and self.args.save_best:
            self.save(self.args.model_path, suffix="best", metrics=metrics)
        if self._reached_target(value):
            self._log(f"early stopping at step {self.n_iter}: {self.args.optimize_metric}={value:.4g} reached the "
                      f"target {self.args.early_stopping_target:.4g}")
            return True
        patience = self.args.early_stopping_patience
        if patience is not None and self.validations_without_improvement >= patience:
            self._log(f"early stopping at step {self.n_iter}: {self.args.optimize_metric} did not improve in "
                      f"{patience} validations (best {self.best_metric_value:.4g})")
            return True
        return False

    def _check_finite_weights(self, when: str) -> None:
        """Refuse to report metrics of, or save, a model with NaN/inf weights (one pass over the weights).

        Steps with a non-finite loss are skipped, so a diverged update (e.g. an infinite lr) leaves such weights in
        place; a run shorter than max_nonfinite_steps would otherwise end with plausible-looking numbers.
        """
        bad = next((name for name, tensor in self.model.state_dict().items()
                    if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
        if bad is not None:
            raise NonFiniteWeightsError(
                f"non-finite weights at step {self.n_iter} {when} (first: {bad}): training diverged (lr "
                f"{self.optimizer.param_groups[0]['lr']:.3g}) or the loaded weights were already bad; nothing recorded "
                f"or saved")

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self, path, suffix: str = "", metrics: dict | None = None) -> Path | None:
        """Write a checkpoint `path/model_{suffix}.pth` (`path/model_{n_iter}.pth` without suffix).

        Collective: every process must call it (each contributes its random states); rank 0 writes.

        Args:
            path: folder; None writes nothing.
            suffix: 'best' gives model_best.pth.
            metrics: stored under 'metrics' (e.g. the validation metrics of a best checkpoint).

        Returns:
            The file written on rank 0, else None.
        """
        self._check_finite_weights("before saving a checkpoint")
        state = self._checkpoint_state(metrics)
        if suffix == "":
            self._last_save_step = self.n_iter
        if path is None or not self.is_main:
            return None
        name = f"model_{suffix}.pth" if suffix else iteration_checkpoint_name(self.n_iter)
        written = save_checkpoint(Path(path) / name, state)
        logger.info(f"saved checkpoint {written}")
        return written

    def _checkpoint_state(self, metrics: dict | None) -> dict:
        stream = self.batch_stream
        rng_states = [{"step": get_rng_state(), "epoch_start": stream.epoch_rng_state if stream else None}]
        if self.distributed.world_size > 1:
            gathered = [None] * self.distributed.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        return {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "lr_scheduler_state_dict": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "scaler_state_dict": self.scaler.state_dict(),
            "iteration": self.n_iter,
            "epoch": stream.epoch if stream else 0,
            "samples": self.n_samples,
            "metrics": metrics or {},
            "data_position": {"epoch": stream.epoch, "batches_in_epoch": stream.batches_in_epoch} if stream else None,
            "rng_states": rng_states,
            "best_metric_value": self.best_metric_value,
            "best_metrics": self.best_metrics,
            "validations_without_improvement": self.validations_without_improvement,
            "nonfinite_streak": self.nonfinite_streak,
            "world_size": self.distributed.world_size,
            "trainer_args": dataclasses.asdict(self.args),
        }

    def load(self, path, reset_optimizer: bool = False, reset_lr: bool = False,
             reset_iteration: bool = False) -> dict:
        """Load a checkpoint written by `save`.

        Args:
            path: the checkpoint file.
            reset_optimizer: keep the current optimizer and grad scaler state.
            reset_lr: keep the current lr and restart the lr schedule.
            reset_iteration: count steps, samples and the best metric from zero; do not restore the data position.

        Returns:
            The checkpoint dict.

        Raises:
            CheckpointError: the file is not a checkpoint or holds another model's weights.
        """
        checkpoint = load_checkpoint(path)
        apply_model_state(self.model, checkpoint["model_state_dict"], path)
        if not reset_optimizer and checkpoint.get("optimizer_state_dict") is not None:
            self._load_optimizer_state(checkpoint, reset_lr)
        if reset_lr:
            self.lr_scheduler = self._build_lr_scheduler()
        elif self.lr_scheduler is not None and checkpoint.get("lr_scheduler_state_dict") is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler_state_dict"])
        if not reset_iteration:
            self._load_progress(checkpoint)
        self._log(f"loaded {path} (iteration {checkpoint.get('iteration')}, reset_optimizer={reset_optimizer}, "
                  f"reset_lr={reset_lr}, reset_iteration={reset_iteration})")
        return checkpoint

    def _load_optimizer_state(self, checkpoint: dict, keep_lr: bool) -> None:
        current_lrs = [(group["lr"], group.get("initial_lr")) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        if keep_lr:
            for group, (lr, initial_lr) in zip(self.optimizer.param_groups, current_lrs):
                group["lr"], group["initial_lr"] = lr, initial_lr if initial_lr is not None else lr
        if checkpoint.get("scaler_state_dict"):
            self.scaler.load_state_dict(checkpoint["scaler_state_dict"])

    def _load_progress(self, checkpoint: dict) -> None:
        self.n_iter = checkpoint.get("iteration", 0)
        self.n_samples = checkpoint.get("samples", 0)
        self.best_metric_value = checkpoint.get("best_metric_value")
        self.best_metrics = checkpoint.get("best_metrics")
        self.validations_without_improvement = checkpoint.get("validations_without_improvement", 0)
        self.nonfinite_streak = checkpoint.get("nonfinite_streak", 0)
        if checkpoint.get("data_position") is not None:
            self._restore_point = (checkpoint["data_position"], checkpoint.get("rng_states"))
