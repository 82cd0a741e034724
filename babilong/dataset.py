"""BABILong samples: task facts hidden in background text of an exact token length, the question at the end.

A sample has exactly `input_seq_len` task tokens and no special tokens (the paper counts lengths without
them; the memory wrapper adds [CLS]/[SEP]/memory itself). It is laid out

    background[:o_1] fact_1 background[o_1:o_2] fact_2 ... background[o_n:] question

where `background` is one contiguous span of the tokenized corpus (see babilong.background), cut at the token
level so that the total is exact, and o_1 <= ... <= o_n are insertion offsets chosen by the placement:
- 'sentence': each fact at its own uniformly random sentence boundary of the span, sorted (BABILong); the
  span starts at a sentence start.
- 'start': the facts, in order, at the very beginning (the paper's memorize task).
- 'segment': the facts start at the first token of a uniformly chosen segment of `segment_size` tokens,
  segments counted from the left (the paper's detect&memorize; with input_seq_len a multiple of
  segment_size these are the memory wrapper's segments).
- 'token': the facts start at a uniformly random token position.
For 'start', 'segment' and 'token' the span is aligned so that a sentence boundary falls exactly at the
insertion point: facts never cut a sentence; only the span's two ends are cut mid-sentence.

Sample i is a pure function of (seed, split, i): every random choice comes from
`numpy.random.default_rng([seed, split_id, i])`.

Decoder items follow the BABILong release: `input_ids` = context + GEN + answer + EOS, where GEN is the
tokenization of the text 'GEN' (a plain token in any vocabulary, as in the release) and EOS is the tokenizer's
eos token, or its sep token when it has none (BERT).
"""
import logging
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from lm_experiments_tools.errors import BadInputError
from rmt_experiments.offline_model import eos_token_id, load_tokenizer

from .background import BackgroundCorpus, load_background
from .tasks import PLACEMENTS, SPLITS, Task, TaskSample, get_task

logger = logging.getLogger(__name__)

MODEL_TYPES = ("encoder", "decoder")
DEFAULT_NUM_SAMPLES = 10_000  # generated tasks have no natural size
# BERT input 512 - 10 memory tokens - 3 special tokens (docs/design.md, "Segments and their layout")
DEFAULT_SEGMENT_SIZE = 499
GEN_TEXT = "GEN"
LABEL_PAD_ID = -100


@dataclass
class BuiltSample:
    """A sample before it becomes model inputs.

    Attributes:
        input_ids: (input_seq_len,) int64 task token ids.
        task_sample: the facts, question and answer hidden in it.
        fact_positions: token index of the first token of each fact, in order.
    """

    input_ids: np.ndarray
    task_sample: TaskSample
    fact_positions: list


