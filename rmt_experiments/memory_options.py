"""What the RMT options mean for the memory wrappers: truncated BPTT in segments, the memory type, segment
checkpointing, and the optimizer groups of the associative memory.

Truncated BPTT is counted in segments inside the code (`RunArgs.bptt_segments`: gradients flow through the
last that many segments, `FULL_BPTT` for all); the user-facing flags keep their names (`--k2` counts segments,
`--bptt_depth` counts memory transitions, one fewer) and are converted by modeling_rmt.memory_config's
`bptt_segments_from_depth`, the wrappers' own.
"""
import torch

from lm_experiments_tools.malloc import tune_malloc_for_segment_checkpointing
from modeling_rmt.associative import associative_parameters


def segment_checkpointing_option(args) -> dict:
    """Wrapper keyword for --segment_checkpointing; empty when off, so custom wrapper classes need not know it.

    When on, glibc's malloc (where it is the allocator) is tuned so that memory stays bounded in the number of
    segments without a preloaded tcmalloc (lm_experiments_tools.malloc).
    """
    if not args.segment_checkpointing:
        return {}
    tune_malloc_for_segment_checkpointing()
    return {"segment_checkpointing": True}


def memory_type_options(args) -> dict:
    """Wrapper (encoder) or memory cell (decoder) keywords for --memory_type and --d_mem; empty for the memory
    tokens, so custom classes need not know them."""
    return {} if args.memory_type == "tokens" else {"memory_type": args.memory_type, "d_mem": args.d_mem}


def parameter_groups(model: torch.nn.Module, memory_lr_scale: float) -> list:
    """The model's parameters in one group, or two when the associative memory trains at its own multiple of --lr
    (the Trainer reads a group's `lr_scale`)."""
    memory = {id(p) for p in associative_parameters(model)} if memory_lr_scale != 1.0 else set()
    if not memory:
        return [{"params": list(model.parameters())}]
    rest = [p for p in model.parameters() if id(p) not in memory]
    own = [p for p in model.parameters() if id(p) in memory]
    return [{"params": rest}, {"params": own, "lr_scale": memory_lr_scale}]
