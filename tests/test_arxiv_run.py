"""Tests of the ArXiv language-modelling entry point: memory-free equivalence, bad input, an end-to-end run."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from arxiv_lm.data import SegmentCollator, SegmentDataset
from arxiv_lm.experiment import main
from conftest import SMALL_VOCAB_GPT2
from lm_experiments_tools.checkpoint import load_checkpoint
from modeling_rmt import MemoryCell, RecurrentWrapper

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "scripts" / "arxiv"
RMT_SCRIPT = SCRIPTS / "finetune_arxiv_rmt.sh"
WORDS = ["the", "goes", "to", ".", "alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "light", "north"]
SPECIAL_TOKENS = {"pad_token": "[PAD]", "eos_token": "[EOS]", "unk_token": "[UNK]"}
SEGMENT = 8


def tiny_gpt2(vocab_size=50):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=vocab_size)).eval()


def make_batch(n_blocks_per_sample, max_n_segments):
    documents = [torch.randint(1, 50, (SEGMENT * n_blocks,), generator=torch.Generator().manual_seed(n_blocks))
                 for n_blocks in n_blocks_per_sample]
    dataset = SegmentDataset(documents, [len(doc) for doc in documents], SEGMENT, max_n_segments)
    last_sample_of_each_doc = dataset.first_sample[1:] - 1
    return SegmentCollator(0, SEGMENT, max_n_segments)([dataset[int(i)] for i in last_sample_of_each_doc])


@pytest.mark.parametrize("n_blocks_per_sample", [[1, 1], [3, 1, 2]])
def test_rmt_without_memory_matches_plain_model_on_last_block(n_blocks_per_sample):
    batch = make_batch(n_blocks_per_sample, max_n_segments=3)
    backbone = tiny_gpt2()
    model = RecurrentWrapper(MemoryCell(backbone, 0), segment_size=SEGMENT, max_n_segments=3).eval()
    with torch.no_grad():
        output = model(**batch)
        last_block = batch["input_ids"][:, -SEGMENT:]
        plain = backbone(input_ids=last_block, labels=last_block)
    assert torch.allclose(output["loss"], plain.loss, atol=1e-5)
    assert torch.allclose(output["logits"][:, -SEGMENT:], plain.logits, atol=1e-4)


def run_main(argv, capsys):
    capsys.readouterr()  # drop what the fixtures printed
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, message


def save_word_tokenizer(folder, words, special_tokens):
    """A word-level tokenizer over `words` (special tokens first), saved where AutoTokenizer finds it."""
    vocab = {token: index for index, token in enumerate([*special_tokens.values(), *words])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=special_tokens.get("unk_token", words[0])))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_tokens).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("bad_input, expected", [
    (["--input_size", "4", "--num_mem_tokens", "2"], "input_size=4"),
    (["--dataset_path", "{tmp}/missing"], "is not a folder"),
    (["--dataset_path", "{tmp}/only_train"], "missing ['validation']"),
    (["--tokenizer", "{tmp}/tokenizer"], "no eos token"),
])
def test_bad_input_exits_with_code_2_and_one_line(bad_input, expected, tmp_path, capsys):
    from datasets import Dataset, DatasetDict
    DatasetDict({"train": Dataset.from_dict({"text": ["x"]})}).save_to_disk(tmp_path / "only_train")
    save_word_tokenizer(tmp_path / "tokenizer", ["a", "b"], {})
    argv = [arg.format(tmp=tmp_path) for arg in bad_input]
    code, message = run_main(argv, capsys)
    assert code == 2 and len(message) == 1 and expected in message[0]


@pytest.mark.parametrize("script, overrides, expected", [
    ("finetune_arxiv_rmt.sh", {"TBS": "32", "BS": "3"}, "TBS=32 is not divisible by BS*NP=3"),
    ("finetune_arxiv_rmt.sh", {"ITERS": "ten"}, "ITERS=ten: expected a positive integer"),
    ("finetune_arxiv_baseline.sh", {"NP": "0"}, "NP=0: expected a positive integer"),
    ("finetune_arxiv_rmt_curriculum.sh", {"TBS": "32", "BS": "4", "NP": "3"}, "TBS=32 is not divisible by BS*NP=12"),
])
def test_launchers_reject_bad_batch_settings(script, overrides, expected, tmp_path):
    finished = subprocess.run([str(SCRIPTS / script)], env={**os.environ, "RUNS_DIR": str(tmp_path), **overrides},
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    message = finished.stderr.strip().splitlines()
    assert finished.returncode == 2 and len(message) == 1 and message[0].startswith(f"error: {expected}")
    assert not any(tmp_path.iterdir())  # nothing launched


def write_documents(folder, n_documents, seed):
    """Documents whose later text repeats names from earlier text, so that history helps prediction."""
    names = WORDS[4:]
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for doc in range(n_documents):
        chosen = [names[i] for i in torch.randint(0, len(names), (6,), generator=generator)]
        sentences = [f"the {word} goes to {chosen[(i + 1) % 6]} ." for i, word in enumerate(chosen * 8)]
        paths.append(folder / f"doc{seed}_{doc}.txt")
        paths[-1].write_text(" ".join(sentences))
    return [str(path) for path in paths]


def scalar_series(run_folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_folder)).Reload()
    return [event.value for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else None


@pytest.mark.slow
def test_end_to_end_script_writes_events_checkpoint_and_results(tmp_path, capsys):
    (tmp_path / "tiny_gpt2.json").write_text(json.dumps(SMALL_VOCAB_GPT2))
    save_word_tokenizer(tmp_path / "tokenizer", WORDS, SPECIAL_TOKENS)
    run_folder = tmp_path / "run"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "MODEL_NAME": "", "INPUT_SIZE": "32", "MEMORY_SIZE": "2", "MAX_N_SEGMENTS": "2",
           "ITERS": "8", "TBS": "4", "BS": "2", "LR": "3e-3", "MODEL_PATH": str(run_folder)}
    model_and_data = ["--model_cfg", str(tmp_path / "tiny_gpt2.json"), "--tokenizer", str(tmp_path / "tokenizer"),
                      "--text_files", *write_documents(tmp_path, 4, seed=0),
                      "--valid_text_files", *write_documents(tmp_path, 1, seed=1), "--num_valid_samples", "8"]
    command = [str(RMT_SCRIPT), "--valid_interval", "4", *model_and_data]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]

    loss = scalar_series(run_folder, "last_block_loss/iterations/valid")
    ppl = scalar_series(run_folder, "last_block_ppl/iterations/valid")
    assert loss is not None and ppl is not None and len(loss) == 2
    assert loss[-1] < loss[0] < math.log(SMALL_VOCAB_GPT2["vocab_size"]) + 1
    assert ppl[-1] == pytest.approx(math.exp(loss[-1]), rel=1e-4)
    assert scalar_series(run_folder, "seg1_loss/iterations/valid") is not None
    assert "model_state_dict" in load_checkpoint(run_folder / "model_best.pth")
    results = json.loads((run_folder / "results.json").read_text())
    assert results["validation"]["last_block_loss"] == pytest.approx(min(loss), rel=1e-4)

    # --model_cpt, as the curriculum chains stages: a fresh wrapper loads the best checkpoint and scores the same
    evaluated = main(["--validate_only", "--model_cpt", str(run_folder), "--model_path", str(tmp_path / "eval"),
                      "--input_size", "32", "--num_mem_tokens", "2", "--max_n_segments", "2", "--batch_size", "2",
                      *model_and_data])
    assert evaluated["validation"]["last_block_loss"] == pytest.approx(results["validation"]["last_block_loss"])
    assert (tmp_path / "eval" / "results.json").is_file()

    code, message = run_main(["--validate_only", "--model_cpt", str(run_folder), "--input_size", "32",
                              "--num_mem_tokens", "0", *model_and_data], capsys)
    assert code == 2 and message[-1].startswith("error: ") and "does not fit this model" in message[-1]

    other_run = tmp_path / "other"  # a validate-only run never writes over another run
    other_run.mkdir()
    (other_run / "model_1.pth").write_bytes(b"a checkpoint")
    code, message = run_main(["--validate_only", "--model_cpt", str(run_folder), "--model_path", str(other_run),
                              "--input_size", "32", "--num_mem_tokens", "2", *model_and_data], capsys)
    assert code == 2 and "model_path holds another run (model_1.pth)" in message[-1], message
    assert sorted(path.name for path in other_run.iterdir()) == ["model_1.pth"]


def tiny_run_inputs(folder):
    """Flags naming a tiny GPT-2 config, a word tokenizer and text files written to folder."""
    (folder / "tiny_gpt2.json").write_text(json.dumps(SMALL_VOCAB_GPT2))
    save_word_tokenizer(folder / "tokenizer", WORDS, SPECIAL_TOKENS)
    return ["--model_cfg", str(folder / "tiny_gpt2.json"), "--tokenizer", str(folder / "tokenizer"),
            "--text_files", *write_documents(folder, 3, seed=0),
            "--valid_text_files", *write_documents(folder, 2, seed=1),
            "--test_text_files", *write_documents(folder, 2, seed=2),
            "--input_size", "32", "--num_mem_tokens", "2", "--max_n_segments", "3", "--batch_size", "2"]


def test_resume_with_other_settings_is_refused_listing_them(tmp_path, capsys):
    model_and_data = tiny_run_inputs(tmp_path) + ["--num_valid_samples", "2"]
    run_folder = tmp_path / "run"
    main([*model_and_data, "--iters", "2", "--lr", "3e-3", "--model_path", str(run_folder)])
    before = {path.name: path.read_bytes() for path in run_folder.iterdir() if path.is_file()}
    code, message = run_main([*model_and_data, "--iters", "4", "--lr", "0.01", "--max_n_segments", "2",
                              "--model_path", str(run_folder), "--resume"], capsys)
    assert code == 2 and len(message) == 1 and "changes the settings that define the run" in message[0], message
    assert "lr 0.003 -> 0.01" in message[0] and "max_n_segments 3 -> 2" in message[0]
    assert "iters 2 -> 4" not in message[0]  # extending a run is allowed
    assert {path.name: path.read_bytes() for path in run_folder.iterdir() if path.is_file()} == before


@pytest.mark.slow
def test_two_processes_evaluate_an_odd_validation_set_exactly_as_one(tmp_path):
    # 7 samples: shards of 3 and 4, so padding a shard (as DistributedSampler does) would count a sample twice
    model_and_data = tiny_run_inputs(tmp_path) + ["--num_valid_samples", "7"]
    main([*model_and_data, "--iters", "2", "--lr", "3e-3", "--save_best", "--model_path", str(tmp_path / "run")])
    evaluate = [*model_and_data, "--validate_only", "--model_cpt", str(tmp_path / "run")]
    one = main([*evaluate, "--model_path", str(tmp_path / "one")])
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(REPO_ROOT / "run_finetuning_arxiv_rmt.py"),
               *evaluate, "--model_path", str(tmp_path / "two")]
    finished = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for split in ("validation", "test"):
        # `loss` is a mean of batch means, which depends on how samples fall into batches; the others are
        # token-weighted sums over samples
        per_token = {name: value for name, value in one[split].items() if name != "loss"}
        assert per_token == {name: two[split][name] for name in per_token}
        assert {"last_block_loss", "seg2_loss"} <= set(per_token)