def _check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_positive_int(name: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _encode(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)


def _block_offsets(corpus: BackgroundCorpus, rng, position: int, n_facts: int):
    """Span start so that a random sentence boundary lands at `position`; all facts go there."""
    sentence = int(rng.integers(corpus.n_sentences))
    return int(corpus.sentence_position(sentence)) - position, [position] * n_facts


def _sentence_offsets(corpus: BackgroundCorpus, rng, n_facts: int, length: int):
    """Span from a random sentence start; facts at sorted random sentence boundaries inside it."""
    first = int(rng.integers(corpus.n_sentences))
    start = int(corpus.sentence_position(first))
    n_boundaries = corpus.count_sentences_until(start + length) - first  # >= 1: the span's own start
    chosen = np.sort(rng.integers(n_boundaries, size=n_facts))
    return start, (corpus.sentence_position(first + chosen) - start).tolist()


def place_facts(placement: str, corpus: BackgroundCorpus, rng, n_facts: int, length: int, segment_size: int):
    """Choose the background span and the facts' insertion offsets into it.

    Args:
        placement: one of PLACEMENTS (see the module docstring).
        corpus: the tokenized background.
        rng: numpy Generator.
        n_facts: number of facts.
        length: background span length in tokens.
        segment_size: tokens per segment for 'segment'.

    Returns:
        (span start in the repeated corpus, list of n_facts sorted offsets in [0, length]).
    """
    if placement == "sentence":
        return _sentence_offsets(corpus, rng, n_facts, length)
    if placement == "start":
        position = 0
    elif placement == "segment":
        position = segment_size * int(rng.integers(length // segment_size + 1))
    else:
        position = int(rng.integers(length + 1))
    return _block_offsets(corpus, rng, position, n_facts)


def interleave(background: np.ndarray, offsets: list, facts: list, question: np.ndarray):
    """Insert facts into background at offsets and append the question.

    Returns:
        ((len(background) + fact and question tokens,) ids, start position of each fact).
    """
    pieces, positions, cursor, shift = [], [], 0, 0
    for offset, fact in zip(offsets, facts):
        pieces += [background[cursor:offset], fact]
        positions.append(offset + shift)
        cursor, shift = offset, shift + len(fact)
    pieces += [background[cursor:], question]
    return np.concatenate(pieces).astype(np.int64), positions


def build_sample(task_sample: TaskSample, corpus: BackgroundCorpus, tokenizer, input_seq_len: int, rng,
                 placement: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> BuiltSample:
    """Hide `task_sample` in background from `corpus` so that the result has exactly input_seq_len tokens."""
    facts = [_encode(tokenizer, fact) for fact in task_sample.facts]
    question = _encode(tokenizer, task_sample.question)
    n_task_tokens = sum(map(len, facts)) + len(question)
    length = input_seq_len - n_task_tokens
    if length < 0:
        raise ValueError(f"input_seq_len={input_seq_len} is too small for the facts and question "
                         f"({n_task_tokens} tokens); expected at least {n_task_tokens}")
    start, offsets = place_facts(placement, corpus, rng, len(facts), length, segment_size)
    input_ids, positions = interleave(corpus.span(start, length), offsets, facts, question)
    return BuiltSample(input_ids, task_sample, positions)


class BABILongDataset(Dataset):
    """A BABILong task hidden in background text, as encoder or decoder model inputs.

    Args:
        task: a Task or a task name (see babilong.tasks.get_task).
        background: a BackgroundCorpus or a source spec for babilong.background.load_background.
        tokenizer: Hugging Face tokenizer; None means the offline default (MiniLM).
        input_seq_len: task tokens per sample (background + facts + question), no special tokens.
        split: 'train' or 'valid' (background and bAbI files differ per split).
        seed: samples are a pure function of (seed, split, index).
        num_samples: dataset size; default: the bAbI split's question count or DEFAULT_NUM_SAMPLES.
        placement: one of PLACEMENTS; default: the task's own.
        model_type: 'encoder' (class index labels) or 'decoder' (BABILong release generation format).
        segment_size: tokens per segment for the 'segment' placement.
        babi_path, max_n_facts: passed to get_task when `task` is a name.
        cache_dir: optional on-disk cache of the tokenized background.
    """

    def __init__(self, task: Union[Task, str], background: Union[BackgroundCorpus, str], tokenizer,
                 input_seq_len: int, split: str = "train", seed: int = 0, num_samples: Optional[int] = None,
                 placement: Optional[str] = None, *, model_type: str = "encoder",
                 segment_size: int = DEFAULT_SEGMENT_SIZE, babi_path: Optional[str] = None,
                 max_n_facts: Optional[int] = None, cache_dir: Optional[str] = None):
        _check_choice("split", split, SPLITS)
        _check_choice("model_type", model_type, MODEL_TYPES)
        _check_positive_int("input_seq_len", input_seq_len)
        _check_positive_int("segment_size", segment_size)
        self.task = get_task(task, babi_path, max_n_facts) if isinstance(task, str) else task
        self.placement = placement or self.task.default_placement
        _check_choice("placement", self.placement, PLACEMENTS)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        if isinstance(background, str):
            background = load_background(background, split, self.tokenizer, cache_dir)
        self.corpus = background
        self.input_seq_len, self.split, self.seed = input_seq_len, split, seed
        self.model_type, self.segment_size = model_type, segment_size
        if num_samples is None:
            num_samples = self.task.num_samples(split) or DEFAULT_NUM_SAMPLES
        self.num_samples = num_samples
        _check_positive_int("num_samples", self.num_samples)
        if model_type == "decoder":
            self._gen_ids, self._eos_ids = self._generation_markers()
        self._check_task_tokens_fit()
        self.build(0)  # fail now, not inside a data loader worker, when the length cannot hold the task

    def _check_task_tokens_fit(self) -> None:
        """Refuse an input_seq_len that some sample's facts and question do not fit in, naming the longest sample.

        Every sample of a task with a finite sample list (bAbI) is measured, so that a long story fails here and
        not at run time; generated tasks are checked on their first sample (build(0)).
        """
        n_distinct = self.task.num_samples(self.split)
        if n_distinct is None:
            return
        lengths = {}  # token count per sentence: bAbI stories repeat a few hundred sentences

        def tokens(text: str) -> int:
            if text not in lengths:
                lengths[text] = len(_encode(self.tokenizer, text))
            return lengths[text]

        longest, index = max((sum(map(tokens, sample.facts)) + tokens(sample.question), index) for index, sample in
                             ((i, self.task.draw(self._rng(i), i, self.split))
                              for i in range(min(n_distinct, self.num_samples))))
        if longest > self.input_seq_len:
            raise BadInputError(f"{self.task.name} {self.split} sample {index} has {longest} task tokens (its story "
                                f"facts and question), more than input_seq_len={self.input_seq_len}: expected "
                                f"input_seq_len >= {longest} (more segments or a larger input_size), or "
                                "--max_n_facts to drop long stories")

    def _rng(self, index: int) -> np.random.Generator:
        """The generator of sample `index`: a pure function of (seed, split, index)."""
        return np.random.default_rng([self.seed, SPLITS.index(self.split), index])

    def _generation_markers(self):
        return _encode(self.tokenizer, GEN_TEXT), np.array([eos_token_id(self.tokenizer)], dtype=np.int64)

    def __len__(self):
        return self.num_samples

    def build(self, index: int) -> BuiltSample:
        """Sample `index` with its facts and their positions (what the model sees, before targets)."""
        rng = self._rng(index)
        task_sample = self.task.draw(rng, index, self.split)
        return build_sample(task_sample, self.corpus, self.tokenizer, self.input_seq_len, rng,
                            self.placement, self.segment_size)

    def __getitem__(self, index: int) -> dict:
        sample = self.build(index)
        if self.model_type == "encoder":
            return {"input_ids": torch.from_numpy(sample.input_ids),
                    "labels": self.task.label_index(sample.task_sample.answer)}
        return self._decoder_item(sample.input_ids, sample.task_sample.answer)

    def _decoder_item(self, context: np.ndarray, answer: str) -> dict:
        prompt = np.concatenate([context, self._gen_ids])
        input_ids = torch.from_numpy(np.concatenate([prompt, _encode(self.tokenizer, answer), self._eos_ids]))
        labels_mask = torch.zeros(len(input_ids), dtype=torch.bool)
        labels_mask[len(prompt):] = True  # answer + EOS
        return {"input_ids": input_ids, "labels": input_ids.clone(), "labels_mask": labels_mask,
                "input_ids_generate": torch.from_numpy(prompt), "target_text": answer}


def pad_sequences(sequences: list, value, side: str = "right") -> torch.Tensor:
    """Stack 1-d tensors into (batch, max_len), padding with `value` on `side` ('right' or 'left')."""
    max_len = max(len(s) for s in sequences)
    padded = torch.full((len(sequences), max_len), value, dtype=sequences[0].dtype)
    for row, sequence in zip(padded, sequences):
        if side == "right":
            row[:len(sequence)] = sequence
        else:
            row[max_len - len(sequence):] = sequence
    return padded


def _attention_mask(sequences: list, side: str) -> torch.Tensor:
    return pad_sequences([torch.ones(len(s), dtype=torch.long) for s in sequences], 0, side)


def encoder_collate(batch: list, pad_token_id: int) -> dict:
    """Batch encoder items: input_ids right-padded (batch, max_len), attention_mask, labels (batch,)."""
    input_ids = [item["input_ids"] for item in batch]
    return {"input_ids": pad_sequences(input_ids, pad_token_id),
            "attention_mask": _attention_mask(input_ids, "right"),
            "labels": torch.tensor([item["labels"] for item in batch], dtype=torch.long)}


def decoder_collate(batch: list, pad_token_id: int) -> dict:
    """Batch decoder items: training tensors right-padded, generation prompts left-padded.

    Returns:
        input_ids, attention_mask, labels (padded with -100), labels_mask (bool): (batch, max_len);
        input_ids_generate, attention_mask_generate: (batch, max_prompt_len), left-padded;
        target_text: list of answers.
    """
    input_ids = [item["input_ids"] for item in batch]
    prompts = [item["input_ids_generate"] for item in batch]
    return {"input_ids": pad_sequences(input_ids, pad_token_id),
            "attention_mask": _attention_mask(input_ids, "right"),
            "labels": pad_sequences([item["labels"] for item in batch], LABEL_PAD_ID),
            "labels_mask": pad_sequences([item["labels_mask"] for item in batch], False),
            "input_ids_generate": pad_sequences(prompts, pad_token_id, "left"),
            "attention_mask_generate": _attention_mask(prompts, "left"),
            "target_text": [item["target_text"] for item in batch]}
