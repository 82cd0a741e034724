"""BABILong data: exact lengths, facts whole and in order, question last, answers, determinism, disjoint
background, the bAbI reader, collates and bad input."""
import os
import re
import shutil

import numpy as np
import pytest
import torch

from babilong import BABILongDataset, decoder_collate, encoder_collate, get_task, load_background, parse_babi_file
from babilong import background as background_module
from babilong.tasks import OPPOSITE_DIRECTION, PLACES, TaskSample
from rmt_experiments.offline_model import load_tokenizer

BABI_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "babi")
LENGTHS = [50, 137, 499, 998, 4096, 100_000]
PAPER_TASKS = ["memorize", "detect_memorize", "reasoning"]
PROSE = "The {0} river runs past the old mill. A quiet {0} town sits on its bank. People walk to {0} at dawn! Why {0}?"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def txt_source(tmp_path_factory):
    """A folder of small .txt documents of unique sentences ending in '.', '!' or '?'."""
    folder = tmp_path_factory.mktemp("background")
    for i in range(40):
        (folder / f"doc{i}.txt").write_text(" ".join(PROSE.format(f"n{i}x{j}") for j in range(20)))
    return str(folder)


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _check_sample(dataset, index, tokenizer):
    """The sample has the exact length, each fact whole at its position, in order, and the question last."""
    sample = dataset.build(index)
    ids = sample.input_ids.tolist()
    assert len(ids) == dataset.input_seq_len
    assert not set(ids) & set(tokenizer.all_special_ids)
    end_of_previous = 0
    for fact, position in zip(sample.task_sample.facts, sample.fact_positions):
        fact_ids = _encode(tokenizer, fact)
        assert ids[position:position + len(fact_ids)] == fact_ids
        assert position >= end_of_previous
        end_of_previous = position + len(fact_ids)
    question_ids = _encode(tokenizer, sample.task_sample.question)
    assert ids[-len(question_ids):] == question_ids
    assert end_of_previous <= len(ids) - len(question_ids)
    return sample


@pytest.mark.parametrize("split", ["train", "valid"])
@pytest.mark.parametrize("task", PAPER_TASKS)
@pytest.mark.parametrize("length", LENGTHS)
def test_paper_task_samples_have_exact_length_facts_in_order_and_question_last(tokenizer, task, length, split):
    dataset = BABILongDataset(task, "default", tokenizer, length, split=split, num_samples=50)
    for index in (0, 7, 49):
        sample = _check_sample(dataset, index, tokenizer)
        assert sample.task_sample.answer in dataset.task.labels


@pytest.mark.parametrize("placement", ["start", "segment", "token", "sentence"])
@pytest.mark.parametrize("length", [60, 2000])
def test_facts_are_inserted_between_sentences_only(tokenizer, txt_source, placement, length):
    # every background sentence ends in . ! or ?, so the token before a fact (when it is background) must be one
    dataset = BABILongDataset("reasoning", txt_source, tokenizer, length, placement=placement, segment_size=97)
    sentence_ends = {tokenizer.convert_tokens_to_ids(p) for p in ".!?"}
    for index in range(20):
        sample = _check_sample(dataset, index, tokenizer)
        first = sample.fact_positions[0]
        assert first == 0 or int(sample.input_ids[first - 1]) in sentence_ends
        if placement == "start":
            assert first == 0
        if placement == "segment":
            assert first % 97 == 0


def test_detect_memorize_puts_the_fact_at_segment_starts_all_over_the_input(tokenizer):
    dataset = BABILongDataset("detect_memorize", "default", tokenizer, 499 * 8, num_samples=200)
    positions = {dataset.build(i).fact_positions[0] for i in range(200)}
    assert positions == {499 * k for k in range(8)}


def test_memorize_puts_the_fact_first(tokenizer):
    dataset = BABILongDataset("memorize", "default", tokenizer, 998)
    assert all(dataset.build(i).fact_positions == [0] for i in range(10))


@pytest.mark.parametrize("name", ["reasoning", "reasoning_plain"])
def test_reasoning_answers_follow_from_the_facts(name):
    relation = re.compile(r"^The (\w+) is (\w+) of the (\w+)\.$")
    task, rng = get_task(name), np.random.default_rng(0)
    for _ in range(300):
        sample = task.draw(rng, 0, "train")
        is_direction_of = set()  # (x, d, y): x is d of y
        for fact in sample.facts:
            x, d, y = relation.match(fact).groups()
            is_direction_of |= {(x, d, y), (y, OPPOSITE_DIRECTION[d], x)}
        match = re.match(r"^What is (\w+) of the (\w+)\?$", sample.question)
        if match:
            d, y = match.groups()
            answers = {x for x, d2, y2 in is_direction_of if (d2, y2) == (d, y)}
        else:
            y, d = re.match(r"^What is the (\w+) (\w+) of\?$", sample.question).groups()
            answers = {z for y2, d2, z in is_direction_of if (y2, d2) == (y, d)}
        assert answers == {sample.answer}
        assert sample.answer in PLACES


