"""The bAbI world generator (babilong.generate_babi) and the bAbI reader's line checks (babilong.tasks).

The generated answers are re-derived here by an independent reading of the story text: a small interpreter of
the sentences that tracks where actors and objects are, which relations hold and who gave what to whom.
"""
import re

import pytest

from babilong import generate_babi, get_task, parse_babi_file
from conftest import run_in_process
from lm_experiments_tools.errors import BadInputError

N_QUESTIONS = 300  # per task and split: a few hundred stories' worth of questions for every check
MOVE = re.compile(r"^(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\.$")
TAKE = re.compile(r"^(\w+) (?:got|picked up|grabbed|took) the (\w+) there\.$")
DROP = re.compile(r"^(\w+) (?:dropped|discarded|put down|left) the (\w+)\.$")
GIVE = re.compile(r"^(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.$")
RELATION = re.compile(r"^The (\w+) is (north|south|east|west) of the (\w+)\.$")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


@pytest.fixture(scope="module")
def babi_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    generate_babi.generate(str(out), generate_babi.GENERATED_TASKS, N_QUESTIONS, N_QUESTIONS // 3, seed=7)
    return out


def read_stories(path) -> list:
    """[[(id, text, answer or None, supporting ids or None), ...] per story] straight from the file."""
    stories = []
    for line in path.read_text().splitlines():
        line_id, text = line.split(" ", 1)
        if line_id == "1":
            stories.append([])
        if "\t" in text:
            question, answer, ids = text.split("\t")
            stories[-1].append((int(line_id), question.strip(), answer, [int(i) for i in ids.split()]))
        else:
            stories[-1].append((int(line_id), text, None, None))
    return stories


class Reader:
    """Replays a story's facts: actor places, object holders and places, the object's trail of places, gives."""

    def __init__(self):
        self.actor_at, self.holder, self.object_at, self.trail, self.gives, self.relations = {}, {}, {}, {}, [], []

    def read(self, text: str) -> None:
        if m := MOVE.match(text):
            actor, place = m.groups()
            self.actor_at[actor] = place
            for obj in [o for o, h in self.holder.items() if h == actor]:
                self._locate(obj, place)
        elif m := TAKE.match(text):
            self.holder[m[2]] = m[1]
            self._locate(m[2], self.actor_at[m[1]])
        elif m := DROP.match(text):
            assert self.holder.pop(m[2]) == m[1]
        elif m := GIVE.match(text):
            assert self.holder[m[2]] == m[1] and self.actor_at[m[1]] == self.actor_at[m[3]]
            self.holder[m[2]] = m[3]
            self.gives.append(m.groups())
        elif m := RELATION.match(text):
            self.relations += [m.groups(), (m[3], OPPOSITE[m[2]], m[1])]
        else:
            raise AssertionError(f"not a bAbI sentence: {text!r}")

    def _locate(self, obj, place):
        self.object_at[obj] = place
        if not self.trail.get(obj) or self.trail[obj][-1] != place:
            self.trail.setdefault(obj, []).append(place)

    def answer(self, question: str) -> str:
        if m := re.fullmatch(r"Where is (\w+)\?", question):
            return self.actor_at[m[1]]
        if m := re.fullmatch(r"Where is the (\w+)\?", question):
            return self.object_at[m[1]]
        if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
            trail = self.trail[m[1]]
            assert trail[-1] == m[2]  # before its latest arrival in the place asked about
            return trail[-2]
        if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
            return self._unique([x for x, d, y in self.relations if (d, y) == (m[1], m[2])])
        if m := re.fullmatch(r"What is the (\w+) (\w+) of\?", question):
            return self._unique([y for x, d, y in self.relations if (x, d) == (m[1], m[2])])
        return self._answer_give(question)

    def _answer_give(self, question: str) -> str:
        patterns = ((r"Who gave the (\w+) to (\w+)\?", lambda g, m: (g[1], g[2]) == (m[1], m[2]), 0),
                    (r"Who gave the (\w+)\?", lambda g, m: g[1] == m[1], 0),
                    (r"What did (\w+) give to (\w+)\?", lambda g, m: (g[0], g[2]) == (m[1], m[2]), 1),
                    (r"Who did (\w+) give the (\w+) to\?", lambda g, m: (g[0], g[1]) == (m[1], m[2]), 2),
                    (r"Who received the (\w+)\?", lambda g, m: g[1] == m[1], 2))
        for pattern, matches, field in patterns:
            if m := re.fullmatch(pattern, question):
                return [g for g in self.gives if matches(g, m)][-1][field]  # the latest such give
        raise AssertionError(f"unknown question {question!r}")

    @staticmethod
    def _unique(answers):
        assert len(answers) == 1, answers
        return answers[0]


def entities(text: str) -> set:
    return set(re.findall(r"\b(?:[A-Z][a-z]+|bathroom|bedroom|garden|hallway|kitchen|office|apple|football|milk)\b",
                          text)) - {"The", "Where", "What", "Who"}


@pytest.mark.parametrize("task", generate_babi.GENERATED_TASKS)
def test_every_answer_is_re_derived_by_an_independent_reading(babi_dir, task):
    path = babi_dir / generate_babi.task_file("", task, "train")
    stories = read_stories(path)
    n_questions = 0
    for story in stories:
        reader, facts = Reader(), {}
        for line_id, text, answer, supporting in story:
            if answer is None:
                reader.read(text)
                facts[line_id] = text
                continue
            n_questions += 1
            assert reader.answer(text) == answer, (path, line_id)
            assert supporting and all(i in facts for i in supporting)
            # the supporting facts name the answer or the question's subject
            named = set().union(*(entities(facts[i]) for i in supporting))
            assert named & (entities(text) | {answer})
    assert n_questions == N_QUESTIONS
    assert len(stories) >= N_QUESTIONS // generate_babi.STORY_SHAPES[task].questions


def test_story_shapes_and_labels(babi_dir):
    qa1 = read_stories(babi_dir / generate_babi.task_file("", "qa1", "train"))
    assert all(len(story) == 15 for story in qa1)  # 10 facts, a question after every 2
    assert all([a is not None for _, _, a, _ in story] == [False, False, True] * 5 for story in qa1)
    places = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
    for task in ("qa1", "qa2", "qa3", "qa4"):
        assert get_task(task, babi_path=str(babi_dir)).labels == places
    assert get_task("qa5", babi_path=str(babi_dir)).labels == ("Bill", "Fred", "Jeff", "Mary", "apple", "football",
                                                               "milk")


def test_generated_files_parse_with_the_project_reader(babi_dir):
    for task in generate_babi.GENERATED_TASKS:
        for split, n in (("train", N_QUESTIONS), ("test", N_QUESTIONS // 3)):
            samples = parse_babi_file(str(babi_dir / generate_babi.task_file("", task, split)))
            assert len(samples) == n
            assert all(s.supporting and max(s.supporting) < len(s.facts) for s in samples)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    def files(out, seed):
        generate_babi.generate(str(out), ["qa1", "qa5"], 50, 20, seed)
        return {p.name: p.read_bytes() for p in sorted(out.rglob("*.txt"))}

    first, again, other = files(tmp_path / "a", 3), files(tmp_path / "b", 3), files(tmp_path / "c", 4)
    assert len(first) == 4 and first == again
    assert all(first[name] != other[name] for name in first)
    assert first["qa1_single-supporting-fact_train.txt"] != first["qa1_single-supporting-fact_test.txt"]


@pytest.fixture
def generate_cli(capsys):
    """(exit code, stderr lines) of `python -m babilong.generate_babi ARGV`, run in this process."""
    def run(*argv) -> tuple:
        result = run_in_process(generate_babi.main, list(argv), capsys)
        return result.returncode, result.stderr.strip().splitlines()
    return run


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "qa1,qa9"], "--tasks 'qa1,qa9': unknown or empty task(s) ['qa9']"),
    (["--tasks", "qa1,,qa2"], "--tasks 'qa1,,qa2': unknown or empty task(s) ['']"),
    (["--n_train", "0"], "--n_train 0: expected a number of questions from 1 to 10,000,000"),
    (["--n_test", "-5"], "--n_test -5: expected a number of questions from 1 to 10,000,000"),
    (["--n_train", "1000000000"], "--n_train 1000000000: expected a number of questions from 1 to 10,000,000"),
    (["--seed", "-1"], "--seed -1: expected an integer >= 0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, argv, message, generate_cli):
    code, lines = generate_cli("--out", tmp_path, *argv)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not list(tmp_path.iterdir())


def test_out_naming_a_file_is_one_line_and_exit_2(tmp_path, generate_cli):
    (tmp_path / "file").write_text("mine")
    code, lines = generate_cli("--out", tmp_path / "file", "--tasks", "qa1", "--n_train", "5", "--n_test", "5")
    assert code == 2 and len(lines) == 1 and f"{tmp_path / 'file'} is a file: expected a folder" in lines[0]
    assert (tmp_path / "file").read_text() == "mine"


def test_a_second_run_into_the_same_out_needs_overwrite(tmp_path, generate_cli):
    argv = ["--out", tmp_path, "--tasks", "qa1", "--n_train", "5", "--n_test", "5"]
    assert generate_cli(*argv, "--seed", "1")[0] == 0
    first = {p: p.read_bytes() for p in tmp_path.rglob("*.txt")}
    code, lines = generate_cli(*argv, "--seed", "2")
    assert code == 2 and len(lines) == 1 and "already holds 2 of these files" in lines[0] and "--overwrite" in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.txt")} == first
    assert generate_cli(*argv, "--seed", "2", "--overwrite")[0] == 0
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.txt")} != first


def test_stories_are_streamed_to_the_file(tmp_path, monkeypatch):
    """The file is written story by story: no list of all the lines is built."""
    written_before_the_last_story = []
    real_format = generate_babi.Story.format

    def format_and_look(story):
        files = list(tmp_path.rglob("*.tmp"))
        written_before_the_last_story.append(files[0].stat().st_size if files else 0)
        return real_format(story)

    monkeypatch.setattr(generate_babi.Story, "format", format_and_look)
    monkeypatch.setattr(generate_babi, "generate_lines", None)  # never called
    generate_babi.generate(str(tmp_path), ["qa1"], 5 * 400, 5, seed=0)
    assert max(written_before_the_last_story) > 0


# ---- the reader's line checks --------------------------------------------------------------------------------

GOOD_STORY = "1 Mary moved to the bathroom.\n2 John went to the hallway.\n"


@pytest.mark.parametrize("question_line, message", [
    ("3 Where is Mary? bathroom 1", "has 1 tab-separated fields: expected 3"),
    ("3 Where is Mary? \tbathroom", "has 2 tab-separated fields: expected 3"),
    ("3 Where is Mary? \t\t1", "has an empty answer"),
    ("3 Where is Mary? \tbathroom\tone", "supporting ids 'one': expected space-separated line numbers"),
    ("3 Where is Mary? \tbathroom\t", "supporting ids '': expected space-separated line numbers"),
    ("3 Where is Mary? \tbathroom\t4", "supporting ids [4] are not story facts above this line"),
    ("5 Where is Mary? \tbathroom\t1", "line id 5: expected 1 (a new story) or 3"),
])
def test_bad_babi_lines_name_file_line_and_what_is_expected(tmp_path, question_line, message):
    path = tmp_path / "qa1_single-supporting-fact_train.txt"
    path.write_text(GOOD_STORY + question_line + "\n")
    with pytest.raises(BadInputError, match=f"^{re.escape(str(path))}:3: .*{re.escape(message)}"):
        parse_babi_file(str(path))


def test_supporting_ids_must_be_in_the_same_story(tmp_path):
    path = tmp_path / "qa1_single-supporting-fact_train.txt"
    path.write_text(GOOD_STORY + "3 Where is Mary? \tbathroom\t1\n1 Sandra went to the office.\n"
                    "2 Where is Sandra? \toffice\t3\n")
    with pytest.raises(BadInputError, match=":5: supporting ids \\[3\\] are not story facts"):
        parse_babi_file(str(path))
    path.write_text(GOOD_STORY + "3 Where is Mary? \tbathroom\t1\n")
    assert parse_babi_file(str(path))[0].answer == "bathroom"
