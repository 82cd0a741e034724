"""Tests of the shared text sources (rmt_experiments.text_sources) and the offline tokenizer rules
(rmt_experiments.offline_model): the offline default, text files, saved datasets, the hub, bad input."""
import re
import sys

import pytest
from datasets import Dataset, DatasetDict

from lm_experiments_tools.errors import BadInputError
from rmt_experiments.offline_model import ensure_pad_and_eos, eos_token_id, load_tokenizer, small_gpt2_config
from rmt_experiments.text_sources import (HELD_OUT, SPLITS, as_dataset_dict, document_split, load_splits,
                                          python_source_documents, read_split_texts, saved_dataset_splits,
                                          split_documents, stdlib_documents, text_files_by_split)


def _names_by_split(named_texts):
    names = {split: set() for split in SPLITS}
    for name, _ in named_texts:
        names[document_split(name)].add(name)
    return names


# ---- the offline default --------------------------------------------------------------------------------------

def test_offline_default_is_deterministic_and_its_splits_are_disjoint():
    documents = stdlib_documents()
    stdlib_documents.cache_clear()
    assert stdlib_documents() == documents  # read again from disk: the same documents in the same order
    names = _names_by_split(documents)
    assert not (names["train"] & names["validation"] or names["train"] & names["test"]
                or names["validation"] & names["test"])
    n_documents = {split: len(names[split]) for split in SPLITS}
    assert n_documents["train"] > 3 * n_documents["validation"] > 0 and n_documents["test"] > 0
    splits = load_splits("default")
    assert {split: len(texts) for split, texts in splits.items()} == n_documents
    held_out = read_split_texts("default", HELD_OUT)
    assert sorted(held_out) == sorted(splits["validation"] + splits["test"])


