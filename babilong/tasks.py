"""Task sources for BABILong: the facts, question and answer that get hidden in background text.

Two families (docs/design.md, "BABILong data"):
- the AAAI-24 RMT paper's tasks, generated in code: `memorize`, `detect_memorize` and `reasoning`, each a
  6-way classification over the places;
- bAbI qa1..qa20 read from the standard files a user has (BABILong proper).

A task is split-independent: `task.draw(rng, index, split)` gives one `TaskSample`. Generated tasks draw
from `rng` and ignore `index`; bAbI tasks return the `index`-th question of the split's file.
"""
import functools
import glob
import logging
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from lm_experiments_tools.errors import BadInputError

logger = logging.getLogger(__name__)

PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
NAMES = ("Mary", "John", "Daniel", "Sandra")
ACTIONS = ("moved", "went", "went back", "journeyed", "travelled")
OPPOSITE_DIRECTION = {"north": "south", "south": "north", "east": "west", "west": "east"}
DIRECTIONS = tuple(OPPOSITE_DIRECTION)

# Where the facts go inside the background (see babilong.dataset for the exact rules).
PLACEMENTS = ("start", "segment", "token", "sentence")
SPLITS = ("train", "valid")
BABI_TASK_NAMES = tuple(f"qa{n}" for n in range(1, 21))
BABI_SUBFOLDER = os.path.join("tasks_1-20_v1-2", "en-10k")
# A bAbI line is "ID text"; a question line is "ID question<TAB>answer<TAB>supporting ids".
BABI_LINE = re.compile(r"^(\d+) (.*)$")


@dataclass(frozen=True)
class TaskSample:
    """One task instance before it is hidden in background text.

    Attributes:
        facts: the story sentences, in order (distractors included).
        question: the question sentence; it ends the model input.
        answer: the answer text; one of the task's labels.
        supporting: indices into `facts` of the facts that answer the question (empty when unknown).
    """

    facts: tuple
    question: str
    answer: str
    supporting: tuple = field(default=())


class Task(ABC):
    """A task: its answer vocabulary (`labels`) and default fact placement; subclasses provide samples."""

    def __init__(self, name: str, labels: Sequence[str], default_placement: str):
        self.name = name
        self.labels = tuple(labels)
        self.default_placement = default_placement
        self._label_ids = {label: i for i, label in enumerate(self.labels)}

    def label_index(self, answer: str) -> int:
        """Class index of `answer` in `labels`."""
        return self._label_ids[answer]

    def num_samples(self, split: str) -> Optional[int]:
        """Number of distinct samples in `split`, or None for tasks generated on the fly."""
        return None

    @abstractmethod
    def draw(self, rng: np.random.Generator, index: int, split: str) -> TaskSample:
        """One sample: a pure function of (rng state, index, split)."""

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, n_labels={len(self.labels)})"


class GeneratedTask(Task):
    """A task whose samples come from a generator function of a numpy Generator."""

    def __init__(self, name: str, labels: Sequence[str], default_placement: str,
                 generate: Callable[[np.random.Generator], TaskSample]):
        super().__init__(name, labels, default_placement)
        self._generate = generate

    def draw(self, rng, index, split):
        return self._generate(rng)


class BabiTask(Task):
    """bAbI qa{N}: one sample per question; the answer vocabulary comes from the training file.

    The `valid` split reads the `test` file (the en-10k release has no separate validation file).
    """

    def __init__(self, name: str, samples_by_split: dict):
        labels = sorted({s.answer for s in samples_by_split["train"]})
        super().__init__(name, labels, default_placement="sentence")
        self._samples = {split: self._known_answers(samples, split) for split, samples in samples_by_split.items()}

    def _known_answers(self, samples, split):
        kept = [s for s in samples if s.answer in self._label_ids]
        if len(kept) < len(samples):
            logger.warning("%s %s: dropped %d questions whose answer is not in the training vocabulary",
                           self.name, split, len(samples) - len(kept))
        return kept

    def num_samples(self, split):
        return len(self._samples[split])

    def draw(self, rng, index, split):
        samples = self._samples[split]
        return samples[index % len(samples)]


def _pick(rng: np.random.Generator, options: Sequence):
    return options[rng.integers(len(options))]


