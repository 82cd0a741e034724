"""Generate bAbI-format task files (qa1..qa5) offline by simulating a small world.

The bAbI release (en-10k) cannot be had without internet, so this module writes files of the same format,
phrasing and vocabulary from a simulation: actors move between places, take, drop and give objects, and
places lie north/south/east/west of each other. Each question is asked about the simulated state, so every
answer and every supporting id is correct by construction. The same seed gives byte-identical files.

    python -m babilong.generate_babi --out data/babi_generated --tasks qa1,qa2,qa3,qa4,qa5 \
        --n_train 10000 --n_test 1000 --seed 0

writes OUT/tasks_1-20_v1-2/en-10k/qa{N}_<name>_{train,test}.txt; `--babi_path OUT` then reads them. Story
shapes (facts and questions per story) are given in STORY_SHAPES and in data/README.md. Stories are written as they
are made (memory does not grow with the counts), at most MAX_QUESTIONS questions per file. Files already in OUT are
kept unless `--overwrite`. Bad input (unknown or empty task, counts outside 1..MAX_QUESTIONS, a negative seed, an
OUT that is a file, files already there) stops with one line and exit code 2.
"""
import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from lm_experiments_tools.errors import BAD_INPUT_EXIT_CODE, BadInputError

from .tasks import ACTIONS, BABI_SUBFOLDER, NAMES, OPPOSITE_DIRECTION, PLACES

GENERATED_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
FILE_NAMES = {"qa1": "qa1_single-supporting-fact", "qa2": "qa2_two-supporting-facts",
              "qa3": "qa3_three-supporting-facts", "qa4": "qa4_two-arg-relations",
              "qa5": "qa5_three-arg-relations"}
