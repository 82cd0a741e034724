"""The memory configuration: the one contract both wrappers take (docs/design.md, "The memory configuration").

    config = MemoryConfig(layout="encoder", num_mem_tokens=10, input_size=512, max_n_segments=4)
    config.segment_size  # 499 task tokens per segment: [CLS] mem_1..mem_10 [SEP] tokens [SEP]
    model = RMTEncoderForSequenceClassification(bert, tokenizer=tokenizer, memory_config=config)

    config = MemoryConfig(layout="decoder", num_mem_tokens=2, input_size=1024, max_n_segments=4, bptt_segments=2)
    lm = RecurrentWrapper(MemoryCell(gpt2, memory_config=config))  # 1020 tokens per segment

Every value is checked once, in `MemoryConfig.check()` (run on construction and by `dataclasses.replace`). The
input size, ids per backbone call, is primary; the segment size is derived from it and the layout. Truncated BPTT
has one unit, segments that gradients flow through (`bptt_segments`, the seed's `--k2`); the encoder's old
`bptt_depth` (memory transitions) converts with `bptt_segments_from_depth`.
"""
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Optional


LAYOUTS = ("encoder", "decoder")
MEMORY_TYPES = ("tokens", "associative")
ALIGNMENTS = ("right", "left", "center")
FULL_BPTT = -1  # gradients flow through every segment


def memory_positions(num_mem_tokens, memory_type="tokens"):
    """Positions of a decoder segment the memory takes: read and write (2m) for memory tokens, write only (m) for
    the associative memory; the segment holds `input_size - memory_positions(...)` tokens."""
    return num_mem_tokens if memory_type == "associative" else 2 * num_mem_tokens


def layout_positions(layout, num_mem_tokens, memory_type="tokens"):
    """Ids of a segment that are not task tokens: `[CLS] mem [SEP] .. [SEP]` (m + 3; 2 without memory, the
    backbone's own `[CLS] tokens [SEP]`) for the encoder, the memory positions for the decoder."""
    if layout == "encoder":
        return num_mem_tokens + 3 if num_mem_tokens else 2
    return memory_positions(num_mem_tokens, memory_type)


def bptt_segments_from_depth(bptt_depth):
    """The encoder's old `bptt_depth` (memory transitions that keep their gradient; -1: all) as segments that
    gradients flow through: t transitions reach t + 1 segments. Raises ValueError for a depth below -1."""
    if not isinstance(bptt_depth, int) or bptt_depth < FULL_BPTT:
        raise ValueError(f"bptt_depth={bptt_depth!r}; expected -1 (full backpropagation through time) or an "
                         "integer >= 0")
    return FULL_BPTT if bptt_depth == FULL_BPTT else bptt_depth + 1


def bptt_depth_from_segments(bptt_segments):
    """Inverse of `bptt_segments_from_depth`: segments that gradients flow through as memory transitions."""
    return FULL_BPTT if bptt_segments == FULL_BPTT else bptt_segments - 1


