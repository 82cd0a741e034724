"""Where text comes from: one reader for BABILong's background text and for the ArXiv language-modelling documents.

A text source is named by one string:
- 'default', the offline default: the prose of the Python standard library, present on every Python install
  (docs/design.md, "Background text and the offline default"). A document is one source file (every
  triple-quoted string in it, joined by blank lines; the standard library's folders are walked recursively,
  tests and third-party packages left out) or one topic of the language reference (`pydoc_data.topics`).
- plain text: a .txt file, a folder of .txt files, or a glob of them. A file is a document; a single file is cut
  into paragraphs at blank lines, so that it has documents to split.
- a folder written by `datasets` `save_to_disk`: a DatasetDict keeps its own splits, a single Dataset is split.
- a Hugging Face hub dataset 'name' or 'name:config' (needs internet; the tests use a fake `load_dataset`).

Splits are SPLITS. A source with splits of its own keeps them ('valid', 'val' and 'dev' are read as
'validation'); any other source is split by a stable hash of each document's name (`document_split`), so a
document never moves when others are added. A consumer with one evaluation split (BABILong's background) reads
HELD_OUT: the validation and test documents of a hash-split source together, else the source's validation
split (its test split when it has none).

One column convention: `text_column=None` reads the first of TEXT_COLUMNS that a dataset has; a name reads that
column and nothing else. `datasets` is imported only by the functions that read datasets, so the offline
default and text files work on a machine without it.
"""
import glob
import os
import re
import sysconfig
import zlib
from functools import lru_cache
from itertools import chain
from typing import Optional

from lm_experiments_tools.errors import BadInputError

SPLITS = ("train", "validation", "test")
HELD_OUT = "held_out"
REQUIRED_SPLITS = ("train", "validation")
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}
HASH_BUCKETS = 100
VALIDATION_BUCKETS = range(0, 10)  # 10% of the documents of a source without splits
TEST_BUCKETS = range(10, 20)  # another 10%; the remaining 80% train
TEXT_COLUMNS = ("text", "input", "document", "article", "content")
SOURCE_KINDS = ("'default' (offline: Python standard library docstrings)",
                "a datasets.save_to_disk folder",
                "a .txt file, a folder of .txt files or a glob of them",
                "a Hugging Face dataset name with optional config, e.g. 'tau/scrolls:quality' or 'pg19'")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
TRIPLE_QUOTED = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")
STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
SAVED_DATASET_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


# ---- splits and columns ---------------------------------------------------------------------------------------

def document_split(name: str) -> str:
    """The split of a document of a source without splits: 'train', 'validation' or 'test', by a hash of its name."""
    bucket = zlib.crc32(name.encode("utf-8")) % HASH_BUCKETS
    if bucket in VALIDATION_BUCKETS:
        return "validation"
    return "test" if bucket in TEST_BUCKETS else "train"


def in_split(name: str, split: str) -> bool:
    """Whether document `name` belongs to `split` (one of SPLITS or HELD_OUT) under `document_split`."""
    own = document_split(name)
    return own != "train" if split == HELD_OUT else own == split


def split_documents(named_texts) -> dict:
    """{split: [texts]} for every split of SPLITS, by `document_split`, documents in their given order."""
    splits = {split: [] for split in SPLITS}
    for name, text in named_texts:
        splits[document_split(name)].append(text)
    return splits


def text_column(column_names, requested: Optional[str], source: str) -> str:
    """The column holding the text: `requested` when given, else the first of TEXT_COLUMNS present."""
    candidates = (requested,) if requested else TEXT_COLUMNS
    column = next((c for c in candidates if c in column_names), None)
    if column is None:
        expected = f"the column {requested!r}" if requested else f"one of the text columns {TEXT_COLUMNS}"
        raise BadInputError(f"text source {source!r} has columns {list(column_names)}: expected {expected}")
    return column


def _check_split(split: str) -> None:
    if split not in SPLITS + (HELD_OUT,):
        raise BadInputError(f"split {split!r}: expected one of {', '.join(SPLITS + (HELD_OUT,))}")


# ---- the offline default --------------------------------------------------------------------------------------

def python_source_documents(root: str) -> tuple:
    """(path relative to root, its triple-quoted strings joined by blank lines) of every .py file below root.

    Files are read in sorted order, folders of STDLIB_SKIP_DIRS left out; files without such strings too.
    """
    documents = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in STDLIB_SKIP_DIRS)
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            with open(path, encoding="utf-8", errors="replace") as f:
                strings = [a or b for a, b in TRIPLE_QUOTED.findall(f.read())]
            if strings:
                documents.append((os.path.relpath(path, root), "\n\n".join(strings)))
    return tuple(documents)


