"""Helpers shared by the encoder and decoder memory wrappers: segmentation, truncated BPTT, segment checkpointing
(their settings are checked in `modeling_rmt.memory_config`).

Segment alignment (docs/design.md, memory wrappers) decides where a sequence of `n` tokens is cut into
`k = ceil(n / segment_size)` segments: `right` (the default) makes the last segment full and the first one
partial, `left` makes the first full and the last partial, `center` makes all `k` segments as equal as possible
(lengths differ by at most 1); the names are `modeling_rmt.memory_config.ALIGNMENTS`.
"""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint



def check_per_segment_outputs(segment_checkpointing, output_attentions, output_hidden_states):
    """Raise ValueError when per-segment attentions / hidden states are asked of a checkpointing wrapper."""
    if segment_checkpointing and (output_attentions or output_hidden_states):
        raise ValueError("output_attentions / output_hidden_states keep tensors of every segment, which "
                         "segment_checkpointing=True exists to free; expected them off, or "
                         "segment_checkpointing=False")


def call_segment(step, *args, checkpointed, **kwargs):
    """`step(*args, **kwargs)` for one segment; with `checkpointed`, its activations are not kept for backward.

    Checkpointing (non-reentrant `torch.utils.checkpoint`) keeps only the step's inputs (the memory state and the
    segment's tokens) and recomputes its activations when the backward pass reaches it, with the RNG state
    (dropout masks) and autocast state of the first pass, so gradients are those of full BPTT at the cost of one
    more forward pass per segment. Without gradients there is nothing to free, and the step runs plainly. The
    wrappers do not checkpoint the last segment: its backward pass comes right after the forward pass.
    """
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(step, *args, use_reentrant=False, **kwargs)
    return step(*args, **kwargs)


def input_embeddings(base_model):
    """Return the backbone's input embedding module; raise ValueError if it has none."""
    try:
        embeddings = base_model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if not isinstance(embeddings, nn.Embedding):
        raise ValueError(f"base_model {type(base_model).__name__} has no input embeddings (get_input_embeddings() "
                         f"returned {type(embeddings).__name__}); expected an nn.Embedding")
    return embeddings


def segment_boundaries(lengths, segment_size, alignment):
    """Cut each sequence into segments and place the segments of every sample at the end of a shared grid.

    Args:
        lengths: (B,) number of tokens of each sample.
        segment_size: maximum number of tokens per segment.
        alignment: one of ALIGNMENTS.

    Returns:
        starts, ends: (B, K) token offsets of slot j of each sample, K = the largest number of segments in the
            batch. A sample with k segments occupies the last k slots; its leading slots are empty (start = end).
            An empty sample counts as one empty segment, so every sample is present in the last slot.
        n_segments: (B,) number of segments of each sample.
    """
    n_segments = torch.div(lengths + segment_size - 1, segment_size, rounding_mode="floor").clamp(min=1)  # (B,)
    n_slots = int(n_segments.max())
    slots = torch.arange(n_slots, device=lengths.device)  # (K,)
    index = slots[None, :] - (n_slots - n_segments)[:, None]  # (B, K) segment index within the sample, < 0 if empty
    n, k = lengths[:, None], n_segments[:, None]
    if alignment == "right":
        ends = n - (k - 1 - index) * segment_size
        starts = (ends - segment_size).clamp(min=0)
    elif alignment == "left":
        starts = index * segment_size
        ends = torch.minimum(starts + segment_size, n)
    else:
        starts = torch.div(index * n, k, rounding_mode="floor")
        ends = torch.div((index + 1) * n, k, rounding_mode="floor")
    empty = index < 0
    return starts.masked_fill(empty, 0), ends.masked_fill(empty, 0), n_segments


def map_state(fn, *states):
    """Apply `fn` tensor by tensor to memory states: a tensor (memory tokens) or a tuple of tensors (associative
    memory); every tensor has the batch first."""
    if torch.is_tensor(states[0]):
        return fn(*states)
    return tuple(fn(*parts) for parts in zip(*states))


def where_started(started, state, initial_state):
    """Each sample's `state` where `started` (B,) is True, else its `initial_state`."""
    if bool(started.all()):  # the usual case; an associative state is large enough for a copy to matter
        return state
    if not bool(started.any()):
        return initial_state

    def pick(current, initial):
        return torch.where(started.view(-1, *[1] * (current.dim() - 1)), current, initial)
    return map_state(pick, state, initial_state)


def take_rows(state, rows, n_rows):
    """The memory `state` of samples `rows` (b,) of a batch of `n_rows`; the state itself when all are taken."""
    return state if len(rows) == n_rows else map_state(lambda tensor: tensor[rows], state)


def put_rows(state, rows, new_state):
    """`state` with the rows `rows` replaced by `new_state` (cast to the state's dtype); `new_state` when it holds
    every row."""
    if len(rows) == state_batch_size(state):
        return map_state(lambda current, new: new.to(current.dtype), state, new_state)
    return map_state(lambda current, new: current.index_put((rows,), new.to(current.dtype)), state, new_state)


def state_batch_size(state):
    """Batch size of a memory state (a tensor or a tuple of tensors, batch first)."""
    return (state if torch.is_tensor(state) else state[0]).shape[0]


def memory_for_segment(memory, initial_memory, started, segment_index, n_segments, bptt_transitions):
    """Memory that enters segment `segment_index`, with truncated backpropagation through time.

    Gradient flows through at most the last `bptt_transitions` memory transitions (-1: all), i.e. the memory
    entering segment j is detached when j < n_segments - bptt_transitions. A sample that has not started yet
    (its earlier segments were empty) gets the initial memory, untouched by truncation, so that it is treated
    exactly as if it were alone in the batch.

    Args:
        memory: memory carried from the previous segment: (B, m, H) memory tokens, or a tuple of tensors with the
            batch first (the associative memory's A and z).
        initial_memory: the same structure before the first segment.
        started: (B,) bool, True for samples that already processed a non-empty segment.
        segment_index, n_segments: position of this segment and the number of segments.
        bptt_transitions: -1 or the number of most recent transitions that keep their gradient.

    Returns:
        the memory for this segment, the structure of `memory`.
    """
    if bptt_transitions >= 0 and segment_index < n_segments - bptt_transitions:
        memory = map_state(torch.Tensor.detach, memory)
    return where_started(started, memory, initial_memory)
