"""Recurrent Memory Transformer around a Hugging Face causal LM (GPT-2, GPT-NeoX, Llama-style); see
docs/design.md (memory wrappers).

Bulatov et al., "Scaling Transformer to 1M tokens and beyond with RMT" (2023) / AAAI 2024: a learned memory is
read at the start of each segment and written at its end, `[mem read] tokens [mem write]`; the last hidden
state at the write positions is the memory of the next segment. `MemoryCell` is one segment step and
`RecurrentWrapper` the loop over segments. With `memory_type='associative'` (ARMT, `modeling_rmt.associative`) a
segment is `tokens [mem write]`: the write positions fill every layer's associative memory, which the tokens of
the next segments read inside each layer.
"""
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from modeling_rmt.associative import AssociativeMemory
from modeling_rmt.memory_config import (MemoryConfig, UsesMemoryConfig, memory_config_or_keywords,
                                        memory_positions)  # noqa: F401 (memory_positions: imported from here too)
from modeling_rmt.outputs import SegmentedCausalLMOutput
from modeling_rmt.segments import (
    call_segment,
    check_per_segment_outputs,
    input_embeddings,
    map_state,
    memory_for_segment,
    segment_boundaries,
    where_started,
)

IGNORE_INDEX = -100


def check_one_input(input_ids, inputs_embeds):
    """Raise ValueError unless exactly one of `input_ids` and `inputs_embeds` is given."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")


def shifted_targets(labels, labels_mask, attention_mask):
    """(B, T) target of the prediction made at each position: labels[t + 1], IGNORE_INDEX where nothing counts.

    Ignored: -100 labels, labels outside `labels_mask`, predictions made at padding (e.g. a left-padded sample's
    first token), and the last position, which predicts nothing.
    """
    targets = labels[:, 1:]  # (B, T - 1): position t is predicted at t - 1
    if labels_mask is not None:
        targets = targets.masked_fill(~labels_mask[:, 1:].bool(), IGNORE_INDEX)
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, :-1] == 0, IGNORE_INDEX)
    return F.pad(targets, (0, 1), value=IGNORE_INDEX)


def positions_from_mask(attention_mask):
    """(B, T) 0/1 mask -> (B, T) position ids that skip masked positions, as `generate` computes them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def check_same_memory(memory_config, cell_config):
    """Raise ValueError unless `memory_config` has segments and the memory of the cell's configuration."""
    if memory_config.input_size is None:
        raise ValueError("memory_config.input_size=None; expected the ids per backbone call: RecurrentWrapper "
                         "needs its segments (or segment_size=)")
    for name in ("num_mem_tokens", "memory_type", "d_mem"):
        if getattr(memory_config, name) != getattr(cell_config, name):
            raise ValueError(f"memory_config.{name}={getattr(memory_config, name)!r} but the memory cell has "
                             f"{name}={getattr(cell_config, name)!r}; expected the cell's memory")