@lru_cache(maxsize=1)
def stdlib_documents() -> tuple:
    """(name, text) documents of the offline default: the standard library's sources, then the reference topics."""
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    return (python_source_documents(sysconfig.get_paths()["stdlib"])
            + tuple((f"pydoc_data.topics:{key}", topics[key]) for key in sorted(topics)))


# ---- plain text files -----------------------------------------------------------------------------------------

def read_text_file(path) -> str:
    """A text file's content; a missing file is bad input."""
    if not os.path.isfile(path):
        raise BadInputError(f"text file {str(path)!r} not found: expected a readable plain text file")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def text_file_paths(spec: str) -> Optional[list]:
    """The .txt files a spec names (a file, a folder searched recursively, a glob); None if it names none."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        return sorted(glob.glob(os.path.join(spec, "**", "*.txt"), recursive=True))
    if glob.has_magic(spec):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    return None


def text_file_documents(paths: list) -> list:
    """(name, text) documents of text files: one per file, or one per paragraph of a single file."""
    documents = [(path, read_text_file(path)) for path in paths]
    if len(documents) == 1:
        return [(p, p) for p in PARAGRAPH_BREAK.split(documents[0][1]) if p.strip()]
    return documents


def text_files_by_split(paths_by_split: dict, what: str = "text files") -> dict:
    """{split: [texts]} from files listed per split, one document per file (no hashing: the user chose)."""
    splits = {split: [read_text_file(path) for path in paths] for split, paths in paths_by_split.items() if paths}
    listed = [str(path) for paths in paths_by_split.values() for path in paths or ()]
    return checked_splits(splits, listed, what)


# ---- datasets: saved folders and the hub ----------------------------------------------------------------------

def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in SAVED_DATASET_MARKERS)


def _one_column(dataset, requested: Optional[str], source: str):
    """The dataset with only its text column, named 'text'."""
    column = text_column(dataset.column_names, requested, source)
    dataset = dataset.select_columns([column])
    return dataset if column == "text" else dataset.rename_column(column, "text")


def _dataset_documents(dataset, requested: Optional[str], source: str):
    """{split: one-column Dataset} of a DatasetDict (its own splits), or [(text, text)] of a single Dataset."""
    from datasets import DatasetDict
    if isinstance(dataset, DatasetDict):
        return {SPLIT_ALIASES.get(name, name): _one_column(split, requested, source)
                for name, split in dataset.items()}
    return [(text, text) for text in dataset[text_column(dataset.column_names, requested, source)]]


def _hub_error(spec: str, error: Exception) -> BadInputError:
    reason = " ".join(str(error).split())
    return BadInputError(f"text source {spec!r} could not be loaded from the Hugging Face hub "
                         f"({type(error).__name__}: {reason}); accepted kinds: {'; '.join(SOURCE_KINDS)}")


def _load_from_hub(spec: str, **kwargs):
    """`datasets.load_dataset` of 'name[:config]'; any failure is bad input naming the source."""
    from datasets import load_dataset
    name, _, config = spec.partition(":")
    try:
        return load_dataset(name, config or None, **kwargs)
    except Exception as error:  # any hub/network/format failure means the source cannot be read
        raise _hub_error(spec, error) from error


def _hub_split_texts(spec: str, split: str, requested: Optional[str]):
    """Texts of one split of a hub dataset, streamed (a generator), so that a huge corpus is read only in part."""
    hub_split = "validation" if split == HELD_OUT else split
    examples = iter(_load_from_hub(spec, split=hub_split, streaming=True))
    try:
        first = next(examples)
    except Exception as error:  # streaming fails on the first read, not on load_dataset
        raise _hub_error(spec, error) from error
    column = text_column(list(first), requested, spec)
    return (example[column] for example in chain([first], examples))


# ---- one source, by name --------------------------------------------------------------------------------------

def _looks_like_path(spec: str) -> bool:
    return (os.path.exists(spec) or glob.has_magic(spec) or spec.startswith((os.sep, ".", "~"))
            or spec.endswith((".txt", os.sep)) or not HUB_NAME.match(spec))


def _is_hub_name(spec: str) -> bool:
    return spec != "default" and not _looks_like_path(spec)


def _local_documents(spec: str, requested: Optional[str], what: str):
    """A local source's documents: {split: documents} when it has splits of its own, else [(name, text)]."""
    if spec == "default":
        return stdlib_documents()
    if _is_saved_dataset(spec):
        from datasets import load_from_disk
        return _dataset_documents(load_from_disk(spec), requested, spec)
    paths = text_file_paths(spec)
    if not paths:
        raise BadInputError(f"{what} {spec!r} not found; accepted kinds: {'; '.join(SOURCE_KINDS)}")
    return text_file_documents(paths)


