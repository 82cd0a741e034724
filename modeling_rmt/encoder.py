"""Recurrent Memory Transformer around a Hugging Face encoder classifier (BERT, RoBERTa, MiniLM); see
docs/design.md (memory wrappers).

Bulatov et al., "Recurrent Memory Transformer" (NeurIPS 2022) and "Beyond Attention: Breaking the Limits of
Transformer Context Length with Recurrent Memory" (AAAI 2024): memory tokens are prepended to every segment,
and the backbone's last hidden state at the memory positions becomes the memory of the next segment. With
`memory_type='associative'` (ARMT, `modeling_rmt.associative`) the memory positions hold the same learned
embeddings in every segment, and what they write goes into every layer's associative memory instead.
"""
import torch
from torch import nn
from tqdm.auto import tqdm

from modeling_rmt.associative import AssociativeMemory
from modeling_rmt.memory_config import (MemoryConfig, UsesMemoryConfig, bptt_segments_from_depth,
                                        memory_config_or_keywords)
from modeling_rmt.outputs import SegmentedClassifierOutput
from modeling_rmt.segments import (
    call_segment,
    check_per_segment_outputs,
    input_embeddings,
    memory_for_segment,
    put_rows,
    segment_boundaries,
    take_rows,
)

# tokens the wrapper drops from the input: it lays every segment out with its own special tokens
DROPPED_SPECIAL_TOKENS = ("cls_token_id", "sep_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
REQUIRED_SPECIAL_TOKENS = ("cls_token_id", "sep_token_id", "pad_token_id")


def special_token_ids(tokenizer):
    """Return {name: id} of the tokenizer's special tokens; raise ValueError if cls/sep/pad is missing."""
    ids = {name: getattr(tokenizer, name, None) for name in DROPPED_SPECIAL_TOKENS}
    missing = [name for name in REQUIRED_SPECIAL_TOKENS if ids[name] is None]
    if missing:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} lacks {missing}; the encoder layout "
                         "[CLS] mem [SEP] tokens [SEP] pad needs a cls, a sep and a pad token")
    return ids


def pack_tokens(input_ids, keep, max_tokens):
    """Move the kept tokens of each row to its front, preserving order, and truncate to `max_tokens`.

    Args:
        input_ids: (B, L) token ids.
        keep: (B, L) bool, tokens to keep.
        max_tokens: at most this many tokens are kept per sample (the first ones).

    Returns:
        tokens: (B, L') kept tokens at the front of each row (the rest is filler), L' >= 1.
        lengths: (B,) number of kept tokens per sample.
    """
    lengths = keep.sum(dim=1).clamp(max=max_tokens)  # (B,)
    order = torch.argsort(keep.logical_not().to(torch.uint8), dim=1, stable=True)  # kept positions first
    width = max(int(lengths.max()), 1)
    return input_ids.gather(1, order[:, :width]), lengths