class MemoryCell(UsesMemoryConfig, nn.Module):
    """One segment step of the decoder RMT: `[memory read] tokens [memory write]` through a causal LM.

    Takes `memory_config` (a MemoryConfig with layout 'decoder', of which it uses the memory: num_mem_tokens,
    memory_type, d_mem), or the seed's memory keywords, which build one without segments (input_size None).

    Args:
        base_model: a Hugging Face causal LM that accepts `inputs_embeds`.
        num_mem_tokens: number of memory vectors m; 0 runs the bare backbone.
        memory_type: 'tokens' (the paper) or 'associative' (ARMT: the m vectors are the write embeddings, the same in
            every segment, and the memory state is every layer's (A, z)).
        d_mem: associative memory only: size of its keys and queries before DPFP (the ARMT paper: 64).
        memory_config: in place of the three keywords; RecurrentWrapper(cell) then takes its segments from it.
    """

    def __init__(self, base_model, num_mem_tokens=None, memory_type="tokens", d_mem=64, *, memory_config=None):
        super().__init__()
        keywords = {"num_mem_tokens": num_mem_tokens, "memory_type": memory_type, "d_mem": d_mem}
        self.memory_config = memory_config_or_keywords(
            memory_config, "decoder", keywords, MemoryCell.__init__,
            lambda: MemoryConfig(layout="decoder", num_mem_tokens=num_mem_tokens, memory_type=memory_type,
                                 d_mem=d_mem))
        embeddings = input_embeddings(base_model)
        self.model = base_model
        self.associative = (AssociativeMemory(base_model, self.memory_config.d_mem)
                            if self.memory_type == "associative" else None)
        # docs/design.md: random normal scaled to the spread of the token embeddings
        weight = embeddings.weight.detach()
        self.memory = nn.Parameter(torch.randn(self.num_mem_tokens, weight.shape[1], dtype=weight.dtype,
                                               device=weight.device) * weight.float().std().to(weight.dtype))
        self.accepts_position_ids = "position_ids" in inspect.signature(base_model.forward).parameters

    def initial_memory(self, batch_size):
        """Memory before the first segment: (B, m, H), or the associative memory's empty state (A, z)."""
        if self.associative is not None:
            return self.associative.initial_state(batch_size, self.memory.device)
        return self.memory[None].expand(batch_size, -1, -1)

    def forward(self, input_ids=None, memory_state=None, attention_mask=None, inputs_embeds=None, **model_kwargs):
        """Run one segment.

        Args:
            input_ids: (B, T) token ids, or `inputs_embeds` (B, T, H).
            memory_state: memory to read ((B, m, H), or the associative state (A, z)); None for the initial memory.
            attention_mask: optional (B, T) mask of real tokens (padding may be anywhere).
            model_kwargs: passed to the backbone (e.g. output_attentions).

        Returns:
            (output, new_memory): the backbone's output with `logits` (B, T, V) cut to the token positions,
            and the memory written by this segment ((B, m, H), or the associative memory's (A, z)).
        """
        embeds = self._token_embeddings(input_ids, inputs_embeds)  # (B, T, H)
        batch_size, n_tokens = embeds.shape[:2]
        memory = self.initial_memory(batch_size) if memory_state is None else memory_state
        if self.associative is not None:
            return self._associative_step(embeds, memory, attention_mask, **model_kwargs)
        memory = memory.to(embeds.dtype)
        inputs_embeds = torch.cat([memory, embeds, memory], dim=1)  # (B, m + T + m, H)
        output = self.model(**self._model_inputs(inputs_embeds, attention_mask, n_tokens, write=True),
                            use_cache=False, output_hidden_states=True, **model_kwargs)
        # (B, m, H), a copy: a view would keep the segment's whole last hidden state alive with the memory
        new_memory = output.hidden_states[-1][:, self.num_mem_tokens + n_tokens:].clone()
        output.logits = output.logits[:, self.num_mem_tokens:self.num_mem_tokens + n_tokens]
        return output, new_memory

    def _associative_step(self, embeds, state, attention_mask, **model_kwargs):
        """`tokens [mem write]` through the backbone, reading from and writing to the associative state (A, z)."""
        n_tokens = embeds.shape[1]
        write = self.memory[None].expand(len(embeds), -1, -1).to(embeds.dtype)  # (B, m, H)
        inputs = self._model_inputs(torch.cat([embeds, write], dim=1), attention_mask, n_tokens, write=True,
                                    read=False)
        with self.associative.segment(state, write_positions=slice(n_tokens, None)) as segment:
            output = self.model(**inputs, use_cache=False, output_hidden_states=True, **model_kwargs)
        output.logits = output.logits[:, :n_tokens]
        return output, segment.new_state()

    def generate(self, input_ids, memory_state=None, attention_mask=None, **generate_kwargs):
        """Generate after `[memory read] input_ids` with the backbone's `generate` (the associative memory: after
        `input_ids`, every layer reading from the memory state, which generation does not write).

        Returns:
            (B, n_new) generated token ids (the backbone returns only new tokens when given `inputs_embeds`).
        """
        embeds = self._token_embeddings(input_ids, None)  # (B, T, H)
        memory = self.initial_memory(len(embeds)) if memory_state is None else memory_state
        if self.associative is not None:
            inputs = self._model_inputs(embeds, attention_mask, embeds.shape[1], write=False, read=False)
            inputs.pop("position_ids", None)
            with self.associative.segment(memory):
                return self.model.generate(**inputs, **generate_kwargs)
        inputs_embeds = torch.cat([memory.to(embeds.dtype), embeds], dim=1)  # (B, m + T, H)
        inputs = self._model_inputs(inputs_embeds, attention_mask, embeds.shape[1], write=False)
        inputs.pop("position_ids", None)  # generate derives them from the attention mask the same way
        return self.model.generate(**inputs, **generate_kwargs)

    def _token_embeddings(self, input_ids, inputs_embeds):
        check_one_input(input_ids, inputs_embeds)
        return self.model.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds

    def _model_inputs(self, inputs_embeds, attention_mask, n_tokens, write, read=True):
        """Backbone inputs: embeddings, the mask extended over the memory read / write positions, positions that
        skip padding."""
        batch_size = inputs_embeds.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, n_tokens, dtype=torch.long, device=inputs_embeds.device)
        memory_mask = attention_mask.new_ones(batch_size, self.num_mem_tokens)
        parts = [memory_mask] * read + [attention_mask] + [memory_mask] * write
        mask = torch.cat(parts, dim=1)  # (B, m + T [+ m])
        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": mask}
        if self.accepts_position_ids:
            inputs["position_ids"] = positions_from_mask(mask)
        return inputs


