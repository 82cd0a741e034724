"""The `python -m babilong.show` inspection command: JSON lines out, exit code 2 on bad input."""
import json
import os
import subprocess
import sys

import pytest

from babilong.show import main

BABI_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "babi")
KEYS = {"text", "n_tokens", "facts", "fact_token_positions", "question", "answer"}


def test_show_prints_one_json_sample_a_line(capsys):
    assert main(["--task", "reasoning", "--input_seq_len", "300", "--n", "3", "--split", "valid"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3
    for record in records:
        assert set(record) == KEYS
        assert record["n_tokens"] == 300
        assert record["text"].endswith(" " + record["question"].lower())
        assert len(record["facts"]) == len(record["fact_token_positions"]) == 2


def test_show_reads_babi(capsys):
    assert main(["--task", "qa2", "--input_seq_len", "120", "--babi_path", BABI_FIXTURE, "--n", "5"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["answer"] for r in records] == ["hallway", "office"]  # all the training file's questions
    assert records[1]["facts"][0] == "Daniel went to the garden."


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope", "--input_seq_len", "100"], "unknown task 'nope'"),
    (["--task", "qa1", "--input_seq_len", "100"], "needs --babi_path"),
    (["--task", "qa1", "--input_seq_len", "100", "--babi_path", "/no/such/dir"], "/no/such/dir"),
    (["--task", "reasoning", "--input_seq_len", "10"], "input_seq_len=10 is too small"),
    (["--task", "memorize", "--input_seq_len", "100", "--noise_dataset", "./missing_background/"],
     "'./missing_background/' not found; accepted kinds"),
])
def test_show_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.slow
def test_show_command_line_exit_code_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "babilong.show", "--task", "qa1", "--input_seq_len", "100",
                             "--babi_path", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: bAbI folder") and "Traceback" not in result.stderr
