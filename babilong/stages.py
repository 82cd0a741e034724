"""The lengths a BABILong run trains and evaluates at: curriculum stages of whole segments, their run folders,
and which of them a resumed run has finished."""
import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from lm_experiments_tools.errors import BadInputError

from .dataset import GEN_TEXT
from .results import RESULTS_FILE, read_results
from .run_args import N_SEGMENTS_PLACEHOLDER, BabilongArgs


@dataclass
class Stage:
    """One training or evaluation length."""

    n_segments: int
    input_seq_len: int


def stage_folder(model_path: str | None, n_segments: int) -> Path | None:
    """The run folder of the stage with `n_segments` segments (model_path's placeholder filled in)."""
    return None if model_path is None else Path(model_path.replace(N_SEGMENTS_PLACEHOLDER, str(n_segments)))


def is_evaluated(run_dir, *, n_segments: int, trained_n_segments: int) -> bool:
    """Whether run_dir's results already hold the evaluation at n_segments of the model trained at
    trained_n_segments (a finished curriculum stage, or one of its extra lengths)."""
    path = Path(run_dir) / RESULTS_FILE
    return path.is_file() and any(record.get("n_segments") == n_segments and
                                  record.get("trained_n_segments") == trained_n_segments
                                  for record in read_results(path))


def answer_room(args: BabilongArgs, tokenizer, task) -> int:
    """Tokens a decoder sample adds after the task tokens: GEN, the longest answer and EOS (0 for the encoder)."""
    if args.model_type == "encoder":
        return 0
    encode = functools.partial(tokenizer.encode, add_special_tokens=False)
    return len(encode(GEN_TEXT)) + max(len(encode(label)) for label in task.labels) + 1


def plan_stages(args: BabilongArgs, segment_size: int, room: int) -> tuple:
    """(training stages, extra evaluation stages) with their exact input lengths.

    Raises:
        BadInputError: a length that the segments cannot hold.
    """
    def full(n_segments):
        length = n_segments * segment_size - room
        if length < 1:
            raise BadInputError(f"{n_segments} segments of {segment_size} tokens leave no room for task tokens "
                                f"after the {room} answer tokens: expected more segments or a larger input_size")
        return Stage(n_segments, length)

    extra = [full(n) for n in args.segment_counts("eval_n_segments")]
    counts = args.segment_counts("curriculum")
    if counts:
        return [full(n) for n in counts], extra
    stage = full(args.max_n_segments)
    if args.input_seq_len is not None:
        if args.input_seq_len > stage.input_seq_len:
            raise BadInputError(f"--input_seq_len {args.input_seq_len} does not fit in max_n_segments="
                                f"{args.max_n_segments} segments of {segment_size} tokens: expected at most "
                                f"{stage.input_seq_len}, or more segments")
        stage = Stage(math.ceil((args.input_seq_len + room) / segment_size), args.input_seq_len)
    return [stage], extra


def stage_options(trainer_args, args: BabilongArgs, stage: Stage, init_dir) -> tuple:
    """(trainer args, BABILong args) of one curriculum stage: its run folder, its length, its initial weights."""
    model_path = stage_folder(trainer_args.model_path, stage.n_segments)
    stage_trainer_args = dataclasses.replace(trainer_args, model_path=None if model_path is None else str(model_path),
                                             use_generate_on_valid=args.model_type == "decoder")
    stage_args = dataclasses.replace(args, model_cpt=None if init_dir is None else str(init_dir),
                                     max_n_segments=stage.n_segments, input_seq_len=stage.input_seq_len)
    return stage_trainer_args, stage_args