@dataclass(frozen=True)
class MemoryConfig:
    """The memory and the segments of a wrapper; frozen: change one value with `dataclasses.replace`, checked again.

    Fields:
        layout: 'encoder' (`[CLS] mem [SEP] tokens [SEP] pad`, RMTEncoderForSequenceClassification) or 'decoder'
            (`[mem read] tokens [mem write]`, associative memory `tokens [mem write]`; MemoryCell + RecurrentWrapper).
        num_mem_tokens: memory tokens m; 0 runs the bare backbone on each segment (the no-memory baseline).
        input_size: ids per backbone call, memory and special tokens included; None only for the decoder's
            MemoryCell built alone, whose segments RecurrentWrapper sets.
        max_n_segments: at most `segment_size * max_n_segments` tokens of a sample are read.
        bptt_segments: truncated BPTT: gradients flow through at most the last this many segments (-1: all).
        segment_alignment: 'right' (None), 'left' or 'center'; see `modeling_rmt.segments`.
        segment_checkpointing: recompute each segment's activations in the backward pass instead of keeping them.
        memory_type: 'tokens' (the paper) or 'associative' (ARMT, `modeling_rmt.associative`).
        d_mem: associative memory only: size of its keys and queries before DPFP (the ARMT paper: 64).
    """

    layout: str
    num_mem_tokens: int
    input_size: Optional[int] = None
    max_n_segments: int = 1
    bptt_segments: int = FULL_BPTT
    segment_alignment: Optional[str] = "right"
    segment_checkpointing: bool = False
    memory_type: str = "tokens"
    d_mem: int = 64

    def __post_init__(self):
        if self.segment_alignment is None:
            object.__setattr__(self, "segment_alignment", "right")
        self.check()

    def check(self):
        """Raise ValueError naming the first bad value and what is expected."""
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if not isinstance(self.num_mem_tokens, int) or self.num_mem_tokens < 0:
            raise ValueError(f"num_mem_tokens={self.num_mem_tokens!r}; expected an integer >= 0")
        self._check_memory_type()
        self._check_sizes()
        if not isinstance(self.bptt_segments, int) or (self.bptt_segments != FULL_BPTT and self.bptt_segments < 1):
            raise ValueError(f"bptt_segments={self.bptt_segments!r} (the seed's k2={self.bptt_segments!r}); expected "
                             "-1 (full backpropagation through time) or an integer >= 1")
        if self.segment_alignment not in ALIGNMENTS:
            raise ValueError(f"segment_alignment={self.segment_alignment!r} is not supported; expected one of "
                             f"{ALIGNMENTS} or None")
        if not isinstance(self.segment_checkpointing, bool):
            raise ValueError(f"segment_checkpointing={self.segment_checkpointing!r}; expected True or False")

    def _check_memory_type(self):
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type={self.memory_type!r}; expected one of {', '.join(MEMORY_TYPES)}")
        if not isinstance(self.d_mem, int) or self.d_mem < 1:
            raise ValueError(f"d_mem={self.d_mem!r}; expected an integer >= 1")
        if self.memory_type == "associative" and self.num_mem_tokens < 1:
            raise ValueError(f"memory_type='associative' with num_mem_tokens={self.num_mem_tokens}: expected at "
                             "least one memory token to write the memory")

    def _check_sizes(self):
        if self.input_size is None and self.layout == "encoder":
            raise ValueError("input_size=None; expected an integer (ids per backbone call)")
        if self.input_size is not None:
            if not isinstance(self.input_size, int):
                raise ValueError(f"input_size={self.input_size!r}; expected an integer (ids per backbone call)")
            n_layout = self.layout_positions
            if self.input_size - n_layout < 1:
                what = "memory tokens + special tokens" if self.layout == "encoder" else "memory positions"
                raise ValueError(f"input_size={self.input_size} must exceed the {n_layout} layout ids "
                                 f"({self.num_mem_tokens} {what}): segment_size={self.input_size - n_layout}; "
                                 "expected segment_size >= 1")
        if not isinstance(self.max_n_segments, int) or self.max_n_segments < 1:
            raise ValueError(f"max_n_segments={self.max_n_segments!r}; expected an integer >= 1")

    @classmethod
    def from_segment_size(cls, segment_size, **fields):
        """A decoder configuration from its tokens per segment (RecurrentWrapper's `segment_size`): input_size is
        segment_size plus the memory positions."""
        memory = cls(layout="decoder", **fields)
        if not isinstance(segment_size, int) or segment_size < 1:
            raise ValueError(f"segment_size={segment_size!r}; expected an integer >= 1")
        return dataclasses.replace(memory, input_size=segment_size + memory.layout_positions)

    @property
    def layout_positions(self):
        """Ids of a segment that are not task tokens (`layout_positions`)."""
        return layout_positions(self.layout, self.num_mem_tokens, self.memory_type)

    @property
    def segment_size(self):
        """Task tokens per segment: input_size - m - 3 (encoder; input_size - 2 without memory), input_size - 2m
        (decoder), input_size - m (decoder, associative memory). ValueError while input_size is None."""
        if self.input_size is None:
            raise ValueError(f"input_size=None; expected the ids per backbone call: a {self.layout} wrapper needs "
                             "its segment size")
        return self.input_size - self.layout_positions

    @property
    def bptt_depth(self):
        """Truncated BPTT in memory transitions (the encoder's old unit; -1: all)."""
        return bptt_depth_from_segments(self.bptt_segments)

    def to_dict(self):
        """The fields as a JSON-ready dict (the nested `memory_config` of a model folder's config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """The configuration `to_dict` wrote; ValueError for a key that is not a field."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"memory_config has {unknown}; expected only {sorted(names)}")
        return cls(**values)


def memory_config_or_keywords(memory_config, layout, keywords, signature, build):
    """The wrapper's memory configuration: `memory_config`, or `build()` from the wrapper's memory keywords.

    Args:
        memory_config: a MemoryConfig of `layout`, or None to build one from the keywords.
        keywords: the wrapper's memory keyword arguments as given; with `memory_config`, each must be left at
            its default in `signature` (the wrapper's `__init__`): the configuration holds them.
        build: () -> MemoryConfig from the keywords (checked like any other).
    """
    if memory_config is None:
        return build()
    defaults = inspect.signature(signature).parameters
    given = sorted(name for name, value in keywords.items() if value != defaults[name].default)
    if given:
        raise ValueError(f"{', '.join(given)} given with memory_config: expected the memory configuration alone "
                         "(its fields hold these settings)")
    if not isinstance(memory_config, MemoryConfig):
        raise ValueError(f"memory_config={memory_config!r}; expected a MemoryConfig")
    if memory_config.layout != layout:
        raise ValueError(f"memory_config.layout={memory_config.layout!r}; expected {layout!r} for this wrapper")
    return memory_config


class UsesMemoryConfig:
    """Read-only views of `self.memory_config` for the wrappers (the attribute names their callers know), and
    `max_n_segments`, which may be raised after construction (e.g. to evaluate on longer inputs): setting it
    replaces the configuration, checked again."""

    memory_config: MemoryConfig

    @property
    def num_mem_tokens(self):
        return self.memory_config.num_mem_tokens

    @property
    def memory_type(self):
        return self.memory_config.memory_type

    @property
    def input_size(self):
        return self.memory_config.input_size

    @property
    def segment_size(self):
        return self.memory_config.segment_size

    @property
    def alignment(self):
        return self.memory_config.segment_alignment

    @property
    def segment_checkpointing(self):
        return self.memory_config.segment_checkpointing

    @property
    def max_n_segments(self):
        return self.memory_config.max_n_segments

    @max_n_segments.setter
    def max_n_segments(self, value):
        self.memory_config = dataclasses.replace(self.memory_config, max_n_segments=value)