OBJECTS = ("apple", "football", "milk")
QA5_ACTORS = ("Bill", "Fred", "Jeff", "Mary")
TAKE_VERBS = ("got", "picked up", "grabbed", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
DIRECTIONS = tuple(OPPOSITE_DIRECTION)


@dataclass(frozen=True)
class StoryShape:
    """How a story of a task is laid out: questions per story, world events between two questions."""

    questions: int
    min_events: int
    max_events: int


# qa1 as en-10k: 10 facts, a question after every 2. qa2/qa3/qa5: 5 questions, a few world events before each
# (more for qa3, whose question needs an object carried through two places). qa4: 2 facts, 1 question.
STORY_SHAPES = {"qa1": StoryShape(5, 2, 2), "qa2": StoryShape(5, 2, 4), "qa3": StoryShape(5, 3, 6),
                "qa4": StoryShape(1, 2, 2), "qa5": StoryShape(5, 2, 4)}
SPLIT_IDS = {"train": 0, "test": 1}
MAX_QUESTIONS = 10_000_000  # per task and split: 1,000 times en-10k, about 1 GB of qa3 text


@dataclass
class Question:
    text: str
    answer: str
    supporting: list  # line ids of the story


@dataclass
class Story:
    """Numbered lines of one story: facts (str) and questions (Question), in order."""

    lines: list = field(default_factory=list)

    @property
    def next_id(self) -> int:
        return len(self.lines) + 1

    def fact(self, text: str) -> int:
        self.lines.append(text)
        return len(self.lines)

    def ask(self, question: Question) -> None:
        self.lines.append(question)

    def format(self) -> list:
        """The story as bAbI lines: 'ID fact' and 'ID question \\tanswer\\tsupporting ids'."""
        out = []
        for line_id, line in enumerate(self.lines, 1):
            if isinstance(line, Question):
                ids = " ".join(map(str, sorted(line.supporting)))
                out.append(f"{line_id} {line.text} \t{line.answer}\t{ids}")
            else:
                out.append(f"{line_id} {line}")
        return out


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# ---- the world of actors, places and objects (qa1, qa2, qa3, qa5) --------------------------------------------

class World:
    """Actor places and object whereabouts, each with the line ids that establish them.

    Attributes:
        place: actor -> (place, id of the move that put them there); absent until the actor first moves.
        holder: object -> actor holding it, or None.
        held_since: object -> id of the line where its holder took (or received) it.
        history: object -> list of (place, supporting ids) for each place it was known to be in, in order.
        dropped: object -> (place, supporting ids) while it lies where its last holder dropped it.
        lying: object -> the place where it lies when nobody holds it (at first a hidden random place).
    """

    def __init__(self, rng, story: Story, actors, objects):
        self.rng, self.story, self.actors, self.objects = rng, story, actors, objects
        self.place, self.holder, self.held_since = {}, {o: None for o in objects}, {}
        self.history = {o: [] for o in objects}
        self.dropped = {}
        self.lying = {o: _pick(rng, PLACES) for o in objects}

    def move(self) -> int:
        actor = _pick(self.rng, self.actors)
        current = self.place.get(actor, (None, None))[0]
        destination = _pick(self.rng, [p for p in PLACES if p != current])
        line_id = self.story.fact(f"{actor} {_pick(self.rng, ACTIONS)} to the {destination}.")
        self.place[actor] = (destination, line_id)
        for obj, holder in self.holder.items():
            if holder == actor:  # the object travels with its holder
                self.history[obj].append((destination, [self.held_since[obj], line_id]))
        return line_id

    def can_take(self):
        return [(a, o) for a in self.place for o in self.objects
                if self.holder[o] is None and self.lying[o] == self.place[a][0]]

    def take(self) -> int:
        actor, obj = _pick(self.rng, self.can_take())
        line_id = self.story.fact(f"{actor} {_pick(self.rng, TAKE_VERBS)} the {obj} there.")
        self._hold(obj, actor, line_id)
        return line_id

    def _hold(self, obj, actor, line_id):
        place, move_id = self.place[actor]
        self.holder[obj], self.held_since[obj] = actor, line_id
        if not self.history[obj] or self.history[obj][-1][0] != place:
            self.history[obj].append((place, [move_id, line_id]))

    def drop(self) -> int:
        obj = _pick(self.rng, [o for o in self.objects if self.holder[o] is not None])
        actor = self.holder[obj]
        line_id = self.story.fact(f"{actor} {_pick(self.rng, DROP_VERBS)} the {obj}.")
        place, move_id = self.place[actor]
        self.holder[obj], self.lying[obj], self.dropped[obj] = None, place, (place, [move_id, line_id])
        return line_id

    def can_give(self):
        return [(a, o, b) for o in self.objects if self.holder[o] is not None for a in [self.holder[o]]
                for b in self.place if b != a and self.place[b][0] == self.place[a][0]]

    def give(self) -> tuple:
        giver, obj, receiver = _pick(self.rng, self.can_give())
        line_id = self.story.fact(f"{giver} {_pick(self.rng, GIVE_VERBS)} the {obj} to {receiver}.")
        self.holder[obj], self.held_since[obj] = receiver, line_id
        return giver, obj, receiver, line_id

    def step(self, allowed: tuple):
        """One random event among `allowed` ('move', 'take', 'drop', 'give') that is possible now."""
        if allowed == ("move",):
            return self.move()
        possible = ["move", "move"]  # moves twice as often as any other event, as bAbI stories read
        if "take" in allowed and self.can_take():
            possible.append("take")
        if "drop" in allowed and any(h is not None for h in self.holder.values()):
            possible.append("drop")
        if "give" in allowed and self.can_give():
            possible += ["give", "give"]  # gives are what qa5 asks about: make them frequent
        return getattr(self, _pick(self.rng, possible))()


# ---- questions of each task ------------------------------------------------------------------------------------

def qa1_question(world: World) -> Optional[Question]:
    if not world.place:
        return None
    actor = _pick(world.rng, sorted(world.place))
    place, line_id = world.place[actor]
    return Question(f"Where is {actor}?", place, [line_id])


def object_location(world: World, obj: str) -> tuple:
    """(place, supporting ids) of an object that has been taken at least once."""
    holder = world.holder[obj]
    if holder is None:
        return world.dropped[obj]
    place, move_id = world.place[holder]
    return place, sorted({move_id, world.held_since[obj]})


def qa2_question(world: World) -> Optional[Question]:
    known = [o for o in world.objects if world.history[o]]
    if not known:
        return None
    obj = _pick(world.rng, known)
    place, supporting = object_location(world, obj)
    return Question(f"Where is the {obj}?", place, list(supporting))


def qa3_question(world: World) -> Optional[Question]:
    """'Where was the O before the P?': P the object's current place, the answer the place it came from.

    As in bAbI, "before the P" refers to the object's latest arrival in P (it may have been in P earlier too).
    """
    candidates = [o for o in world.objects if len(world.history[o]) >= 2]
    if not candidates:
        return None
    obj = _pick(world.rng, candidates)
    (before, before_ids), (now, now_ids) = world.history[obj][-2:]
    return Question(f"Where was the {obj} before the {now}?", before, sorted(set(before_ids) | set(now_ids)))


def qa5_question(world: World, give: tuple) -> Question:
    """A question about the give that just happened (the most recent one, which later ones would override)."""
    giver, obj, receiver, line_id = give
    forms = ((f"Who gave the {obj} to {receiver}?", giver), (f"Who gave the {obj}?", giver),
             (f"What did {giver} give to {receiver}?", obj), (f"Who did {giver} give the {obj} to?", receiver),
             (f"Who received the {obj}?", receiver))
    text, answer = forms[int(world.rng.integers(len(forms)))]
    return Question(text, answer, [line_id])


def world_story(rng, task: str, n_questions: int) -> Story:
    """A qa1/qa2/qa3 story: events, then a question, repeated; a question waits until one can be asked."""
    shape, story = STORY_SHAPES[task], Story()
    world = World(rng, story, NAMES, OBJECTS if task != "qa1" else ())
    ask = {"qa1": qa1_question, "qa2": qa2_question, "qa3": qa3_question}[task]
    allowed = ("move",) if task == "qa1" else ("move", "take", "drop")
    previous = None
    while n_questions:
        for _ in range(int(rng.integers(shape.min_events, shape.max_events + 1))):
            world.step(allowed)
        question = ask(world)
        if question is None or (task != "qa1" and question.text == previous):  # qa2/qa3: no question twice in a row
            continue
        story.ask(question)
        previous, n_questions = question.text, n_questions - 1
    return story


def qa5_story(rng, n_questions: int) -> Story:
    """A qa5 story: events until a give happens, then a question about it; repeated."""
    shape, story = STORY_SHAPES["qa5"], Story()
    world = World(rng, story, QA5_ACTORS, OBJECTS)
    while n_questions:
        give = None
        n_events = int(rng.integers(shape.min_events, shape.max_events + 1))
        while n_events > 0 or give is None:
            event = world.step(("move", "take", "drop", "give"))
            give = event if isinstance(event, tuple) else give
            n_events -= 1
        story.ask(qa5_question(world, give))
        n_questions -= 1
    return story


def qa4_story(rng, n_questions: int) -> Story:
    """Two relation facts around an anchor place; the question's answer is unique among the derived relations."""
    story = Story()
    anchor, first, second = (str(p) for p in rng.choice(PLACES, size=3, replace=False))
    relations = []  # (x, direction, y): x is direction of y, both ways round
    for place, direction in zip((first, second), (str(d) for d in rng.choice(DIRECTIONS, size=2, replace=False))):
        line_id = _relation_fact(rng, story, place, direction, anchor)
        relations += [(place, direction, anchor, line_id), (anchor, OPPOSITE_DIRECTION[direction], place, line_id)]
    while True:  # two different directions make most questions unique; draw again until one is
        x, direction, y, line_id = relations[int(rng.integers(len(relations)))]
        if rng.integers(2):
            text, answer = f"What is {direction} of the {y}?", x
            matches = [r for r in relations if r[1:3] == (direction, y)]
        else:
            text, answer = f"What is the {x} {direction} of?", y
            matches = [r for r in relations if r[:2] == (x, direction)]
        if len(matches) == 1:
            story.ask(Question(text, answer, [line_id]))
            return story


def _relation_fact(rng, story: Story, place: str, direction: str, anchor: str) -> int:
    """'place is direction of anchor', phrased either way round."""
    if rng.integers(2):
        return story.fact(f"The {anchor} is {OPPOSITE_DIRECTION[direction]} of the {place}.")
    return story.fact(f"The {place} is {direction} of the {anchor}.")


def make_story(rng, task: str, n_questions: int) -> Story:
    if task == "qa4":
        return qa4_story(rng, n_questions)
    if task == "qa5":
        return qa5_story(rng, n_questions)
    return world_story(rng, task, n_questions)


# ---- files -----------------------------------------------------------------------------------------------------

def iter_lines(task: str, n_questions: int, seed: int, split: str):
    """bAbI lines of `n_questions` questions of `task`, one story at a time; a pure function of (task, n_questions,
    seed, split)."""
    rng = np.random.default_rng([seed, GENERATED_TASKS.index(task), SPLIT_IDS[split]])
    per_story = STORY_SHAPES[task].questions
    while n_questions > 0:
        story = make_story(rng, task, min(per_story, n_questions))
        n_questions -= min(per_story, n_questions)
        yield from story.format()


def generate_lines(task: str, n_questions: int, seed: int, split: str) -> list:
    """The lines of `iter_lines` as a list."""
    return list(iter_lines(task, n_questions, seed, split))


def task_file(out_dir: str, task: str, split: str) -> str:
    return os.path.join(out_dir, BABI_SUBFOLDER, f"{FILE_NAMES[task]}_{split}.txt")


def parse_tasks(value: str) -> list:
    tasks = [name.strip() for name in value.split(",")]
    unknown = [name for name in tasks if name not in GENERATED_TASKS]
    if unknown:
        raise BadInputError(f"--tasks {value!r}: unknown or empty task(s) {unknown}; expected a comma-separated "
                            f"subset of {','.join(GENERATED_TASKS)}")
    return tasks


def check_request(out_dir: str, tasks, n_train: int, n_test: int, seed: int, overwrite: bool) -> None:
    """Refuse, before anything is written, counts or a seed that cannot be generated and an out_dir that is a file
    or already holds the files (unless overwrite)."""
    for name, value in (("--n_train", n_train), ("--n_test", n_test)):
        if not 1 <= value <= MAX_QUESTIONS:
            raise BadInputError(f"{name} {value}: expected a number of questions from 1 to {MAX_QUESTIONS:,}")
    if seed < 0:
        raise BadInputError(f"--seed {seed}: expected an integer >= 0")
    existing = [parent for parent in (out_dir, *_parents(task_file(out_dir, tasks[0], "train"), out_dir))
                if os.path.exists(parent) and not os.path.isdir(parent)]
    if existing:
        raise BadInputError(f"--out {out_dir!r}: {existing[0]} is a file: expected a folder (or a path to create)")
    present = [path for task in tasks for split in SPLIT_IDS if os.path.exists(path := task_file(out_dir, task, split))]
    if present and not overwrite:
        raise BadInputError(f"--out {out_dir!r} already holds {len(present)} of these files ({present[0]}, ...): "
                            "expected another --out, or --overwrite to replace them")


def _parents(path: str, top: str) -> list:
    """The folders between `top` (excluded) and `path` (excluded), outermost first."""
    parents, folder = [], os.path.dirname(path)
    while os.path.normpath(folder) != os.path.normpath(top) and folder:
        parents.append(folder)
        folder = os.path.dirname(folder)
    return parents[::-1]


def write_lines(path: str, lines) -> None:
    """Write `lines` to `path` through a temporary file renamed over it, so that a failure leaves no partial file."""
    temp = path + ".tmp"
    try:
        with open(temp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def generate(out_dir: str, tasks, n_train: int, n_test: int, seed: int, overwrite: bool = False) -> list:
    """Write the train and test files of each task under out_dir; returns their paths.

    Raises:
        BadInputError: see `check_request`.
    """
    check_request(out_dir, tasks, n_train, n_test, seed, overwrite)
    written = []
    for task in tasks:
        for split, n_questions in (("train", n_train), ("test", n_test)):
            path = task_file(out_dir, task, split)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_lines(path, iter_lines(task, n_questions, seed, split))
            written.append(path)
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Folder to write tasks_1-20_v1-2/en-10k/ into")
    parser.add_argument("--tasks", default=",".join(GENERATED_TASKS), help="Comma-separated tasks among qa1..qa5")
    parser.add_argument("--n_train", type=int, default=10_000,
                        help=f"Training questions per task (en-10k: 10000; at most {MAX_QUESTIONS:,})")
    parser.add_argument("--n_test", type=int, default=1_000,
                        help=f"Test questions per task (en-10k: 1000; at most {MAX_QUESTIONS:,})")
    parser.add_argument("--seed", type=int, default=0, help="The files are a pure function of the seed (>= 0)")
    parser.add_argument("--overwrite", action="store_true", help="Replace files already in --out")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        paths = generate(args.out, parse_tasks(args.tasks), args.n_train, args.n_test, args.seed, args.overwrite)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except OSError as error:  # the folder cannot be created or written (permissions, a full disk)
        print(f"error: cannot write into --out {args.out!r} ({error.strerror}): expected a writable folder",
              file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT_CODE)
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
