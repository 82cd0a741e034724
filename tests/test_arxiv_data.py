"""Tests of the ArXiv segment data (arxiv_lm.data) and its per-position metrics (arxiv_lm.metrics)."""
import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict

from arxiv_lm.data import IGNORE_INDEX, SegmentCollator, SegmentDataset, tokenize_splits
from arxiv_lm.metrics import block_nll, segment_metrics
from rmt_experiments.offline_model import load_tokenizer

SEGMENT = 4
PAD = 0


def make_dataset(doc_lengths, max_n_segments):
    """Documents whose tokens are 1, 2, 3, ... so that every sample's content is easy to predict."""
    documents = [list(range(1 + 100 * doc, 1 + 100 * doc + length)) for doc, length in enumerate(doc_lengths)]
    return documents, SegmentDataset(documents, doc_lengths, SEGMENT, max_n_segments)


def test_one_sample_per_full_block_with_history():
    # doc 0: 2.5 blocks (shorter than the 3-block history), doc 1: 6 blocks (longer), doc 2: under one block
    documents, dataset = make_dataset([10, 24, 3], max_n_segments=4)
    assert len(dataset) == 2 + 6
    expected = [documents[0][:4], documents[0][:8]]
    expected += [documents[1][max(0, block - 3) * SEGMENT:(block + 1) * SEGMENT] for block in range(6)]
    assert [dataset[i]["input_ids"].tolist() for i in range(len(dataset))] == expected
    assert [len(dataset[i]["input_ids"]) // SEGMENT for i in range(len(dataset))] == [1, 2, 1, 2, 3, 4, 4, 4]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_target_blocks_do_not_depend_on_max_n_segments():
    last_blocks = []
    for max_n_segments in (1, 3, 7):
        _, dataset = make_dataset([10, 24, 17], max_n_segments)
        last_blocks.append([dataset[i]["input_ids"][-SEGMENT:].tolist() for i in range(len(dataset))])
    assert last_blocks[0] == last_blocks[1] == last_blocks[2]


def test_collate_left_pads_and_scores_the_last_block():
    _, dataset = make_dataset([10, 24], max_n_segments=3)
    samples = [dataset[0], dataset[1], dataset[5]]  # 1, 2 and 3 blocks
    batch = SegmentCollator(PAD, SEGMENT, max_n_segments=3)(samples)
    assert {key: tuple(value.shape) for key, value in batch.items()} == {
        "input_ids": (3, 12), "attention_mask": (3, 12), "labels": (3, 12), "labels_mask": (3, 12)}
    assert batch["attention_mask"].sum(1).tolist() == [4, 8, 12]
    assert batch["input_ids"][0, :8].eq(PAD).all() and batch["input_ids"][1, :4].eq(PAD).all()
    assert batch["input_ids"][2].tolist() == samples[2]["input_ids"].tolist()
    scored = torch.zeros(12, dtype=torch.bool)
    scored[-SEGMENT + 1:] = True  # the last block without its first token, for every sample
    assert batch["labels_mask"].eq(scored).all()
    assert batch["labels"][:, scored].eq(batch["input_ids"][:, scored]).all()
    assert batch["labels"][:, ~scored].eq(IGNORE_INDEX).all()


def test_vary_n_segments_is_deterministic_and_keeps_whole_last_blocks():
    _, dataset = make_dataset([200], max_n_segments=5)
    collate = SegmentCollator(PAD, SEGMENT, max_n_segments=5, vary_n_segments=True, seed=3)
    batches = [[dataset[i], dataset[i + 1]] for i in range(10, 40, 2)]
    lengths = [collate(batch)["input_ids"].shape[1] for batch in batches]
    assert lengths == [collate(batch)["input_ids"].shape[1] for batch in batches]
    assert all(length % SEGMENT == 0 and SEGMENT <= length <= 5 * SEGMENT for length in lengths)
    assert len(set(lengths)) > 1
    cut = collate(batches[0])
    assert cut["input_ids"][0].tolist() == batches[0][0]["input_ids"][-cut["input_ids"].shape[1]:].tolist()


def test_block_nll_aligns_positions_from_the_first_real_block():
    torch.manual_seed(0)
    _, dataset = make_dataset([10, 24], max_n_segments=3)
    batch = SegmentCollator(PAD, SEGMENT, max_n_segments=3)([dataset[0], dataset[1], dataset[5]])
    logits = torch.randn(3, 12, 200)
    kept = block_nll(logits, batch["input_ids"], batch["attention_mask"], SEGMENT, max_n_segments=3)
    assert kept["position_count"].tolist() == [[3, 0, 0], [3, 3, 0], [3, 3, 3]]
    token_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    first_block_of_sample_1 = token_nll[1, 4:7].sum()
    assert torch.allclose(kept["position_nll"][1, 0], first_block_of_sample_1)
    last_block_loss = token_nll[:, -3:].sum() / 9
    metrics = segment_metrics(kept)
    assert metrics["last_block_loss"] == pytest.approx(last_block_loss.item(), rel=1e-5)
    assert metrics["last_block_ppl"] == pytest.approx(math.exp(metrics["last_block_loss"]))
    assert set(metrics) >= {"seg0_loss", "seg1_loss", "seg2_ppl", "all_blocks_loss"}


def test_tokenize_appends_eos_once_per_document():
    tokenizer = load_tokenizer()
    splits = DatasetDict({"train": Dataset.from_dict({"text": ["hello world", "a b c d"]})})
    tokenized = tokenize_splits(splits, tokenizer)["train"]
    assert tokenized["n_tokens"] == [3, 5]
    assert [doc[-1] for doc in tokenized["input_ids"]] == [tokenizer.eos_token_id] * 2
