"""The wrappers' outputs: a backbone's output plus one entry per segment (`loss_0`, `hidden_states_2`, ...).

transformers rebuilds a `ModelOutput` from its entries as keyword arguments (its pytree registration), which
DistributedDataParallel does with `find_unused_parameters=True`; the stock classes accept only their declared
fields, so the per-segment entries would make that rebuild fail. These classes accept them.
"""
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput


class PerSegmentEntries:
    """Mixin for a ModelOutput: keywords beyond `loss` and `logits` become entries of the output."""

    def __init__(self, loss=None, logits=None, **per_segment):
        super().__init__(loss=loss, logits=logits)
        for key, value in per_segment.items():
            self[key] = value


class SegmentedClassifierOutput(PerSegmentEntries, SequenceClassifierOutput):
    """The encoder wrapper's output: SequenceClassifierOutput with `loss_{i}`, `attentions_{i}`, ... entries."""


class SegmentedCausalLMOutput(PerSegmentEntries, CausalLMOutput):
    """The decoder wrapper's output: CausalLMOutput with `segment_losses`, `hidden_states_{i}`, ... entries."""
