"""The tests' shared tiny backbones: the config values that their `--model_cfg` files hold (a random BERT encoder
and a random GPT-2 decoder over the offline MiniLM vocabulary), the variations that some tests need, named here,
and fixtures that write them as config files; helpers of the tests that start commands."""
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MINILM_VOCAB_SIZE = 30522  # the offline tokenizer's vocabulary: every id it gives has an embedding
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": MINILM_VOCAB_SIZE, "max_position_embeddings": 64}
TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64,
             "vocab_size": MINILM_VOCAB_SIZE}
# one layer of 16: the command-line tests only need a model that builds and takes a step
ONE_LAYER_BERT = {**TINY_BERT, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
ONE_LAYER_GPT2 = {**TINY_GPT2, "n_layer": 1, "n_embd": 16}
# large initial weights: samples get clearly different logits
LARGE_INIT_BERT = {**TINY_BERT, "initializer_range": 0.5}
# over the 16-token vocabulary of the ArXiv tests' own tokenizer
SMALL_VOCAB_GPT2 = {**TINY_GPT2, "vocab_size": 16, "bos_token_id": 1, "eos_token_id": 1, "pad_token_id": 0}


def write_config(folder: Path, values: dict, name: str | None = None) -> str:
    """Write a `--model_cfg` file (folder/<model_type>.json unless named) and return its path."""
    path = Path(folder) / (name or f"{values['model_type']}.json")
    path.write_text(json.dumps(values))
    return str(path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A `--model_cfg` file of TINY_BERT."""
    return write_config(tmp_path_factory.mktemp("configs"), TINY_BERT)


@pytest.fixture(scope="module")
def large_init_bert(tmp_path_factory) -> str:
    """A `--model_cfg` file of LARGE_INIT_BERT."""
    return write_config(tmp_path_factory.mktemp("configs"), LARGE_INIT_BERT)


def run_in_process(main, argv: list, capsys) -> subprocess.CompletedProcess:
    """A command's `main(argv)` run in this test's process, as the CompletedProcess of the command (exit code,
    stdout, stderr); a fresh interpreter costs seconds per case."""
    capsys.readouterr()  # what the test printed before is not the command's
    try:
        main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 0 if exit_info.code is None else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def default_sigint() -> None:
    """A `preexec_fn` for a command a test interrupts with SIGINT: the default disposition, whatever this process
    inherited. A test suite started as a background job of a shell without job control has SIGINT ignored, and
    its children would inherit that (bash cannot even trap a signal ignored at its start)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stub_the_launchers_python(folder: Path) -> None:
    """Write folder/python: `python -m lm_experiments_tools.launcher COMMAND...` (how scripts/launch.sh starts
    torchrun and accelerate) runs COMMAND itself, so that stub `torchrun` and `accelerate` commands in `folder`
    stand in for the real ones; every other use runs this interpreter. `folder` must come first on PATH."""
    path = Path(folder) / "python"
    path.write_text(f"""#!/usr/bin/env bash
if [[ $1 == -m && $2 == lm_experiments_tools.launcher ]]; then shift 2; exec "$@"; fi
exec {shlex.quote(sys.executable)} "$@"
""")
    path.chmod(0o755)