def test_python_source_documents_keep_triple_quoted_strings_in_source_order(tmp_path):
    (tmp_path / "mod.py").write_text('"""Module doc."""\nclass A:\n    """Class doc."""\n'
                                     '    def f(self):\n        """Method doc."""\ndef g():\n    """Function doc."""\n')
    (tmp_path / "empty.py").write_text("x = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text('"""Left out."""\n')
    documents = python_source_documents(str(tmp_path))
    assert documents == (("mod.py", "Module doc.\n\nClass doc.\n\nMethod doc.\n\nFunction doc."),)


def test_hash_split_is_stable_when_documents_are_added():
    texts = [(f"doc{i}", f"text {i}") for i in range(60)]
    splits = split_documents(texts)
    grown = split_documents(texts + [(f"new{i}", "more") for i in range(20)])
    for split in SPLITS:
        assert set(splits[split]) <= set(grown[split])
    assert sum(len(texts) for texts in splits.values()) == 60


# ---- plain text files -----------------------------------------------------------------------------------------

def documents_in_every_split(folder) -> int:
    """How many files doc0.txt, doc1.txt, ... in `folder` give every split one at least: the split hashes the whole
    path, so a fixed count leaves a split empty for some temporary folders (0.9^30 = 4% of them for validation)."""
    n = 30
    while not all(_names_by_split((str(folder / f"doc{i}.txt"), None) for i in range(n)).values()):
        n += 1
    return n


def test_text_folder_is_split_by_file_name_and_a_single_file_by_paragraph(tmp_path):
    n_documents = documents_in_every_split(tmp_path)
    for i in range(n_documents):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}")
    splits = load_splits(str(tmp_path))
    expected = _names_by_split((str(tmp_path / f"doc{i}.txt"), None) for i in range(n_documents))
    for split, names in expected.items():
        assert sorted(splits.get(split, [])) == sorted(open(name).read() for name in names)
    single = tmp_path / "one" / "book.txt"
    single.parent.mkdir()
    paragraphs = [f"Paragraph {i}." for i in range(40)]
    single.write_text("\n\n".join(paragraphs))
    train = read_split_texts(str(single), "train")
    held_out = read_split_texts(str(single), HELD_OUT)
    assert sorted(train + held_out) == sorted(paragraphs) and train and held_out


def test_text_files_listed_per_split_are_one_document_each(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(f"document {name}")
    splits = text_files_by_split({"train": [tmp_path / "a.txt", tmp_path / "b.txt"],
                                  "validation": [tmp_path / "c.txt"], "test": None})
    assert splits == {"train": ["document a", "document b"], "validation": ["document c"]}
    assert as_dataset_dict(splits)["validation"]["text"] == ["document c"]
    with pytest.raises(BadInputError, match="nope.txt' not found"):
        text_files_by_split({"train": [tmp_path / "nope.txt"], "validation": [tmp_path / "c.txt"]})
    with pytest.raises(BadInputError, match=re.escape("missing ['validation']")):
        text_files_by_split({"train": [tmp_path / "a.txt"], "validation": []})


# ---- datasets: saved folders and the hub ----------------------------------------------------------------------

def test_saved_dataset_keeps_its_splits_and_reads_one_text_column(tmp_path):
    train = Dataset.from_dict({"input": ["x", "y"], "label": [0, 1]})
    DatasetDict({"train": train, "valid": train.select([1])}).save_to_disk(tmp_path / "ok")
    splits = load_splits(str(tmp_path / "ok"))
    assert set(splits) == {"train", "validation"}
    assert splits["validation"].column_names == ["text"] and splits["validation"]["text"] == ["y"]
    assert read_split_texts(str(tmp_path / "ok"), HELD_OUT) == ["y"]
    with pytest.raises(BadInputError, match=re.escape("expected the column 'body'")):
        load_splits(str(tmp_path / "ok"), "body")
    DatasetDict({"train": train, "test": train.select([0])}).save_to_disk(tmp_path / "with_test")
    assert read_split_texts(str(tmp_path / "with_test"), HELD_OUT) == ["x"]  # no validation split: test
    DatasetDict({"train": train}).save_to_disk(tmp_path / "only_train")
    with pytest.raises(BadInputError, match=re.escape("missing ['validation']")):
        load_splits(str(tmp_path / "only_train"))
    with pytest.raises(BadInputError, match="has no validation or test split"):
        read_split_texts(str(tmp_path / "only_train"), HELD_OUT)


def test_single_saved_dataset_is_split_by_text_hash(tmp_path):
    texts = [f"story number {i}" for i in range(50)]
    Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / "single")
    splits = load_splits(str(tmp_path / "single"))
    assert splits == {split: [t for t in texts if document_split(t) == split] for split in SPLITS}


def test_hub_dataset_by_name_and_config(monkeypatch):
    import datasets
    calls = []

    def fake_load_dataset(name, config, **kwargs):
        calls.append((name, config, kwargs))
        return DatasetDict({"train": Dataset.from_dict({"article": ["a", "b"]}),
                            "dev": Dataset.from_dict({"article": ["c"]})})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits("pile/arxiv:v1")
    assert calls == [("pile/arxiv", "v1", {})]
    assert splits["train"]["text"] == ["a", "b"] and splits["validation"]["text"] == ["c"]


# ---- bad input and the offline tokenizer ----------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: load_splits("./no/such/folder"), "text source './no/such/folder' not found; accepted kinds"),
    (lambda: read_split_texts("default", "valid"), "split 'valid': expected one of train, validation, test"),
    (lambda: load_splits("/no/such/file.txt", what="background source"), "background source '/no/such/file.txt'"),
    (lambda: saved_dataset_splits("/no/such/folder", what="dataset_path"),
     "dataset_path '/no/such/folder' is not a folder"),
])
def test_bad_input_is_one_line_naming_the_value(call, message):
    with pytest.raises(BadInputError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no internet\nretry later")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BadInputError, match="'pg19' could not be loaded.*no internet"):
        load_splits("pg19")


def test_ensure_pad_and_eos_fallbacks_and_error():
    tokenizer = ensure_pad_and_eos(load_tokenizer())  # MiniLM: [PAD] but no eos
    assert tokenizer.eos_token == tokenizer.sep_token and tokenizer.pad_token == "[PAD]"
    assert eos_token_id(tokenizer) == tokenizer.sep_token_id
    config = small_gpt2_config(tokenizer, n_positions=64)
    assert (config.vocab_size, config.eos_token_id, config.n_positions) == (len(tokenizer), tokenizer.sep_token_id, 64)
    tokenizer.eos_token, tokenizer.sep_token, tokenizer.pad_token = None, None, None
    with pytest.raises(ValueError, match="no eos token"):
        ensure_pad_and_eos(tokenizer)


def test_offline_default_and_text_files_need_no_datasets_package(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("First paragraph.\n\nSecond paragraph.")
    monkeypatch.setitem(sys.modules, "datasets", None)  # the GPU machine has no `datasets`
    assert load_splits("default")["train"] and read_split_texts(str(tmp_path), "train") is not None
    with pytest.raises(ImportError):
        as_dataset_dict({"train": ["x"]})