def test_plain_reasoning_names_the_answer_with_the_questions_direction_word():
    plain, full = get_task("reasoning_plain"), get_task("reasoning")
    rng = np.random.default_rng(0)
    phrasings = set()
    for _ in range(200):
        sample = plain.draw(rng, 0, "train")
        direction, anchor = re.match(r"^What is (\w+) of the (\w+)\?$", sample.question).groups()
        assert f"The {sample.answer} is {direction} of the {anchor}." in sample.facts
        phrasings |= {fact.endswith(f"of the {anchor}.") for fact in full.draw(rng, 0, "train").facts}
    assert phrasings == {True, False}  # the full task does phrase facts both ways round


def test_samples_are_a_pure_function_of_seed_split_and_index(tokenizer):
    def ids(seed, split, index):
        dataset = BABILongDataset("reasoning", "default", tokenizer, 1000, split=split, seed=seed)
        return dataset[index]["input_ids"]

    assert torch.equal(ids(3, "train", 5), ids(3, "train", 5))
    assert not torch.equal(ids(3, "train", 5), ids(4, "train", 5))
    assert not torch.equal(ids(3, "train", 5), ids(3, "train", 6))
    assert not torch.equal(ids(3, "train", 5), ids(3, "valid", 5))


def _sentence_set(corpus):
    bounds = np.append(corpus.sentence_starts, corpus.n_tokens)
    return {tuple(corpus.token_ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])}


@pytest.mark.parametrize("source", ["default", "txt"])
def test_train_and_valid_background_are_disjoint(tokenizer, txt_source, source):
    spec = txt_source if source == "txt" else source
    train, valid = (load_background(spec, split, tokenizer) for split in ("train", "valid"))
    assert train.n_tokens > valid.n_tokens > 0
    assert not _sentence_set(train) & _sentence_set(valid)


def test_default_background_is_prose_sentences(tokenizer):
    corpus = load_background("default", "train", tokenizer)
    assert corpus.n_tokens > 100_000
    sentences = corpus.sentences(tokenizer)[:200]
    assert all(s[-1] in ".!?" and len(s.split()) >= 4 for s in sentences)


def test_background_is_tokenized_once_and_cached_on_disk(tokenizer, txt_source, tmp_path, monkeypatch):
    first = load_background(txt_source, "train", tokenizer, cache_dir=str(tmp_path))
    assert load_background(txt_source, "train", tokenizer) is first
    monkeypatch.setattr(background_module, "_CORPUS_CACHE", {})
    monkeypatch.setattr(background_module, "background_sentences", lambda *a: pytest.fail("re-tokenized"))
    again = load_background(txt_source, "train", tokenizer, cache_dir=str(tmp_path))
    assert np.array_equal(again.token_ids, first.token_ids)
    assert np.array_equal(again.sentence_starts, first.sentence_starts)


def test_saved_dataset_folder_is_a_background_source(tokenizer, tmp_path):
    from datasets import Dataset, DatasetDict
    splits = {name: Dataset.from_dict({"text": [PROSE.format(f"{name}{i}") for i in range(5)]})
              for name in ("train", "validation")}
    DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    valid = load_background(str(tmp_path / "saved"), "valid", tokenizer)
    assert "validation0" in tokenizer.decode(valid.token_ids).replace(" ", "")


def test_babi_reader_on_fixture():
    samples = parse_babi_file(os.path.join(BABI_FIXTURE, "qa1_single-supporting-fact_train.txt"))
    assert samples[0] == TaskSample(("Mary moved to the bathroom.", "John went to the hallway."),
                                    "Where is Mary?", "bathroom", (0,))
    assert samples[1].facts[2:] == ("Daniel went back to the hallway.", "Sandra moved to the garden.")
    assert (samples[1].question, samples[1].answer, samples[1].supporting) == ("Where is Daniel?", "hallway", (2,))
    # a story restart: facts start over
    assert samples[2] == TaskSample(("Sandra travelled to the office.",), "Where is Sandra?", "office", (0,))
    assert samples[3].facts == ("Sandra travelled to the office.", "John journeyed to the kitchen.",
                                "Mary went to the bedroom.")
    assert samples[3].supporting == (1,)
    two_facts = parse_babi_file(os.path.join(BABI_FIXTURE, "qa2_two-supporting-facts_train.txt"))
    assert [s.supporting for s in two_facts] == [(2, 0), (1, 2)]


