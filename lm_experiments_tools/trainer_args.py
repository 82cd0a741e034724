"""`TrainerArgs`: every option of the Trainer, as a dataclass that `transformers.HfArgumentParser` turns into flags.

Batch size convention: `batch_size` is the number of samples in one forward pass of one process. One optimizer
step consumes `batch_size * gradient_accumulation_steps` samples per process, so the training DataLoader must be
built with `batch_size=args.batch_size * args.gradient_accumulation_steps`; the Trainer splits each of its
batches into sub-batches of `batch_size`.
"""
import dataclasses
import math
from dataclasses import dataclass

from transformers import SchedulerType

from .errors import BadInputError
from .flags import help_field

# The plateau schedule needs the validation metric at each step: it is offered as `use_lr_drop` instead.
STEP_LR_SCHEDULERS = tuple(s.value for s in SchedulerType if s != SchedulerType.REDUCE_ON_PLATEAU)
OPTIMIZE_MODES = ("min", "max")
THRESHOLD_MODES = ("rel", "abs")
# smallest allowed value of each integer option; those marked optional may also be None
INTEGER_MINIMUMS = {"log_interval": 1, "batch_size": 1, "iters": 0, "gradient_accumulation_steps": 1,
                    "num_warmup_steps": 0, "lr_drop_patience": 0, "lr_drop_cooldown": 0, "seed": 0,
                    "max_nonfinite_steps": 1}
OPTIONAL_INTEGER_MINIMUMS = {"valid_interval": 1, "save_interval": 1, "early_stopping_patience": 1,
                             "num_training_steps": 1}
OPTIONAL_POSITIVE_FLOATS = ("lr", "clip_grad_norm", "clip_grad_value")
NON_NEGATIVE_FLOATS = ("lr_drop_threshold", "lr_drop_min_lr", "lr_drop_eps")
MAX_SEED = 2**32 - 1  # NumPy's limit; the seed of process r is seed + r