def memorize_sample(rng: np.random.Generator) -> TaskSample:
    """The paper's memorize fact: '<name> <action> to the <place>.' + 'Where is <name>?' -> place."""
    name, action, place = _pick(rng, NAMES), _pick(rng, ACTIONS), _pick(rng, PLACES)
    return TaskSample(facts=(f"{name} {action} to the {place}.",), question=f"Where is {name}?",
                      answer=place, supporting=(0,))


def _relation_sentence(rng, place: str, direction: str, anchor: str, plain: bool) -> str:
    """'place is direction of anchor', phrased either way round (bAbI two-argument relations) unless `plain`."""
    if not plain and rng.integers(2):
        return f"The {anchor} is {OPPOSITE_DIRECTION[direction]} of the {place}."
    return f"The {place} is {direction} of the {anchor}."


def reasoning_sample(rng: np.random.Generator, plain: bool = False) -> TaskSample:
    """Two relation facts around one anchor place; the question asks for one of the two neighbours.

    A tiny world: an anchor place and two other places in two different directions of it, so every
    question has exactly one answer. E.g. 'The hallway is east of the bathroom.' + 'The bedroom is west
    of the bathroom.' + 'What is the bathroom east of?' -> bedroom.

    With `plain`, every fact reads 'The <neighbour> is <d> of the <anchor>.' and every question 'What is <d>
    of the <anchor>?': the answer is the fact whose direction word the question repeats. In the full task
    each fact and the question come in two phrasings, and the answer's fact repeats the question's direction
    word exactly when both are phrased the same way: when the two facts lie on one axis (east and west of the
    anchor), only that parity tells them apart. Trained on the full task, the offline model sits near 50% for
    hundreds of steps (babilong/RESULTS.md); `reasoning_plain` is a warm-up stage for it.
    """
    anchor, *neighbours = rng.choice(PLACES, size=3, replace=False).tolist()
    directions = rng.choice(DIRECTIONS, size=2, replace=False).tolist()
    facts = tuple(_relation_sentence(rng, place, d, anchor, plain) for place, d in zip(neighbours, directions))
    target = int(rng.integers(2))
    direction = directions[target]
    if plain or rng.integers(2):
        question = f"What is {direction} of the {anchor}?"
    else:
        question = f"What is the {anchor} {OPPOSITE_DIRECTION[direction]} of?"
    return TaskSample(facts=facts, question=question, answer=neighbours[target], supporting=(target,))


def _babi_question(location: str, text: str, fact_index_by_id: dict) -> tuple:
    """(question, answer, supporting fact indices) of a question line's text; BadInputError when malformed."""
    parts = text.split("\t")
    if len(parts) != 3:
        raise BadInputError(f"{location}: question line {text!r} has {len(parts)} tab-separated fields: expected 3, "
                            "'question<TAB>answer<TAB>supporting ids'")
    question, answer, supporting_ids = (part.strip() for part in parts)
    if not question or not answer:
        raise BadInputError(f"{location}: question line {text!r} has an empty {'answer' if question else 'question'}"
                            ": expected 'question<TAB>answer<TAB>supporting ids'")
    bad_ids = [i for i in supporting_ids.split() if not i.isdigit()]
    if bad_ids or not supporting_ids:
        raise BadInputError(f"{location}: supporting ids {supporting_ids!r}: expected space-separated line numbers")
    unknown_ids = [int(i) for i in supporting_ids.split() if int(i) not in fact_index_by_id]
    if unknown_ids:
        raise BadInputError(f"{location}: supporting ids {unknown_ids} are not story facts above this line: "
                            f"expected ids among {sorted(fact_index_by_id)}")
    return question, answer, tuple(fact_index_by_id[int(i)] for i in supporting_ids.split())


