"""Segment data for language modelling with recurrent memory (docs/design.md, "ArXiv language modelling").

Documents are tokenized once (an end-of-document token is appended to each). Every full block of
`segment_size` tokens of a document is the target of exactly one sample; the sample is that block plus up
to `max_n_segments - 1` blocks of the same document right before it (its history). So the set of target
blocks does not depend on `max_n_segments`: a one-segment baseline and an RMT trained on 7 segments score
the same tokens. The trailing partial block of a document is dropped, as `run_clm` drops its remainder.

A batch is left-padded with whole blocks so that block boundaries line up with the segments that
`RecurrentWrapper` cuts from the left; the loss covers the last block only. Inside that block the first
token is left out of the loss: the recurrent model would predict it from the previous segment, which a
one-segment baseline does not have, so leaving it out gives every model the same `segment_size - 1` targets.
"""
import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from lm_experiments_tools.errors import BadInputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


def tokenize_splits(splits, tokenizer, num_proc=None):
    """Tokenize every document once, appending the eos token, and record its length.

    Args:
        splits: a DatasetDict with a 'text' column (`text_sources.as_dataset_dict`).
        tokenizer: a tokenizer with an eos token (`offline_model.ensure_pad_and_eos`).

    Returns:
        DatasetDict with columns `input_ids` (list of token ids) and `n_tokens`.
    """
    from datasets import DatasetDict
    for name, split in splits.items():
        if "text" not in split.column_names:
            raise BadInputError(f"split {name!r} has columns {split.column_names}, expected a 'text' column")
    eos_id = tokenizer.eos_token_id

    def tokenize(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        ids = [doc + [eos_id] for doc in ids]
        return {"input_ids": ids, "n_tokens": [len(doc) for doc in ids]}

    return DatasetDict({
        name: split.map(tokenize, batched=True, remove_columns=split.column_names, num_proc=num_proc,
                        desc=f"tokenize {name}")
        for name, split in splits.items()
    })


class SegmentDataset(TorchDataset):
    """One sample per full block of every document: the block with up to `max_n_segments - 1` blocks of history.

    Args:
        documents: indexable sequence of token id arrays (a list of lists, or a `datasets` column).
        doc_lengths: number of tokens of each document.
        segment_size: tokens per block (= input_size - 2 * num_mem_tokens).
        max_n_segments: the most blocks a sample holds (the target block included).
    """

    def __init__(self, documents, doc_lengths, segment_size, max_n_segments):
        if segment_size < 2 or max_n_segments < 1:
            raise ValueError(f"segment_size {segment_size} and max_n_segments {max_n_segments}: "
                             "expected segment_size >= 2 and max_n_segments >= 1")
        self.documents = documents
        self.segment_size = segment_size
        self.max_n_segments = max_n_segments
        n_blocks = np.asarray(doc_lengths, dtype=np.int64) // segment_size  # (n_docs,)
        self.first_sample = np.concatenate([[0], np.cumsum(n_blocks)])  # (n_docs + 1,) sample id of a doc's block 0

    @classmethod
    def from_tokenized(cls, split, segment_size, max_n_segments):
        """Build from a split made by `tokenize_splits`."""
        documents = split.with_format("numpy")["input_ids"]
        return cls(documents, split["n_tokens"], segment_size, max_n_segments)

    def __len__(self):
        return int(self.first_sample[-1])

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        doc = int(np.searchsorted(self.first_sample, index, side="right")) - 1
        block = index - int(self.first_sample[doc])
        first_block = max(0, block - self.max_n_segments + 1)
        tokens = self.documents[doc][first_block * self.segment_size:(block + 1) * self.segment_size]
        return {"input_ids": np.asarray(tokens, dtype=np.int64), "index": index}


@dataclass
class SegmentCollator:
    """Left-pad samples of whole blocks into a batch whose loss covers the last block.

    With `vary_n_segments`, each batch keeps only its last n blocks, n drawn uniformly from
    1..max_n_segments by a generator seeded with (seed, the batch's first sample index), so the draw is
    a pure function of the batch and does not depend on data loader workers.

    Returns (from a call):
        dict with `input_ids`, `attention_mask`, `labels` (-100 outside the scored tokens) and `labels_mask`
        (bool), each (batch, n_blocks * segment_size).
    """

    pad_token_id: int
    segment_size: int
    max_n_segments: int
    vary_n_segments: bool = False
    seed: int = 0

    def _n_tokens(self, samples):
        n_tokens = max(len(sample["input_ids"]) for sample in samples)
        if self.vary_n_segments:
            rng = random.Random(f"{self.seed}-{samples[0]['index']}")
            n_tokens = min(n_tokens, rng.randint(1, self.max_n_segments) * self.segment_size)
        return n_tokens

    def __call__(self, samples):
        n_tokens = self._n_tokens(samples)
        input_ids = torch.full((len(samples), n_tokens), self.pad_token_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros_like(input_ids)
        for row, sample in enumerate(samples):
            tokens = torch.as_tensor(sample["input_ids"][-n_tokens:])
            input_ids[row, n_tokens - len(tokens):] = tokens
            attention_mask[row, n_tokens - len(tokens):] = 1
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        scored = slice(n_tokens - self.segment_size + 1, n_tokens)  # the last block without its first token
        labels[:, scored] = input_ids[:, scored]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "labels_mask": labels != IGNORE_INDEX}