def checked_splits(documents, source, what: str) -> dict:
    """{split: documents} of a source's own splits or of its named documents split by hash, non-empty, checked.

    Raises:
        BadInputError: when train or validation is missing or empty.
    """
    splits = documents if isinstance(documents, dict) else split_documents(documents)
    splits = {name: split for name, split in splits.items() if len(split)}
    missing = [name for name in REQUIRED_SPLITS if name not in splits]
    if missing:
        raise BadInputError(f"{what} {source!r} has splits {sorted(splits)}, expected at least "
                            f"{list(REQUIRED_SPLITS)} (missing {missing})")
    return splits


def saved_dataset_splits(path, text_column_name: Optional[str] = None, what: str = "text source") -> dict:
    """Every split of a `save_to_disk` folder (a single Dataset is split by text hash), checked."""
    if not os.path.isdir(path):
        raise BadInputError(f"{what} {str(path)!r} is not a folder; expected a `save_to_disk` folder")
    from datasets import load_from_disk
    return checked_splits(_dataset_documents(load_from_disk(str(path)), text_column_name, str(path)), path, what)


def hub_splits(spec: str, text_column_name: Optional[str] = None) -> dict:
    """Every split of hub dataset 'name[:config]', downloaded whole (not streamed), checked."""
    return checked_splits(_dataset_documents(_load_from_hub(spec), text_column_name, spec), spec, "hub dataset")


def load_splits(spec: str, text_column_name: Optional[str] = None, what: str = "text source") -> dict:
    """Every split of the source a string names: {split: documents} with at least train and validation.

    Documents are a list of texts, or a `datasets.Dataset` with one 'text' column for a dataset with splits of
    its own (kept memory-mapped). Empty splits are left out.
    """
    if _is_hub_name(spec):
        return hub_splits(spec, text_column_name)
    return checked_splits(_local_documents(spec, text_column_name, what), spec, what)


def _split_texts(documents, split: str, spec: str, what: str):
    """Texts of `split` of a local source's documents, in document order (see `_local_documents`)."""
    if not isinstance(documents, dict):
        return [text for name, text in documents if in_split(name, split)]
    names = ("validation", "test") if split == HELD_OUT else (split,)  # HELD_OUT: validation, else test
    name = next((n for n in names if n in documents), None)
    if name is None:
        raise BadInputError(f"{what} {spec!r} has no {' or '.join(names)} split; splits: {sorted(documents)}")
    return documents[name]["text"]


def up_to_max_chars(texts, max_chars: Optional[int]) -> list:
    """The first texts holding `max_chars` characters in all (all of them when None): bounded memory."""
    kept, n_chars = [], 0
    for text in texts:
        if max_chars is not None and n_chars >= max_chars:
            break
        kept.append(text)
        n_chars += len(text)
    return kept


def read_split_texts(spec: str, split: str, text_column_name: Optional[str] = None,
                     max_chars: Optional[int] = None, what: str = "text source") -> list:
    """The texts of one split of a source, in order, up to `max_chars` characters (a hub dataset is streamed).

    Args:
        spec: the source (see the module docstring).
        split: one of SPLITS, or HELD_OUT for a consumer with one evaluation split.
        text_column_name: the dataset column to read; None: the first of TEXT_COLUMNS present.
        max_chars: stop after the text that reaches this many characters; None: read everything.
        what: how error messages name the source (e.g. 'background source').
    """
    _check_split(split)
    if _is_hub_name(spec):
        texts = _hub_split_texts(spec, split, text_column_name)
    else:
        texts = _split_texts(_local_documents(spec, text_column_name, what), split, spec, what)
    return up_to_max_chars(texts, max_chars)


def as_dataset_dict(splits: dict):
    """A `datasets.DatasetDict` of {split: documents} (lists become one-column 'text' Datasets)."""
    from datasets import Dataset, DatasetDict
    return DatasetDict({name: documents if hasattr(documents, "column_names")
                        else Dataset.from_dict({"text": list(documents)}) for name, documents in splits.items()})