def parse_babi_file(path: str) -> list:
    """Read a bAbI file: each question becomes a sample whose facts are the story lines before it.

    Every line is checked: 'ID text' with IDs counting up from 1 in each story; a question line (one with a
    tab, or a '?' that would otherwise turn it into a fact holding its own answer) must be
    'question<TAB>answer<TAB>supporting ids' with a non-empty answer and ids of facts above it in the story.

    Args:
        path: a `qa{N}_{name}_{train,test}.txt` file.

    Returns:
        list of TaskSample; `supporting` holds indices into that sample's `facts`.

    Raises:
        BadInputError: naming path:line and what was expected.
    """
    samples, facts, fact_index_by_id, previous_id = [], [], {}, 0
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, 1):
            location = f"{path}:{line_no}"
            match = BABI_LINE.match(raw.rstrip("\r\n"))
            if match is None:
                raise BadInputError(f"{location}: expected 'ID text', got {raw.rstrip()!r}")
            line_id, text = int(match.group(1)), match.group(2)
            if line_id == 1:  # a new story starts
                facts, fact_index_by_id = [], {}
            elif line_id != previous_id + 1:
                raise BadInputError(f"{location}: line id {line_id}: expected 1 (a new story) or {previous_id + 1}")
            previous_id = line_id
            if "\t" not in text and "?" not in text:
                fact_index_by_id[line_id] = len(facts)
                facts.append(text.strip())
                continue
            samples.append(TaskSample(tuple(facts), *_babi_question(location, text, fact_index_by_id)))
    return samples


def find_babi_files(babi_path: Optional[str], task_name: str) -> dict:
    """Locate the train and test files of bAbI task `task_name` (e.g. 'qa1') under `babi_path`.

    `babi_path` may hold the files directly or the release layout `tasks_1-20_v1-2/en-10k/`.
    """
    if not babi_path or not os.path.isdir(babi_path):
        raise ValueError(f"task {task_name} needs --babi_path, a folder with the bAbI files; got {babi_path!r}")
    files = {}
    for split, file_split in (("train", "train"), ("valid", "test")):
        pattern = f"{task_name}_*_{file_split}.txt"
        found = sorted(glob.glob(os.path.join(babi_path, pattern))
                       or glob.glob(os.path.join(babi_path, BABI_SUBFOLDER, pattern)))
        if not found:
            raise ValueError(f"bAbI folder {babi_path!r} has no {pattern} (looked in it and in {BABI_SUBFOLDER}/)")
        files[split] = found[0]
    return files


def load_babi_task(task_name: str, babi_path: str, max_n_facts: Optional[int] = None) -> BabiTask:
    """Read bAbI task `task_name` ('qa1'..'qa20'); drop samples with more than `max_n_facts` facts."""
    samples_by_split = {}
    for split, path in find_babi_files(babi_path, task_name).items():
        samples = parse_babi_file(path)
        if max_n_facts is not None:
            samples = [s for s in samples if len(s.facts) <= max_n_facts]
        if not samples:
            raise ValueError(f"{path} gives no questions (max_n_facts={max_n_facts})")
        samples_by_split[split] = samples
    return BabiTask(task_name, samples_by_split)


def _paper_tasks() -> dict:
    return {
        "memorize": GeneratedTask("memorize", PLACES, "start", memorize_sample),
        "detect_memorize": GeneratedTask("detect_memorize", PLACES, "segment", memorize_sample),
        "reasoning": GeneratedTask("reasoning", PLACES, "sentence", reasoning_sample),
        "reasoning_plain": GeneratedTask("reasoning_plain", PLACES, "sentence",
                                         functools.partial(reasoning_sample, plain=True)),
    }


TASK_NAMES = ("memorize", "detect_memorize", "reasoning", "reasoning_plain") + BABI_TASK_NAMES


def get_task(name: str, babi_path: Optional[str] = None, max_n_facts: Optional[int] = None) -> Task:
    """Build a task by name.

    Args:
        name: one of TASK_NAMES: 'memorize', 'detect_memorize', 'reasoning' (the paper's tasks, generated)
            or 'qa1'..'qa20' (bAbI, read from `babi_path`).
        babi_path: folder with the bAbI files (bAbI tasks only).
        max_n_facts: drop bAbI samples with more facts than this (bAbI tasks only).

    Returns:
        a Task.
    """
    if name in BABI_TASK_NAMES:
        return load_babi_task(name, babi_path, max_n_facts)
    paper_tasks = _paper_tasks()
    if name not in paper_tasks:
        raise ValueError(f"unknown task {name!r}; expected one of: {', '.join(TASK_NAMES)}")
    return paper_tasks[name]
