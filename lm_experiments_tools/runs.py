"""Run plumbing for an entry script over the Trainer: argument parsing, the two exit stages, the backbone, data
loaders and the Trainer itself. Nothing here knows the model inside the Trainer.

An entry script declares its own options as a dataclass (with help on every field, `flags.help_field`), builds its
own data and metrics, and takes everything else from here:

    with exit_on_bad_input():
        trainer_args, args = parse_dataclasses(MyArgs, argv)
        context = start_run(trainer_args)
        prepare_run_folder(trainer_args.model_path, resume=..., overwrite=..., is_main=...)  # before any time is spent
        ...  # data and model, every input checked
        if trainer_args.overwrite and context.is_main:
            delete_previous_run(trainer_args.model_path)
        trainer = make_trainer(trainer_args, model=..., optimizer=..., train=..., valid=..., metrics_fn=...)
    with exit_on_failure(trainer_args.model_path):
        trainer.train()

Two context managers turn every error into one line on stderr (the traceback goes to error.log in the run folder):
`exit_on_bad_input` around the setup, where a ValueError or OSError is the user's (exit code 2), and
`exit_on_failure` around training and evaluation, where only `BadInputError` is (exit code 2) and anything else is a
failure (exit code 1).
"""
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from transformers import AutoConfig, HfArgumentParser

from .class_names import get_cls_by_name
from .distributed import init_distributed
from .errors import BadInputError
from .run_config import prepare_run
from .run_folder import INTERRUPTED_IN_SETUP, exit_with_one_line, raise_on_parse_errors
from .trainer import Trainer
from .trainer_args import TrainerArgs

logger = logging.getLogger(__name__)

SETUP_BAD_INPUT = (ValueError, OSError)  # before training, a value that does not work or a missing file is the user's
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# ---- arguments ------------------------------------------------------------------------------------------------

def parse_dataclasses(args_cls: type, argv=None) -> tuple:
    """(TrainerArgs, args_cls instance) from the command line, unchecked; unknown flags exit with code 2."""
    parser = raise_on_parse_errors(HfArgumentParser((TrainerArgs, args_cls)))
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def exit_on_bad_input():
    """Context of the setup stage: any error inside ends the process with one line on stderr, exit code 2 for bad
    input (including a ValueError or OSError: a value that does not work, a missing file), 1 otherwise; Ctrl-C
    with 'interrupted before training started: nothing saved' and exit code 130."""
    return exit_with_one_line(bad_input=SETUP_BAD_INPUT, interrupted=INTERRUPTED_IN_SETUP)


def exit_on_failure(run_folder):
    """Context of the training and evaluation stage: one line on stderr, exit code 2 for `BadInputError` (a
    checkpoint file that does not load), 1 for anything else; the traceback goes to run_folder()/error.log."""
    return exit_with_one_line(run_folder)


def start_run(trainer_args: TrainerArgs):
    """The process group (under torchrun) and logging (INFO on the main process); returns the context."""
    context = init_distributed()
    logging.basicConfig(level=logging.INFO if context.is_main else logging.WARNING, format=LOG_FORMAT)
    return context


def run_values(trainer_args: TrainerArgs, args) -> dict:
    """The settings of a run as its config.json records them ("args")."""
    return {**dataclasses.asdict(trainer_args), **dataclasses.asdict(args)}


def write_run_config(trainer_args: TrainerArgs, args) -> None:
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

def make_trainer(trainer_args: TrainerArgs, *, model, optimizer, valid, train: TrainBatches = None,
                 **hooks) -> Trainer:
    """A Trainer of the model with its optimizer.

    Args:
        valid: the validation DataLoader.
        train: training batches, or None to evaluate only.
        hooks: the Trainer's keyword arguments such as keep_for_metrics_fn, metrics_fn, forward_kwargs and
            generate_kwargs.
    """
    train = train or TrainBatches(None, None)
    return Trainer(trainer_args, model, optimizer, train.loader, valid,
                   train_sampler=train.sampler, **hooks)
