"""Background text for BABILong: a source, split into sentences and tokenized once, as one token array.

A background source is any text source of `rmt_experiments.text_sources` ('default', the offline
standard-library prose; a save_to_disk folder; .txt files; a hub dataset such as 'tau/scrolls:quality', the
paper's, or 'pg19', BABILong's), named by the same string (`load_background(spec, split, tokenizer)`). The
'train' background is the source's train split, the 'valid' background its held-out text (`HELD_OUT`), so the
two are disjoint. A source is read up to MAX_SOURCE_CHARS characters (a hub source is streamed).

The offline default keeps only prose: paragraphs without code, doctests, lists or tables, and sentences of 4-80
words that start upper-case and end in '.', '!' or '?'; a sentence is kept only at its first occurrence, so the
two splits share no sentence. It is small (about 168k train and 34k valid tokens with the MiniLM tokenizer), so
long samples wrap around it (see `BackgroundCorpus`).

Sentences are split by a simple regex: a boundary is whitespace after '.', '!' or '?' followed by an
upper-case letter, a digit or an opening quote or bracket. Sentences holding a special token (e.g. [UNK])
after tokenization are dropped: the memory wrappers strip special tokens and would change the length.
"""
import hashlib
import logging
import os
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Optional

import numpy as np

from lm_experiments_tools.errors import BadInputError
from rmt_experiments.offline_model import load_tokenizer
from rmt_experiments.text_sources import HELD_OUT, PARAGRAPH_BREAK, in_split, read_split_texts, stdlib_documents

logger = logging.getLogger(__name__)

SOURCE_SPLITS = {"train": "train", "valid": HELD_OUT}  # background split -> text-source split
SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
CODE_LINE_PREFIXES = (">>>", "...", "..", "$", "#", "|", "+", "-", "*", "=", ":", "{", "}", "[", "(")
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


def split_sentences(text: str) -> list:
    """Split text into sentences with SENTENCE_BOUNDARY, whitespace collapsed, empty pieces dropped."""
    text = " ".join(text.split())
    return [s for s in SENTENCE_BOUNDARY.split(text) if s]


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
def _default_sentences_by_split() -> dict:
    """Prose sentences of the stdlib documents, each unique sentence (ignoring case) in one split only."""
    by_split, seen = {"train": [], "valid": []}, set()
    for name, docstring in stdlib_documents():
        split = "valid" if in_split(name, HELD_OUT) else "train"
        for paragraph in _prose_paragraphs(docstring):
            for sentence in split_sentences(paragraph):
                key = sentence.casefold()  # uncased tokenizers would make 'Task' and 'task' one sentence
                if key not in seen and _is_prose_sentence(sentence):
                    seen.add(key)
                    by_split[split].append(sentence)
    return by_split


def background_sentences(spec: str, split: str) -> list:
    """The sentences of background source `spec` for `split`, in order (see the module docstring)."""
    if split not in SOURCE_SPLITS:
        raise BadInputError(f"split must be 'train' or 'valid', got {split!r}")
    if spec == "default":
        return _default_sentences_by_split()[split]
    texts = read_split_texts(spec, SOURCE_SPLITS[split], max_chars=MAX_SOURCE_CHARS, what="background source")
    return list(chain.from_iterable(split_sentences(t) for t in texts if t))


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
        raise BadInputError(f"background source {source!r} gives no usable sentences for split {split!r}")
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
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
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
