"""Tests of the BABILong entry point, its launchers and the plot command, on tiny random backbones."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from babilong import experiment as run_babilong
from babilong import generate_babi, plot
from babilong.metrics import f1_scores
from babilong.results import RESULTS_FILE, append_result, read_results
from conftest import TINY_GPT2, write_config
from lm_experiments_tools import runs as run_layer
from lm_experiments_tools.checkpoint import BEST_CHECKPOINT_NAME
from lm_experiments_tools.run_config import CONFIG_FILE
from rmt_experiments import checkpoints as run_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts" / "babilong"
INPUT_SIZE, NUM_MEM_TOKENS = 32, 2
SEGMENT_SIZE = INPUT_SIZE - NUM_MEM_TOKENS - 3  # [CLS] mem [SEP] tokens [SEP]
NUM_VALID_SAMPLES = 6
STAGE_DIR = "seg{n_segments}"


def common_args(model_cfg: str) -> list:
    return ["--model_cfg", model_cfg, "--input_size", str(INPUT_SIZE), "--num_mem_tokens", str(NUM_MEM_TOKENS),
            "--num_valid_samples", str(NUM_VALID_SAMPLES)]


def training_args(iters=4) -> list:
    return ["--batch_size", "2", "--gradient_accumulation_steps", "2", "--iters", str(iters), "--lr", "1e-3",
            "--valid_interval", "2", "--log_interval", "2", "--save_best", "--optimize_metric", "exact_match",
            "--optimize_mode", "max", "--show_valid_examples", "1"]


def run_main(argv, capsys) -> tuple:
    """(exit code, stderr lines) of a run expected to stop with a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        run_babilong.main(argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def tensorboard_tags(folder: Path) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def best_valid_exact_match(folder: Path) -> float:
    """The best validation exact_match logged during training (the step whose weights model_best.pth holds)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return max(event.value for event in accumulator.Scalars("exact_match/iterations/valid"))


def stage_records(folder: Path) -> list:
    return read_results(folder / RESULTS_FILE)


@pytest.fixture(scope="module")
def curriculum_run(tiny_bert, tmp_path_factory):
    """A two-stage curriculum (1 then 2 segments), evaluated also at 3 segments; records weight loads in order."""
    runs = tmp_path_factory.mktemp("runs")
    events = []
    original_load, original_prepare = run_weights.load_model_weights, run_layer.prepare_run

    def spy_load(model, path):
        events.append(("load", Path(path)))
        return original_load(model, path)

    def spy_prepare(values, logger=None):
        events.append(("prepare", Path(values["model_path"])))
        return original_prepare(values, logger)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_weights, "load_model_weights", spy_load)
        patch.setattr(run_layer, "prepare_run", spy_prepare)
        run_babilong.main(common_args(tiny_bert) + training_args() + [
            "--curriculum", "1,2", "--eval_n_segments", "3", "--model_path", str(runs / STAGE_DIR / "run_1")])
    return runs, events


def test_curriculum_writes_one_run_folder_per_stage(curriculum_run):
    runs, _ = curriculum_run
    for n_segments in (1, 2):
        folder = runs / f"seg{n_segments}" / "run_1"
        assert (folder / BEST_CHECKPOINT_NAME).is_file()
        config = json.loads((folder / CONFIG_FILE).read_text())
        assert config["args"]["max_n_segments"] == n_segments
        assert config["args"]["input_seq_len"] == n_segments * SEGMENT_SIZE
        assert {"exact_match/iterations/valid", "exact_match/iterations/train"} <= tensorboard_tags(folder)
        stage_record = stage_records(folder)[0]
        assert (stage_record["n_segments"], stage_record["input_seq_len"]) == (n_segments, n_segments * SEGMENT_SIZE)
        assert stage_record["n_samples"] == NUM_VALID_SAMPLES
        # the stage's record evaluates model_best.pth on the validation set: exactly its best validation score
        assert stage_record["accuracy"] == pytest.approx(best_valid_exact_match(folder), rel=1e-6)
        assert stage_record["checkpoint"] == str(folder / BEST_CHECKPOINT_NAME)
    extra = stage_records(runs / "seg2" / "run_1")[1]
    assert (extra["n_segments"], extra["input_seq_len"], extra["trained_n_segments"]) == (3, 3 * SEGMENT_SIZE, 2)


def test_second_stage_starts_from_first_stage_best_checkpoint(curriculum_run):
    runs, events = curriculum_run
    stage_1, stage_2 = runs / "seg1" / "run_1", runs / "seg2" / "run_1"
    setup_index = events.index(("prepare", stage_2))
    assert events[setup_index - 1] == ("load", stage_1 / BEST_CHECKPOINT_NAME)
    assert json.loads((stage_2 / CONFIG_FILE).read_text())["args"]["model_cpt"] == str(stage_1)


def test_validate_only_appends_a_record_to_the_checkpoint_folder(curriculum_run, tiny_bert):
    stage_1 = curriculum_run[0] / "seg1" / "run_1"
    before = len(stage_records(stage_1))
    run_babilong.main(common_args(tiny_bert) + ["--validate_only", "--model_cpt", str(stage_1),
                                                "--max_n_segments", "4", "--input_seq_len", "100"])
    records = stage_records(stage_1)
    assert len(records) == before + 1
    assert (records[-1]["n_segments"], records[-1]["input_seq_len"], records[-1]["trained_n_segments"]) == (4, 100, 1)


def test_validate_only_never_writes_into_another_run(curriculum_run, tiny_bert, capsys):
    stage_1, stage_2 = (curriculum_run[0] / f"seg{n}" / "run_1" for n in (1, 2))
    before = {path.name: path.read_bytes() for path in stage_2.iterdir() if path.is_file()}
    code, err = run_main(common_args(tiny_bert) + ["--validate_only", "--model_cpt", str(stage_1),
                                                   "--model_path", str(stage_2)], capsys)
    assert code == 2 and len(err) == 1 and f"--model_path {stage_2}: model_path holds another run" in err[0], err
    assert {path.name: path.read_bytes() for path in stage_2.iterdir() if path.is_file()} == before


def test_validate_only_keeps_the_evaluated_runs_config_and_may_write_a_new_folder(curriculum_run, tiny_bert,
                                                                                 tmp_path):
    stage_1 = curriculum_run[0] / "seg1" / "run_1"
    config = (stage_1 / CONFIG_FILE).read_text()
    evaluation = tmp_path / "evaluation"
    for model_path in (stage_1, evaluation, evaluation):  # the second evaluation into its folder appends
        run_babilong.main(common_args(tiny_bert) + ["--validate_only", "--model_cpt", str(stage_1),
                                                    "--model_path", str(model_path)])
    assert (stage_1 / CONFIG_FILE).read_text() == config
    assert json.loads((evaluation / CONFIG_FILE).read_text())["args"]["validate_only"] is True
    assert len(stage_records(evaluation)) == 2


def curriculum_argv(tiny_bert, runs, **changes) -> list:
    """The command line of `curriculum_run` with --resume, and the flags in `changes` given other values."""
    argv = common_args(tiny_bert) + training_args() + [
        "--curriculum", "1,2", "--eval_n_segments", "3", "--model_path", str(runs / STAGE_DIR / "run_1"), "--resume"]
    for name, value in changes.items():
        if f"--{name}" in argv:
            argv[argv.index(f"--{name}") + 1] = value
        else:
            argv += [f"--{name}", value]
    return argv


def config_texts(runs) -> list:
    return [(runs / f"seg{n}" / "run_1" / CONFIG_FILE).read_text() for n in (1, 2)]


@pytest.mark.parametrize("changes, expected", [
    ({"batch_size": "4", "lr": "0.01"}, ["batch_size 2 -> 4", "lr 0.001 -> 0.01"]),
    ({"seed": "7", "gradient_accumulation_steps": "1"}, ["seed 42 -> 7", "gradient_accumulation_steps 2 -> 1"]),
    ({"input_size": "33"}, ["input_size 32 -> 33", "input_seq_len 27 -> 28"]),
    ({"task": "detect_memorize"}, ["task 'memorize' -> 'detect_memorize'"]),  # a finished curriculum: not skipped
])
def test_resume_with_other_settings_is_refused_listing_them(curriculum_run, tiny_bert, capsys, changes, expected):
    runs, _ = curriculum_run
    before = config_texts(runs)
    code, err = run_main(curriculum_argv(tiny_bert, runs, **changes), capsys)
    assert code == 2 and len(err) == 1 and "changes the settings that define the run" in err[0], err
    assert all(difference in err[0] for difference in expected), err[0]
    assert config_texts(runs) == before


def test_resume_with_other_max_n_segments_is_refused(curriculum_run, tiny_bert, capsys):
    stage_1 = curriculum_run[0] / "seg1" / "run_1"  # trained at 1 segment
    before = (stage_1 / CONFIG_FILE).read_text()
    code, err = run_main(common_args(tiny_bert) + training_args() + [
        "--model_path", str(stage_1), "--resume", "--max_n_segments", "2"], capsys)
    assert code == 2 and len(err) == 1 and "changes the settings that define the run" in err[0], err
    assert "max_n_segments 1 -> 2" in err[0] and f"input_seq_len {SEGMENT_SIZE} -> {2 * SEGMENT_SIZE}" in err[0]
    assert (stage_1 / CONFIG_FILE).read_text() == before


def test_resume_may_change_what_does_not_define_the_run(curriculum_run, tiny_bert, capsys):
    runs, _ = curriculum_run
    records = [stage_records(runs / f"seg{n}" / "run_1") for n in (1, 2)]
    run_babilong.main(curriculum_argv(tiny_bert, runs, log_interval="1", show_valid_examples="0",
                                      data_n_workers="0", valid_interval="1"))
    assert [stage_records(runs / f"seg{n}" / "run_1") for n in (1, 2)] == records  # finished: skipped


LONG_STORY_FACTS = 40  # about 240 tokens: more than the 4 segments of 27 tokens of these runs


def babi_with_a_long_story(folder: Path, first: bool) -> Path:
    """qa1 files whose training file holds one story too long for 4 segments, as its first or last question."""
    generate_babi.generate(str(folder), ["qa1"], 20, 10, seed=0)
    train = Path(generate_babi.task_file(str(folder), "qa1", "train"))
    long_story = [f"{i} Mary moved to the bathroom." for i in range(1, LONG_STORY_FACTS + 1)]
    long_story.append(f"{LONG_STORY_FACTS + 1} Where is Mary? \tbathroom\t{LONG_STORY_FACTS}")
    lines = train.read_text().splitlines()
    train.write_text("\n".join(long_story + lines if first else lines + long_story) + "\n")
    return folder


@pytest.mark.parametrize("first", [True, False], ids=["first story", "last story"])
def test_a_story_too_long_for_the_segments_is_refused_before_anything_is_written(tiny_bert, tmp_path, capsys, first):
    babi = babi_with_a_long_story(tmp_path / "babi", first)
    run_dir = tmp_path / "run"
    code, err = run_main(common_args(tiny_bert) + training_args(iters=2) + [
        "--task", "qa1", "--babi_path", str(babi), "--max_n_segments", "4", "--model_path", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1, err
    index = 0 if first else 20
    assert f"qa1 train sample {index} has " in err[0] and f"more than input_seq_len={4 * SEGMENT_SIZE}" in err[0]
    assert not run_dir.exists() or [path.name for path in run_dir.iterdir()] == [".run.lock"]


def test_a_run_that_fails_before_its_first_step_leaves_a_folder_a_rerun_reuses(tiny_bert, tmp_path, capsys,
                                                                                 monkeypatch):
    run_dir = tmp_path / "run"
    argv = common_args(tiny_bert) + training_args(iters=2) + ["--model_path", str(run_dir)]

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr("lm_experiments_tools.trainer.Trainer._train_step", fail)
        code, err = run_main(argv, capsys)
    assert code == 1 and "out of memory" in err[-1] and (run_dir / CONFIG_FILE).is_file()
    run_babilong.main(argv)  # neither --resume nor --overwrite: nothing of a run was left
    assert stage_records(run_dir)[0]["n_samples"] == NUM_VALID_SAMPLES


def test_decoder_generation_reports_exact_match(tmp_path):
    gpt2 = write_config(tmp_path, TINY_GPT2)
    run_babilong.main(common_args(gpt2) + training_args(iters=2) + [
        "--model_type", "decoder", "--max_n_segments", "2", "--model_path", str(tmp_path / "run_1")])
    record = stage_records(tmp_path / "run_1")[0]
    room = 3  # GEN, a one-token place name, EOS
    assert record["input_seq_len"] == 2 * (INPUT_SIZE - 2 * NUM_MEM_TOKENS) - room
    assert record["n_samples"] == NUM_VALID_SAMPLES
    assert record["accuracy"] == pytest.approx(best_valid_exact_match(tmp_path / "run_1"), rel=1e-6)
    assert "exact_match/iterations/valid" in tensorboard_tags(tmp_path / "run_1")


def test_f1_scores_against_hand_counts():
    predictions, labels = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1])
    scores = f1_scores(predictions, labels, n_classes=3)
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 0 fn 2 -> 1/2; class 2 never a label: not in the macro mean
    assert scores["f1_macro"] == pytest.approx(100 * (2 / 3 + 1 / 2) / 2)
    assert scores["f1_micro"] == pytest.approx(100 * 2 * 2 / (2 * 2 + 2 + 2))


@pytest.mark.parametrize("extra, expected", [
    (["--max_n_segments", "2", "--input_seq_len", str(2 * SEGMENT_SIZE + 1)], f"at most {2 * SEGMENT_SIZE}"),
    (["--curriculum", "1,2", "--model_path", "runs/x/run_1"], "{n_segments} placeholder"),
    (["--curriculum", "1,zero"], "comma-separated positive integers"),
    (["--validate_only"], "needs --model_cpt"),
])
def test_bad_options_exit_2_with_one_line(tiny_bert, capsys, extra, expected):
    code, err = run_main(common_args(tiny_bert) + extra, capsys)
    assert code == 2 and len(err) == 1 and expected in err[0]


def test_model_cpt_without_best_checkpoint(tiny_bert, tmp_path, capsys):
    code, err = run_main(common_args(tiny_bert) + ["--model_cpt", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and BEST_CHECKPOINT_NAME in err[0]


def test_model_cpt_with_other_num_mem_tokens_names_both_values(curriculum_run, tiny_bert, capsys):
    argv = common_args(tiny_bert)
    argv[argv.index("--num_mem_tokens") + 1] = "3"
    code, err = run_main(argv + ["--model_cpt", str(curriculum_run[0] / "seg1" / "run_1")], capsys)
    assert code == 2 and len(err) == 1 and "num_mem_tokens=2" in err[0] and "num_mem_tokens=3" in err[0]


def test_model_cpt_with_other_backbone_names_both_values(curriculum_run, tiny_bert, capsys):
    argv = ["--from_pretrained", "bert-base-cased", "--model_cpt", str(curriculum_run[0] / "seg1" / "run_1"),
            "--input_size", str(INPUT_SIZE), "--num_mem_tokens", str(NUM_MEM_TOKENS)]
    code, err = run_main(argv, capsys)  # refused before anything is downloaded
    assert code == 2 and len(err) == 1 and f"backbone={tiny_bert!r}" in err[0] and "'bert-base-cased'" in err[0]


def test_model_cpt_weights_of_another_shape_without_config(curriculum_run, tiny_bert, tmp_path, capsys):
    shutil.copy(curriculum_run[0] / "seg1" / "run_1" / BEST_CHECKPOINT_NAME, tmp_path / BEST_CHECKPOINT_NAME)
    argv = common_args(tiny_bert)
    argv[argv.index("--num_mem_tokens") + 1] = "3"
    code, err = run_main(argv + ["--model_cpt", str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and "another model" in err[0]


def _record(task, trained, n_segments, accuracy, checkpoint="c.pth"):
    return {"task": task, "n_segments": n_segments, "input_seq_len": 57 * n_segments, "accuracy": accuracy,
            "n_samples": 10, "checkpoint": checkpoint, "trained_n_segments": trained, "n_labels": 6}


def test_plot_draws_the_most_trained_model_per_task(tmp_path, capsys):
    append_result(tmp_path / "memorize" / "seg1", _record("memorize", 1, 1, 50.0))
    for n_segments, accuracy in ((1, 90.0), (2, 95.0), (8, 70.0)):
        append_result(tmp_path / "memorize" / "seg2", _record("memorize", 2, n_segments, accuracy))
    append_result(tmp_path / "memorize" / "seg2", _record("memorize", 2, 8, 75.0))  # evaluated again: last wins
    append_result(tmp_path / "reasoning" / "seg1", _record("reasoning", 1, 1, 40.0))
    output = tmp_path / "figure.png"
    assert plot.main([str(tmp_path), "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| memorize |  | 2 | 8 | 456 | 75.0 | 10 |" in table and "70.0" not in table and "50.0" not in table
    lines = plot.select_lines(plot.collect_results(tmp_path), by_stage=True)
    assert sorted(lines) == [("memorize", "", 1), ("memorize", "", 2), ("reasoning", "", 1)]


def test_a_torn_last_record_is_skipped_by_readers_and_never_glued_onto(tmp_path, caplog, capsys):
    run_dir = tmp_path / "memorize" / "seg2"
    append_result(run_dir, _record("memorize", 2, 1, 90.0))
    with open(run_dir / RESULTS_FILE, "a", encoding="utf-8") as file:  # a crash in the middle of an append
        file.write(json.dumps(_record("memorize", 2, 2, 95.0))[:30])
    with caplog.at_level("WARNING"):
        assert [r["n_segments"] for r in read_results(run_dir / RESULTS_FILE)] == [1]
    assert f"{RESULTS_FILE}:2: skipping a torn record" in caplog.text
    append_result(run_dir, _record("memorize", 2, 8, 70.0))
    lines = (run_dir / RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["n_segments"] == 8  # on its own line, after the torn one
    assert [r["n_segments"] for r in read_results(run_dir / RESULTS_FILE)] == [1, 8]
    assert run_babilong.is_evaluated(run_dir, n_segments=8, trained_n_segments=2)  # what --resume reads
    assert plot.main([str(tmp_path), "-o", str(tmp_path / "figure.png")]) == 0
    assert "| memorize |  | 2 | 8 | 456 | 70.0 | 10 |" in capsys.readouterr().out


def tear_a_record(run_dir: Path) -> str:
    """Append the first 30 characters of a record, as a crash in the middle of an append leaves it."""
    torn = json.dumps(_record("memorize", 1, 1, 50.0))[:30]
    with open(run_dir / RESULTS_FILE, "a", encoding="utf-8") as file:
        file.write(torn)
    return torn


def test_the_command_line_reads_past_a_torn_record_and_appends_after_it(tiny_bert, tmp_path, caplog):
    run_dir = tmp_path / "run"
    argv = common_args(tiny_bert) + training_args(iters=2) + ["--model_path", str(run_dir)]
    run_babilong.main(argv)
    (run_dir / RESULTS_FILE).write_text("")  # the run crashed while appending its only record
    first_torn = tear_a_record(run_dir)
    with caplog.at_level("WARNING"):
        run_babilong.main([*argv, "--resume"])  # not finished: its record is torn; evaluated, recorded after it
    assert f"{RESULTS_FILE}:1: skipping a torn record" in caplog.text
    second_torn = tear_a_record(run_dir)
    run_babilong.main(common_args(tiny_bert) + ["--validate_only", "--model_cpt", str(run_dir)])
    lines = (run_dir / RESULTS_FILE).read_text().splitlines()
    assert [lines[0], lines[2]] == [first_torn, second_torn] and len(lines) == 4, lines  # whole records, own lines
    assert [record["trained_n_segments"] for record in stage_records(run_dir)] == [1, 1]


def test_plot_keeps_the_named_tasks(tmp_path, capsys):
    append_result(tmp_path / "reasoning_plain", _record("reasoning_plain", 1, 1, 90.0))
    append_result(tmp_path / "reasoning", _record("reasoning", 2, 2, 60.0))
    assert plot.main([str(tmp_path), "--tasks", "reasoning"]) == 0
    table = capsys.readouterr().out
    assert "| reasoning |  | 2 | 2 | 114 | 60.0 | 10 |" in table and "reasoning_plain" not in table
    assert plot.main([str(tmp_path), "--tasks", "reasoning,memorize"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "['memorize']" in err[0] and "'reasoning_plain'" in err[0]


def test_plot_labels_only_lengths_far_enough_apart_on_the_log_axis():
    assert plot.spaced_out([57, 114, 171, 342, 5472, 100035]) == [57, 114, "", 342, 5472, 100035]
    assert plot.spaced_out([100, 120, 150, 200]) == [100, "", "", 200]


def test_plot_bad_input_exits_2(tmp_path, capsys):
    assert plot.main([str(tmp_path / "missing")]) == 2
    (tmp_path / RESULTS_FILE).write_text('{"task": "memorize"}\n')
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and f"{RESULTS_FILE}:1" in err[1]


def run_script(name, env_overrides, args=(), cwd=None):
    env = {**os.environ, **env_overrides}
    return subprocess.run(["bash", str(SCRIPTS / name), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("name, env", [
    ("finetune_babilong_rmt.sh", {"TBS": "10", "BS": "4"}),
    ("finetune_babilong_rmt_curriculum.sh", {"TBS": "8", "BS": "4", "NP": "3"}),
    ("eval_babilong_rmt_from_cpt.sh", {"MODEL_CPT": ""}),
])
def test_script_bad_batch_or_checkpoint_exits_2(name, env, tmp_path):
    result = run_script(name, env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes_curriculum_from_script_folder(tiny_bert, tmp_path):
    env = {"NP": "2", "MODEL_NAME": "", "NOISE_DATASET": "default", "INPUT_SIZE": str(INPUT_SIZE),
           "MEMORY_SIZE": str(NUM_MEM_TOKENS), "SEGMENTS": "1 2", "ITERS": "2", "TBS": "4", "BS": "2",
           "LR": "1e-3", "NUM_VALID_SAMPLES": "5", "RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = run_script("finetune_babilong_rmt.sh", env, ["--model_cfg", tiny_bert], cwd=SCRIPTS)
    assert result.returncode == 0, result.stderr[-3000:]
    for n_segments in (1, 2):
        (folder,) = tmp_path.glob(f"memorize/*/*_seg{n_segments}_*/run_1")
        assert (folder / BEST_CHECKPOINT_NAME).is_file() and (folder / CONFIG_FILE).is_file()
        assert json.loads((folder / CONFIG_FILE).read_text())["environment"]["world_size"] == 2
        assert stage_records(folder)[0]["n_samples"] == 5  # each sample counted once over both processes
        assert "exact_match/iterations/valid" in tensorboard_tags(folder)