def test_babi_task_vocabulary_max_n_facts_and_release_layout(tmp_path):
    task = get_task("qa1", babi_path=BABI_FIXTURE)
    assert task.labels == ("bathroom", "hallway", "kitchen", "office")
    assert task.num_samples("train") == 4
    assert task.num_samples("valid") == 1  # 'garden' is not a training answer: dropped
    assert get_task("qa1", babi_path=BABI_FIXTURE, max_n_facts=2).num_samples("train") == 2
    nested = tmp_path / "tasks_1-20_v1-2" / "en-10k"
    shutil.copytree(BABI_FIXTURE, nested)
    assert get_task("qa2", babi_path=str(tmp_path)).labels == ("hallway", "office")


@pytest.mark.parametrize("length", [50, 4096, 100_000])
def test_babi_samples_have_exact_length_and_all_facts(tokenizer, length):
    dataset = BABILongDataset("qa1", "default", tokenizer, length, split="train", babi_path=BABI_FIXTURE)
    assert len(dataset) == 4
    for index in range(4):
        sample = _check_sample(dataset, index, tokenizer)
        assert dataset[index]["labels"] == dataset.task.labels.index(sample.task_sample.answer)


def test_encoder_collate_pads_right(tokenizer):
    dataset = BABILongDataset("memorize", "default", tokenizer, 64)
    batch = encoder_collate([dataset[0], dict(dataset[1], input_ids=dataset[1]["input_ids"][:60])], 0)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 64)
    assert batch["attention_mask"][1].tolist() == [1] * 60 + [0] * 4
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (2,)


def test_decoder_items_and_collate(tokenizer):
    dataset = BABILongDataset("reasoning", "default", tokenizer, 300, model_type="decoder")
    items = [dataset[0], dict(dataset[1], **{k: dataset[1][k][2:] for k in ("input_ids", "labels", "labels_mask",
                                                                         "input_ids_generate")})]
    for item in items[:1]:
        answer_and_eos = item["input_ids"][item["labels_mask"]]
        assert tokenizer.decode(answer_and_eos[:-1]) == item["target_text"]
        assert answer_and_eos[-1].item() == tokenizer.sep_token_id
        assert torch.equal(item["input_ids"][:len(item["input_ids_generate"])], item["input_ids_generate"])
        assert tokenizer.decode(item["input_ids_generate"][300:]) == "gen"
    batch = decoder_collate(items, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2
    assert batch["attention_mask_generate"][1, :2].tolist() == [0, 0]  # left padding
    assert torch.equal(batch["input_ids_generate"][1, 2:], items[1]["input_ids_generate"])
    assert batch["labels_mask"][1, -2:].tolist() == [False, False]  # right padding
    assert batch["target_text"] == [item["target_text"] for item in items]


@pytest.mark.parametrize("make, message", [
    (lambda tok: get_task("where_is_waldo"), "unknown task 'where_is_waldo'"),
    (lambda tok: get_task("qa1"), "needs --babi_path"),
    (lambda tok: get_task("qa1", babi_path="/no/such/folder"), "/no/such/folder"),
    (lambda tok: BABILongDataset("reasoning", "default", tok, 20), "input_seq_len=20 is too small"),
    (lambda tok: BABILongDataset("memorize", "default", tok, 0), "input_seq_len must be a positive integer"),
    (lambda tok: BABILongDataset("memorize", "default", tok, 99, placement="middle"), "placement must be one of"),
    (lambda tok: BABILongDataset("memorize", "default", tok, 99, split="test"), "split must be one of"),
    (lambda tok: load_background("/no/such/background.txt", "train", tok), "accepted kinds"),
])
def test_bad_input_gives_a_clear_error(tokenizer, make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(tokenizer)


def test_empty_babi_folder_and_unknown_background_name_the_culprit(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="has no qa3_\\*_train.txt"):
        get_task("qa3", babi_path=str(tmp_path))
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path))}.*not found.*save_to_disk"):
        load_background(str(tmp_path), "train", tokenizer)


def test_hub_source_streams_the_named_config_and_split(tokenizer, monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"input": PROSE.format(f"hub{i}"), "pid": i} for i in range(3)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_background("tau/scrolls:quality", "valid", tokenizer)
    assert calls == [("tau/scrolls", "quality", "validation", True)]
    assert corpus.n_sentences == 12

    def offline(*args, **kwargs):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="'pg19' could not be loaded.*no internet.*accepted kinds"):
        load_background("pg19", "train", tokenizer)
