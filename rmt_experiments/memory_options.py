"""What the RMT options mean for the memory wrappers: the run's memory configuration, the wrappers built from it,
and the optimizer groups of the associative memory.

Truncated BPTT is counted in segments inside the code (`RunArgs.bptt_segments`: gradients flow through the
last that many segments, `FULL_BPTT` for all); the user-facing flags keep their names (`--k2` counts segments,
`--bptt_depth` counts memory transitions, one fewer) and are converted by modeling_rmt.memory_config's
`bptt_segments_from_depth`, the wrappers' own.
"""
import torch

from lm_experiments_tools.errors import BadInputError
from lm_experiments_tools.malloc import tune_malloc_for_segment_checkpointing
from modeling_rmt.associative import associative_parameters
from modeling_rmt.memory_config import MemoryConfig


def memory_config(args, layout: str) -> MemoryConfig:
    """The run's memory configuration from its options (`layout`: 'encoder' or 'decoder'), checked where the
    wrappers check it (MemoryConfig.check); a bad value is a BadInputError naming it."""
    try:
        return MemoryConfig(layout=layout, num_mem_tokens=args.num_mem_tokens, input_size=args.input_size,
                            max_n_segments=args.max_n_segments, bptt_segments=args.bptt_segments,
                            segment_alignment=getattr(args, "segment_alignment", None),
                            segment_checkpointing=args.segment_checkpointing, memory_type=args.memory_type,
                            d_mem=args.d_mem)
    except ValueError as error:
        raise BadInputError(f"memory option {error}") from error


def build_wrapper(wrapper_cls, inner, **kwargs):
    """`wrapper_cls(inner, **kwargs)`; what the wrapper refuses (ValueError: e.g. a backbone without a list of
    blocks for the associative memory) is bad input, named with both classes."""
    try:
        return wrapper_cls(inner, **kwargs)
    except ValueError as error:
        raise BadInputError(f"{wrapper_cls.__name__} around {type(inner).__name__}: {error}") from error


def prepare_segment_checkpointing(config: MemoryConfig) -> None:
    """With segment checkpointing, tune glibc's malloc (where it is the allocator), so that memory stays bounded in
    the number of segments without a preloaded tcmalloc (lm_experiments_tools.malloc)."""
    if config.segment_checkpointing:
        tune_malloc_for_segment_checkpointing()


def parameter_groups(model: torch.nn.Module, memory_lr_scale: float) -> list:
    """The model's parameters in one group, or two when the associative memory trains at its own multiple of --lr
    (the Trainer reads a group's `lr_scale`)."""
    memory = {id(p) for p in associative_parameters(model)} if memory_lr_scale != 1.0 else set()
    if not memory:
        return [{"params": list(model.parameters())}]
    rest = [p for p in model.parameters() if id(p) not in memory]
    own = [p for p in model.parameters() if id(p) in memory]
    return [{"params": rest}, {"params": own, "lr_scale": memory_lr_scale}]