@dataclass
class TrainerArgs:
    """Options of `Trainer`. Validated on construction; see the module docstring for batch sizes."""

    model_path: str | None = help_field(
        None, "Folder for checkpoints, tensorboard events, config.json and git.diff; None writes nothing")
    log_interval: int = help_field(10, "Log training metrics, learning rate and gradient norm every N optimizer steps")
    valid_interval: int | None = help_field(
        None, "Validate every N optimizer steps; None validates only once, after the last step")
    save_interval: int | None = help_field(
        None, "Save model_{n_iter}.pth every N optimizer steps and after the last step; None: no interval saves")
    save_best: bool = help_field(False, "Save model_best.pth whenever the optimized validation metric improves")
    use_generate_on_valid: bool = help_field(
        False, "During validation also call model.generate and pass its result to the metric hooks as "
               "output['generation_outputs']")
    init_checkpoint: str | None = help_field(
        None, "Checkpoint file (e.g. run/model_500.pth) whose full state continues: model, optimizer, lr "
              "schedule, iteration unless reset; to take only the weights of a run folder's model_best.pth, use "
              "the entry scripts' --model_cpt")
    skip_used_data: bool = help_field(
        False, "With init_checkpoint: restore the data position and random states, i.e. continue the run exactly")
    reset_lr: bool = help_field(False, "With init_checkpoint: keep this run's lr and restart the lr schedule")
    reset_iteration: bool = help_field(
        False, "With init_checkpoint: start counting steps, data and best metric from zero")
    reset_optimizer: bool = help_field(False, "With init_checkpoint: do not load the optimizer (and grad scaler) state")
    resume: bool = help_field(
        False, "Continue from the newest checkpoint in model_path (exactly: data position and random states "
               "included); starts from scratch (or init_checkpoint) if model_path has none")
    overwrite: bool = help_field(
        False, "Start over in a model_path that holds a run, deleting its checkpoints, events and results (the "
               "entry scripts refuse such a folder without resume or overwrite; see lm_experiments_tools.run_folder)")
    lr: float | None = help_field(
        None, "Learning rate set on every optimizer param group; None keeps the optimizer's own")
    batch_size: int = help_field(
        1, "Samples per forward pass per process; the train DataLoader must yield batch_size * "
           "gradient_accumulation_steps samples per batch")
    iters: int = help_field(100, "Number of optimizer steps to train for")
    gradient_accumulation_steps: int = help_field(
        1, "Sub-batches of batch_size per optimizer step; each sub-batch loss is divided by their number")
    fp16: bool = help_field(False, "float16 autocast with a gradient scaler (meant for CUDA)")
    bf16: bool = help_field(False, "bfloat16 autocast (CUDA or CPU), no gradient scaler")
    clip_grad_norm: float | None = help_field(
        None, "Clip the global gradient norm to this value; exclusive with clip_grad_value")
    clip_grad_value: float | None = help_field(
        None, "Clip every gradient element to [-value, value]; exclusive with clip_grad_norm")
    early_stopping_patience: int | None = help_field(
        None, "Stop after this many validations without improvement of optimize_metric; None never stops early")
    early_stopping_target: float | None = help_field(
        None, "Stop at the first validation whose optimize_metric reaches this value (>= for optimize_mode max, "
              "<= for min), e.g. 100 for the BABILong exact_match (a percentage); None never stops on a value")
    lr_scheduler: str | None = help_field(
        None, f"Per-step schedule of transformers.get_scheduler, one of {', '.join(STEP_LR_SCHEDULERS)}; "
              f"needs lr; None keeps lr constant")
    num_warmup_steps: int = help_field(0, "Warm-up steps of lr_scheduler")
    num_training_steps: int | None = help_field(None, "Length of lr_scheduler in optimizer steps; None uses iters")
    use_lr_drop: bool = help_field(
        False, "Multiply lr by lr_drop_factor when optimize_metric stops improving (ReduceLROnPlateau); "
               "needs validation data; exclusive with lr_scheduler")
    lr_drop_factor: float = help_field(0.1, "ReduceLROnPlateau factor")
    lr_drop_patience: int = help_field(10, "ReduceLROnPlateau patience, in validations")
    lr_drop_threshold: float = help_field(1e-4, "ReduceLROnPlateau threshold")
    lr_drop_threshold_mode: str = help_field("rel", "ReduceLROnPlateau threshold mode: rel or abs")
    lr_drop_cooldown: int = help_field(0, "ReduceLROnPlateau cooldown, in validations")
    lr_drop_min_lr: float = help_field(0.0, "ReduceLROnPlateau lower bound of lr")
    lr_drop_eps: float = help_field(1e-8, "ReduceLROnPlateau: smaller lr changes are ignored")
    optimize_metric: str = help_field(
        "loss", "Validation metric that decides the best checkpoint, early stopping and lr drops")
    optimize_mode: str = help_field(
        "min", "Whether optimize_metric improves when it gets smaller (min) or larger (max)")
    seed: int = help_field(42, "Seed of Python, NumPy and torch at the start of training (plus the process rank)")
    max_nonfinite_steps: int = help_field(
        10, "Stop with an error after this many consecutive steps with non-finite loss or gradients "
            "(such steps are skipped)")
    ddp_find_unused_parameters: bool = help_field(
        False, "Multi-process only: let DDP handle parameters that get no gradient in a step")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check the options that make sense on their own; raise BadInputError naming the bad value."""
        self._validate_numbers()
        if self.clip_grad_norm is not None and self.clip_grad_value is not None:
            raise BadInputError(f"clip_grad_norm={self.clip_grad_norm} and clip_grad_value={self.clip_grad_value} "
                                f"are both set: expected at most one of them")
        if self.fp16 and self.bf16:
            raise BadInputError("fp16 and bf16 are both set: expected at most one of them")
        _require_choice("optimize_mode", self.optimize_mode, OPTIMIZE_MODES)
        _require_choice("lr_drop_threshold_mode", self.lr_drop_threshold_mode, THRESHOLD_MODES)
        if self.lr_scheduler is not None:
            _require_choice("lr_scheduler", self.lr_scheduler, STEP_LR_SCHEDULERS)
            if self.lr is None:
                raise BadInputError(f"lr_scheduler={self.lr_scheduler!r} needs lr: expected a value for lr")
            if self.use_lr_drop:
                raise BadInputError(f"use_lr_drop and lr_scheduler={self.lr_scheduler!r} are both set: "
                                    f"expected at most one lr schedule")
        if self.resume and self.model_path is None:
            raise BadInputError("resume needs model_path: expected the run folder to resume from")
        if self.resume and self.overwrite:
            raise BadInputError("resume and overwrite are both set: expected at most one (continue the run in "
                                "model_path, or start it over)")

    def _validate_numbers(self) -> None:
        """Every numeric option: the right type, finite, in range (before anything is built or written)."""
        for name, minimum in INTEGER_MINIMUMS.items():
            _require_at_least(name, getattr(self, name), minimum)
        for name, minimum in OPTIONAL_INTEGER_MINIMUMS.items():
            if getattr(self, name) is not None:
                _require_at_least(name, getattr(self, name), minimum)
        if self.seed > MAX_SEED:
            raise BadInputError(f"seed={self.seed} is invalid: expected an integer from 0 to {MAX_SEED}")
        for name in OPTIONAL_POSITIVE_FLOATS:
            if getattr(self, name) is not None:
                _require_finite(name, getattr(self, name), "a finite number > 0", lambda value: value > 0)
        for name in NON_NEGATIVE_FLOATS:
            _require_finite(name, getattr(self, name), "a finite number >= 0", lambda value: value >= 0)
        if self.early_stopping_target is not None:
            _require_finite("early_stopping_target", self.early_stopping_target, "a finite number", lambda value: True)
        _require_finite("lr_drop_factor", self.lr_drop_factor, "a number between 0 and 1 (exclusive)",
                        lambda value: 0 < value < 1)

    @classmethod
    def from_any(cls, args) -> "TrainerArgs":
        """TrainerArgs from an object holding (some of) its fields, e.g. a script's argparse Namespace."""
        if isinstance(args, cls):
            return args
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**values)


def _require_at_least(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadInputError(f"{name}={value!r} is invalid: expected an integer >= {minimum}")


def _require_finite(name: str, value, expected: str, in_range) -> None:
    """A real number (ints accepted) that is finite and satisfies `in_range`."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not in_range(value):
        raise BadInputError(f"{name}={value!r} is invalid: expected {expected}")


def _require_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise BadInputError(f"{name}={value!r} is invalid: expected one of {', '.join(map(str, choices))}")