class RMTEncoderForSequenceClassification(UsesMemoryConfig, nn.Module):
    """Recurrent memory over the segments of a long input for a `*ForSequenceClassification` backbone.

    Each segment is laid out as `[CLS] mem_1..mem_m [SEP] tokens [SEP] pad..` of `input_size` ids, so a segment
    holds `segment_size = input_size - m - 3` tokens (499 for input_size 512 and m = 10, the paper's setting).
    With `num_mem_tokens=0` the layout is the backbone's own `[CLS] tokens [SEP]` (segment_size = input_size - 2)
    and segments are independent: the no-memory baseline.

        RMTEncoderForSequenceClassification(backbone, tokenizer=tokenizer, memory_config=MemoryConfig(
            layout="encoder", num_mem_tokens=10, input_size=512, max_n_segments=4))

    The memory keywords (num_mem_tokens .. d_mem, the seed's signature) build the same MemoryConfig; pass either
    them or `memory_config`. The attributes (`segment_size`, `max_n_segments`, ...) are views of
    `self.memory_config`.

    Args:
        base_model: a Hugging Face sequence classifier; its input embeddings are resized by `num_mem_tokens`.
        num_mem_tokens: number of memory tokens m; their ids are appended after the vocabulary (the tokenizer is
            not modified), their embeddings are the initial memory.
        tokenizer: the backbone's tokenizer; only its cls, sep, pad (and bos, eos) token ids are used.
        input_size: ids per segment fed to the backbone (at most its max_position_embeddings).
        max_n_segments: at most `segment_size * max_n_segments` tokens of each sample are used (the first ones).
            May be changed after construction, e.g. to evaluate on longer inputs.
        bptt_depth: -1 for full backpropagation through time, or k >= 0: gradient flows through the last k
            memory transitions only (k = 0: only through the last segment); the configuration holds k + 1
            segments (`bptt_segments_from_depth`).
        sum_loss: if True the loss is the mean of the segment losses, else the last segment's loss.
        segment_alignment: 'right' (default, None), 'left' or 'center'; see `modeling_rmt.segments`.
        segment_checkpointing: free each segment's activations after its forward pass and recompute them in the
            backward pass: training memory stays that of one segment (plus the memory state and the inputs of
            each segment), gradients stay those of full BPTT, each segment costs one more forward pass.
        memory_type: 'tokens' (the paper: the memory is the hidden state at the memory positions) or
            'associative' (ARMT: every layer's key-value memory, written from the memory positions).
        d_mem: associative memory only: size of its keys and queries before DPFP (the ARMT paper: 64).
        memory_config: a MemoryConfig with layout 'encoder', in place of the memory keywords.
    """

    def __init__(self, base_model, num_mem_tokens=None, tokenizer=None, input_size=None, max_n_segments=None,
                 bptt_depth=-1, sum_loss=False, segment_alignment=None, segment_checkpointing=False,
                 memory_type="tokens", d_mem=64, *, memory_config=None):
        super().__init__()
        keywords = {"num_mem_tokens": num_mem_tokens, "input_size": input_size, "max_n_segments": max_n_segments,
                    "bptt_depth": bptt_depth, "segment_alignment": segment_alignment,
                    "segment_checkpointing": segment_checkpointing, "memory_type": memory_type, "d_mem": d_mem}
        self.memory_config = memory_config_or_keywords(
            memory_config, "encoder", keywords, RMTEncoderForSequenceClassification.__init__, lambda: MemoryConfig(
                layout="encoder", num_mem_tokens=num_mem_tokens, input_size=input_size,
                max_n_segments=max_n_segments, bptt_segments=bptt_segments_from_depth(bptt_depth),
                segment_alignment=segment_alignment, segment_checkpointing=segment_checkpointing,
                memory_type=memory_type, d_mem=d_mem))
        special_ids = special_token_ids(tokenizer)
        embeddings = input_embeddings(base_model)
        max_positions = getattr(base_model.config, "max_position_embeddings", self.input_size)
        if self.input_size > max_positions:
            raise ValueError(f"input_size={self.input_size} is more than the backbone's "
                             f"max_position_embeddings={max_positions}; expected at most that")
        self.model = base_model
        self.sum_loss = sum_loss
        self.cls_token_id, self.sep_token_id, self.pad_token_id = (special_ids[n] for n in REQUIRED_SPECIAL_TOKENS)
        self.dropped_token_ids = sorted({i for i in special_ids.values() if i is not None})
        self._add_memory_tokens(embeddings, len(tokenizer))
        self.associative = (AssociativeMemory(base_model, self.memory_config.d_mem)
                            if self.memory_type == "associative" else None)

    @property
    def bptt_depth(self):
        """Truncated BPTT in memory transitions (-1: all), the seed's unit for this wrapper."""
        return self.memory_config.bptt_depth

    def _add_memory_tokens(self, embeddings, tokenizer_size):
        """Append `num_mem_tokens` rows to the embeddings and build the fixed segment prefix."""
        # after both the tokenizer's ids and any spare embedding rows, so no existing token is reused
        first_mem_id = max(tokenizer_size, embeddings.num_embeddings)
        if self.num_mem_tokens:
            # new rows get the backbone's own weight init, as in the paper's code (older transformers)
            self.model.resize_token_embeddings(first_mem_id + self.num_mem_tokens, mean_resizing=False)
        mem_token_ids = torch.arange(first_mem_id, first_mem_id + self.num_mem_tokens)
        separator = [self.sep_token_id] if self.num_mem_tokens else []
        prefix = torch.tensor([self.cls_token_id, *mem_token_ids.tolist(), *separator])
        self.register_buffer("mem_token_ids", mem_token_ids, persistent=False)  # (m,)
        self.register_buffer("segment_prefix", prefix, persistent=False)  # (P,) [CLS] mem [SEP]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, show_progress=False):
        """Run the backbone over the segments of `input_ids`, carrying memory from one segment to the next.

        Args:
            input_ids: (B, L) token ids; special and pad tokens are dropped per sample, as are positions where
                `attention_mask` is 0.
            attention_mask: optional (B, L) mask of real tokens.
            token_type_ids: accepted for interface compatibility and ignored: every segment is re-laid out, and
                gets type 0 throughout as in the paper's code.
            labels: optional (B,) targets passed to the backbone's own loss, segment by segment.
            output_attentions, output_hidden_states: also return `attentions_{i}` / `hidden_states_{i}` of each
                segment slot i (memory then grows with the number of segments; ValueError with
                segment_checkpointing).
            return_dict: False returns a tuple of the output's values.
            show_progress: show a progress bar over segments.

        Returns:
            SegmentedClassifierOutput with `logits` (B, C) and `loss` of the last segment (the mean over segments
            with `sum_loss`), plus `loss_{i}` for each segment slot i; slots are aligned at the end of the batch,
            so slot i of a sample with fewer segments may be empty, and then it does not contribute to `loss_{i}`.
        """
        check_per_segment_outputs(self.segment_checkpointing, output_attentions, output_hidden_states)
        keep = ~torch.isin(input_ids, torch.tensor(self.dropped_token_ids, device=input_ids.device))
        if attention_mask is not None:
            keep &= attention_mask.bool()
        tokens, lengths = pack_tokens(input_ids, keep, self.segment_size * self.max_n_segments)  # (B, L'), (B,)
        starts, ends, n_segments = segment_boundaries(lengths, self.segment_size, self.alignment)  # (B, K) x2
        n_slots = starts.shape[1]
        first_slot = n_slots - n_segments  # (B,)
        initial_memory = self.initial_memory(len(input_ids), input_ids.device)
        memory = initial_memory
        per_segment, segment_losses = {}, []
        for slot in tqdm(range(n_slots), desc="segments", disable=not show_progress):
            active = (slot >= first_slot).nonzero().squeeze(1)  # (b,) samples with a segment in this slot
            memory = memory_for_segment(memory, initial_memory, slot > first_slot, slot, n_slots, self.bptt_depth)
            segment_ids, segment_mask = self._segment_layout(tokens, active, starts[active, slot], ends[active, slot])
            # the last segment is not checkpointed: its backward pass comes right after
            checkpointed = self.segment_checkpointing and slot < n_slots - 1
            output, new_memory = call_segment(self._segment_step, segment_ids, segment_mask,
                                              take_rows(memory, active, len(input_ids)),
                                              None if labels is None else labels[active], output_attentions,
                                              checkpointed=checkpointed)
            memory = put_rows(memory, active, new_memory)
            per_segment.update(self._segment_record(output, slot, output_attentions, output_hidden_states))
            if output.loss is not None:
                # with no graph to keep, a float: one small tensor kept per segment fragments the CPU heap
                segment_losses.append(output.loss if torch.is_grad_enabled() else output.loss.item())
        loss, losses = self._combine_losses(segment_losses, output.logits.device)
        result = SegmentedClassifierOutput(loss=loss, logits=output.logits,  # every sample is in the last slot
                                           **{f"loss_{slot}": value for slot, value in enumerate(losses)},
                                           **per_segment)
        return result if return_dict is not False else result.to_tuple()

    @property
    def input_embeddings(self):
        return self.model.get_input_embeddings()

    def initial_memory(self, batch_size, device):
        """Memory before the first segment: the memory tokens' embeddings (B, m, H), or the associative memory's
        empty state (A, z) of `AssociativeMemory.initial_state`."""
        if self.associative is not None:
            return self.associative.initial_state(batch_size, device)
        return self.input_embeddings(self.mem_token_ids).expand(batch_size, -1, -1)

    def _segment_layout(self, tokens, rows, starts, ends):
        """Lay out one segment per sample: `[CLS] mem [SEP] tokens [SEP] pad..`.

        Args:
            tokens: (B, L') packed tokens; rows: (b,) the samples in this segment; starts, ends: (b,) their spans.

        Returns:
            input_ids, attention_mask: (b, input_size).
        """
        lengths = ends - starts  # (b,)
        offsets = torch.arange(self.segment_size, device=tokens.device)  # (S,)
        positions = (starts[:, None] + offsets).clamp(max=tokens.shape[1] - 1)  # (b, S)
        body = tokens[rows[:, None], positions].masked_fill(offsets >= lengths[:, None], self.pad_token_id)
        prefix = self.segment_prefix.expand(len(rows), -1)  # (b, P)
        closing = torch.full_like(body[:, :1], self.pad_token_id)  # room for [SEP] after a full segment
        input_ids = torch.cat([prefix, body, closing], dim=1)  # (b, input_size)
        sep_position = prefix.shape[1] + lengths  # (b,)
        input_ids.scatter_(1, sep_position[:, None], self.sep_token_id)
        attention_mask = torch.arange(self.input_size, device=tokens.device) <= sep_position[:, None]
        return input_ids, attention_mask.long()

    def _segment_step(self, input_ids, attention_mask, memory, labels, output_attentions):
        """Embed the segment, write `memory` (b, m, H) into the memory positions and run the backbone; with an
        associative memory, run the backbone reading from and writing to the state `memory`.

        Returns:
            (the backbone's output, the memory it writes for the next segment: (b, m, H) or the state (A, z)).
        """
        if self.associative is not None:
            with self.associative.segment(memory, write_positions=slice(1, 1 + self.num_mem_tokens)) as segment:
                output = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                    output_hidden_states=True, output_attentions=bool(output_attentions))
            return output, segment.new_state()
        embeds = self.input_embeddings(input_ids)  # (b, input_size, H)
        embeds = torch.cat([embeds[:, :1], memory.to(embeds.dtype), embeds[:, 1 + self.num_mem_tokens:]], dim=1)
        output = self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                            output_hidden_states=True, output_attentions=bool(output_attentions))
        # a copy: a view would keep the segment's whole last hidden state alive for as long as the memory lives
        return output, output.hidden_states[-1][:, 1:1 + self.num_mem_tokens].clone()

    def _combine_losses(self, segment_losses, device):
        """(loss, (K,) loss of each slot) from the segment losses (tensors or floats); (None, []) without any."""
        if not segment_losses:
            return None, []
        if torch.is_tensor(segment_losses[0]):
            losses = torch.stack(segment_losses)
        else:
            losses = torch.tensor(segment_losses, device=device)
        return (losses.mean() if self.sum_loss else losses[-1]), losses

    @staticmethod
    def _segment_record(output, slot, output_attentions, output_hidden_states):
        """What the caller asked to keep of this segment's output: its attentions, hidden states."""
        wanted = {"attentions": output_attentions, "hidden_states": output_hidden_states}
        return {f"{key}_{slot}": output[key] for key, keep in wanted.items() if keep}