class RecurrentWrapper(UsesMemoryConfig, nn.Module):
    """Run a `MemoryCell` over the segments of a long sequence and compute the language-modelling loss.

    The sequence is cut at the same positions for the whole batch (`segment_alignment`, default 'right', so
    left padding stays in the leading segments). A sample whose segment is all padding keeps its memory, so a
    left-padded sample gives the same result as the sample alone.

        RecurrentWrapper(MemoryCell(gpt2, memory_config=MemoryConfig(layout="decoder", num_mem_tokens=2,
                                                                     input_size=1024, max_n_segments=4)))

    The segment keywords (segment_size .. segment_checkpointing, the seed's signature) build the same
    MemoryConfig from the cell's memory (input_size = segment_size + the memory positions); without them the
    wrapper takes `memory_config`, else the cell's. The attributes (`segment_size`, `k2`, ...) are views of
    `self.memory_config`.

    Args:
        memory_cell: a `MemoryCell`.
        segment_size: tokens per segment.
        max_n_segments: longest sequence accepted is `segment_size * max_n_segments` tokens.
        k2: truncated BPTT: gradients flow through at most the last `k2` segments (-1: all). The memory entering
            segment j of n is detached when j <= n - k2 (counted on this batch's n, not max_n_segments).
        segment_alignment: 'right' (default, None), 'left' or 'center'; see `modeling_rmt.segments`.
        segment_checkpointing: free each segment's activations after its forward pass and recompute them in the
            backward pass: training memory stays that of one segment plus the memory state and the inputs of each
            segment, and the (detached) logits unless `forward(return_logits=False)`; gradients stay those of full
            BPTT; each segment costs one more forward pass. The returned logits then have no graph.
        memory_config: a MemoryConfig with layout 'decoder' and the cell's memory, in place of the keywords.
    """

    def __init__(self, memory_cell, segment_size=None, max_n_segments=None, k2=-1, segment_alignment=None,
                 segment_checkpointing=False, *, memory_config=None):
        super().__init__()
        cell = memory_cell.memory_config
        keywords = {"segment_size": segment_size, "max_n_segments": max_n_segments, "k2": k2,
                    "segment_alignment": segment_alignment, "segment_checkpointing": segment_checkpointing}
        if memory_config is None and segment_size is None:
            memory_config = cell  # RecurrentWrapper(MemoryCell(backbone, memory_config=config))
        self.memory_config = memory_config_or_keywords(
            memory_config, "decoder", keywords, RecurrentWrapper.__init__, lambda: MemoryConfig.from_segment_size(
                segment_size, num_mem_tokens=cell.num_mem_tokens, memory_type=cell.memory_type, d_mem=cell.d_mem,
                max_n_segments=max_n_segments, bptt_segments=k2, segment_alignment=segment_alignment,
                segment_checkpointing=segment_checkpointing))
        check_same_memory(self.memory_config, cell)
        self.memory_cell = memory_cell

    @property
    def k2(self):
        """Truncated BPTT in segments that gradients flow through (-1: all), the seed's name for this wrapper."""
        return self.memory_config.bptt_segments

    def forward(self, input_ids=None, labels=None, labels_mask=None, attention_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_logits=True):
        """Language-model a long sequence segment by segment.

        Args:
            input_ids: (B, T) token ids, or `inputs_embeds` (B, T, H).
            labels: optional (B, T) targets; position t is predicted from the logits at t - 1; -100 is ignored,
                and so is a target whose predicting position t - 1 is padding.
            labels_mask: optional (B, T) bool, the label positions that count in the loss (e.g. the answer).
            attention_mask: optional (B, T) mask of real tokens (left padding).
            output_attentions, output_hidden_states: also return `attentions_{i}` / `hidden_states_{i}` per
                segment i (memory then grows with the number of segments; ValueError with
                segment_checkpointing).
            return_logits: False returns `logits=None` and keeps no (B, T, V) tensor: with segment checkpointing and
                labels, memory then no longer grows with the vocabulary size times the sequence length.

        Returns:
            SegmentedCausalLMOutput with `logits` (B, T, V) (None if not `return_logits`) and, with labels, `loss`
            (mean over counted tokens, 0 if none) and `segment_losses` / `segment_token_counts` (n_segments,): the
            detached mean loss and the number of counted next-token predictions made by each segment's logits (NaN
            loss where a segment has none).
        """
        check_one_input(input_ids, inputs_embeds)
        check_per_segment_outputs(self.segment_checkpointing, output_attentions, output_hidden_states)
        spans = self._spans(input_ids if input_ids is not None else inputs_embeds)
        targets = None if labels is None else shifted_targets(labels, labels_mask, attention_mask)  # (B, T)
        kwargs = {"output_attentions": output_attentions} if output_attentions else {}
        logits, loss_sums, per_segment = [], [], {}
        segments = self._run_segments(input_ids, inputs_embeds, attention_mask, spans, targets, return_logits, **kwargs)
        for index, (output, _, loss_sum) in enumerate(segments):
            logits.append(output.logits)
            loss_sums.append(loss_sum)
            if output_attentions:
                per_segment[f"attentions_{index}"] = output.attentions
            if output_hidden_states:
                per_segment[f"hidden_states_{index}"] = output.hidden_states
        logits = torch.cat(logits, dim=1) if return_logits else None  # (B, T, V)
        loss = None
        if labels is not None:
            loss, per_segment["segment_losses"], per_segment["segment_token_counts"] = self._loss(
                loss_sums, targets, spans)
        return SegmentedCausalLMOutput(loss=loss, logits=logits, **per_segment)

    def generate(self, input_ids, attention_mask=None, **generate_kwargs):
        """Read all but the last segment into memory, then generate from the last one.

        Supports batches of left-padded inputs (`attention_mask` 0 on the padding): each sample generates as
        it would alone.

        Args:
            input_ids: (B, T) prompt ids; attention_mask: optional (B, T).
            generate_kwargs: passed to the backbone's `generate` (max_new_tokens, eos_token_id, ...).

        Returns:
            (B, n_new) generated token ids, without the prompt.
        """
        spans = self._spans(input_ids)
        memory = None
        for _, memory, _ in self._run_segments(input_ids, None, attention_mask, spans[:-1]):
            pass
        start, end = spans[-1]
        mask = None if attention_mask is None else attention_mask[:, start:end]
        return self.memory_cell.generate(input_ids[:, start:end], memory_state=memory, attention_mask=mask,
                                         **generate_kwargs)

    def _spans(self, tokens):
        """[(start, end)] of each segment of the (B, T, ...) batch."""
        length = tokens.shape[1]
        if length > self.segment_size * self.max_n_segments:
            raise ValueError(f"sequence of {length} tokens is longer than max_n_segments={self.max_n_segments} "
                             f"x segment_size={self.segment_size}")
        starts, ends, _ = segment_boundaries(torch.tensor([length]), self.segment_size, self.alignment)
        return list(zip(starts[0].tolist(), ends[0].tolist()))

    def _run_segments(self, input_ids, inputs_embeds, attention_mask, spans, targets=None, return_logits=True,
                      **cell_kwargs):
        """Yield (cell output, memory after it, summed loss or None) for each segment; memory is (B, m, H).

        `targets`: optional (B, T) from `shifted_targets`; the loss of a segment is summed over its positions.
        """
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch_size = tokens.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        initial_memory = self.memory_cell.initial_memory(batch_size)
        memory = initial_memory
        started = torch.zeros(batch_size, dtype=torch.bool, device=tokens.device)  # seen a non-padding token
        for index, (start, end) in enumerate(spans):
            memory = memory_for_segment(memory, initial_memory, started, index, len(spans),
                                        self.memory_config.bptt_depth)
            segment_mask = attention_mask[:, start:end]  # (B, S)
            output, new_memory, loss_sum = call_segment(
                self._segment_step, memory, None if input_ids is None else input_ids[:, start:end],
                None if inputs_embeds is None else inputs_embeds[:, start:end], segment_mask,
                None if targets is None else targets[:, start:end], return_logits,
                checkpointed=self.segment_checkpointing and index < len(spans) - 1,  # the last: backward is next
                **cell_kwargs)
            has_tokens = segment_mask.bool().any(dim=1)  # (B,) an all-padding segment leaves the memory as is
            memory = where_started(has_tokens, map_state(lambda new, old: new.to(old.dtype), new_memory, memory),
                                   memory)
            started = started | has_tokens
            yield output, memory, loss_sum

    def _segment_step(self, memory, input_ids, inputs_embeds, attention_mask, targets, return_logits,
                      **cell_kwargs):
        """One memory-cell step and, with `targets` (B, S), the summed cross-entropy of its predictions.

        The loss is computed here, inside the step, so that with segment checkpointing the graph from the
        (B, S, V) logits to the loss is freed with the rest of the segment; the returned logits are then detached,
        or None without `return_logits`.
        """
        output, new_memory = self.memory_cell(input_ids=input_ids, inputs_embeds=inputs_embeds, memory_state=memory,
                                              attention_mask=attention_mask, **cell_kwargs)
        loss_sum = None
        if targets is not None:
            loss_sum = F.cross_entropy(output.logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                       reduction="sum")
        if not return_logits:
            output["logits"] = None
        elif self.segment_checkpointing and torch.is_grad_enabled():
            output["logits"] = output.logits.detach()
        return output, new_memory, loss_sum

    @staticmethod
    def _loss(loss_sums, targets, spans):
        """Mean loss over all counted predictions, the detached mean loss of each segment and its count."""
        counted = targets != IGNORE_INDEX  # (B, T)
        counts = torch.stack([counted[:, start:end].sum() for start, end in spans])  # (n_segments,)
        sums = torch.stack(loss_sums)  # (n_segments,)
        return sums.sum() / counts.sum().clamp(min=1), sums.detach() / counts, counts
