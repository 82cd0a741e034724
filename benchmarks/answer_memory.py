"""Peak memory of `python -m babilong.answer` against the length of the text it reads.

For each wrapper and memory type, a model folder of random weights is saved (as `save_pretrained` writes it; no
training, no export): the encoder around a BERT classifier of the offline MiniLM config (6 layers, hidden 384), the
decoder around the offline default's small GPT-2 (4 layers, hidden 256), each with 10 memory tokens, or 10 write
tokens and an associative memory of d_mem 64. Contexts of about 8 and 128 segments (a fact hidden in background
sentences) are answered by `python -m babilong.answer FOLDER --context FILE --question ...`, each in a fresh
process that reports its own peak RSS (VmHWM of /proc/self/status as it ends; Linux). The table gives that peak,
its ratio to the shortest context's and the tokens per second from answer's own report.

    python benchmarks/answer_memory.py                          # 8 and 128 segments, about 3 minutes on 2 cores
    python benchmarks/answer_memory.py --segments 2,8 --tiny    # tiny backbones, to check that it runs
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_MEM_TOKENS = 10
D_MEM = 64
LABELS = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
FACT = "Mary went to the kitchen."
QUESTION = "Where is Mary?"
SETTINGS = [(wrapper, memory) for wrapper in ("encoder", "decoder") for memory in ("tokens", "associative")]
# --tiny: backbones of a few thousand weights besides the embeddings, for the test of this script
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
TINY_GPT2 = {"n_layer": 1, "n_embd": 32, "n_head": 2}
# runs `python -m babilong.answer ARGS...` and writes the process's peak RSS (VmHWM, KiB) to REPORT as it ends.
# Not ru_maxrss: Linux carries it over exec from the forked parent, so a child reports at least the parent's RSS
PEAK_RSS_REPORTER = """
import runpy, sys
report, sys.argv = sys.argv[1], ["babilong.answer", *sys.argv[2:]]
try:
    runpy.run_module("babilong.answer", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status, open(report, "w") as file:
        file.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""
SPEED_LINE = re.compile(r"read ([0-9,]+) tokens in (\d+) segments in [0-9.]+ s: ([0-9,]+) tokens/s")


def build_model(wrapper: str, memory_type: str, tokenizer, input_size: int, tiny: bool):
    """The Hugging Face model (modeling_rmt.RMTForSequenceClassification / RMTForCausalLM) of random weights."""
    from transformers import AutoConfig, BertForSequenceClassification, GPT2LMHeadModel

    import modeling_rmt
    from modeling_rmt.decoder import memory_positions
    from rmt_experiments.offline_model import offline_model_path, small_gpt2_config

    torch.manual_seed(0)
    options = {"memory_type": memory_type, "d_mem": D_MEM}
    if wrapper == "encoder":
        config = AutoConfig.from_pretrained(offline_model_path(), num_labels=len(LABELS), **(TINY_BERT if tiny else {}))
        rmt = modeling_rmt.RMTEncoderForSequenceClassification(BertForSequenceClassification(config), NUM_MEM_TOKENS,
                                                               tokenizer, input_size, 1, **options)
        model_cls = modeling_rmt.RMTForSequenceClassification
    else:
        cell = modeling_rmt.MemoryCell(GPT2LMHeadModel(small_gpt2_config(tokenizer, **(TINY_GPT2 if tiny else {}))),
                                       NUM_MEM_TOKENS, **options)
        rmt = modeling_rmt.RecurrentWrapper(cell, input_size - memory_positions(NUM_MEM_TOKENS, memory_type), 1)
        model_cls = modeling_rmt.RMTForCausalLM
    return model_cls.from_wrapper(rmt, tokenizer, task="qa1", task_labels=LABELS)


def write_context(path: Path, tokenizer, n_tokens: int) -> None:
    """A text of at most n_tokens tokens, short of it by less than a sentence: background sentences with the fact
    in the middle."""
    def length(text):
        return len(tokenizer.encode(text, add_special_tokens=False))

    sentences, total = [], length(FACT)
    while True:
        sentence = f"Sentence {len(sentences)} of the background says nothing about anyone in particular."
        if total + length(sentence) > n_tokens:
            break
        sentences.append(sentence)
        total += length(sentence)
    sentences.insert(len(sentences) // 2, FACT)
    path.write_text(" ".join(sentences), encoding="utf-8")


def prompt_extra_tokens(tokenizer, wrapper: str) -> int:
    """Tokens that answer adds to the context: the question, and the GEN marker for a decoder."""
    from babilong.dataset import GEN_TEXT
    pieces = (QUESTION,) if wrapper == "encoder" else (QUESTION, GEN_TEXT)
    return sum(len(tokenizer.encode(piece, add_special_tokens=False)) for piece in pieces)


def answer_in_fresh_process(folder: Path, context: Path, threads: int) -> dict:
    """Peak RSS (MiB), tokens, segments and tokens per second of one `python -m babilong.answer` process."""
    report = folder.parent / f"{context.stem}.peak_rss"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", PEAK_RSS_REPORTER, str(report), str(folder), "--context", str(context),
               "--question", QUESTION, "--no_progress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"babilong.answer {folder} --context {context} failed:\n{result.stderr[-2000:]}")
    n_tokens, n_segments, speed = (int(value.replace(",", "")) for value in SPEED_LINE.search(result.stdout).groups())
    return {"peak_rss_mib": int(report.read_text()) / 1024, "n_tokens": n_tokens, "segments": n_segments,
            "tokens_per_second": speed}


def measure(work_dir, segments=(8, 128), settings=SETTINGS, input_size=512, threads=1, tiny=False) -> list:
    """One row per (wrapper, memory type, segments): the answer process's peak RSS, its ratio to that at the
    fewest segments of the same setting, and its speed."""
    from rmt_experiments.offline_model import load_tokenizer
    tokenizer = load_tokenizer()
    rows = []
    for wrapper, memory_type in settings:
        folder = Path(work_dir) / f"{wrapper}-{memory_type}" / "model"
        model = build_model(wrapper, memory_type, tokenizer, input_size, tiny)
        model.save_pretrained(folder)
        extra = prompt_extra_tokens(tokenizer, wrapper)
        shortest = None
        for n_segments in sorted(segments):
            context = folder.parent / f"context_{n_segments}.txt"
            write_context(context, tokenizer, n_segments * model.segment_size - extra)
            row = {"wrapper": wrapper, "memory_type": memory_type,
                   **answer_in_fresh_process(folder, context, threads)}
            shortest = shortest or row["peak_rss_mib"]
            rows.append({**row, "ratio": row["peak_rss_mib"] / shortest})
            print(f"measured {wrapper} {memory_type} {row['segments']} segments", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list) -> None:
    print("| wrapper | memory type | segments | tokens | peak RSS MiB | ratio to the shortest | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['wrapper']} | {row['memory_type']} | {row['segments']} | {row['n_tokens']:,} | "
              f"{row['peak_rss_mib']:.1f} | {row['ratio']:.3f} | {row['tokens_per_second']:,.0f} |")


def parse_list(value: str, convert=str) -> list:
    return [convert(item) for item in value.split(",") if item]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", default="8,128", help="comma-separated context lengths in segments")
    parser.add_argument("--wrappers", default="encoder,decoder", help="comma-separated: encoder, decoder")
    parser.add_argument("--memory_types", default="tokens,associative", help="comma-separated: tokens, associative")
    parser.add_argument("--input_size", type=int, default=512, help="ids per backbone call (default: 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each answer process (default: 1)")
    parser.add_argument("--tiny", action="store_true", help="tiny backbones, to check that the script runs")
    parser.add_argument("--work_dir", default=None, help="folder for the model folders and contexts (default: a "
                                                         "temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    args.segments = parse_list(args.segments, int)
    for flag, known in (("wrappers", ("encoder", "decoder")), ("memory_types", ("tokens", "associative"))):
        if not set(parse_list(getattr(args, flag))) <= set(known):
            parser.error(f"--{flag} {getattr(args, flag)!r}: expected a comma-separated list of {', '.join(known)}")
    if len(args.segments) < 1 or min(args.segments) < 1:
        parser.error(f"--segments {args.segments}: expected positive integers")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: expected a positive integer")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = [(w, m) for w in parse_list(args.wrappers) for m in parse_list(args.memory_types)]
    with tempfile.TemporaryDirectory() as scratch:
        rows = measure(args.work_dir or scratch, args.segments, settings, args.input_size, args.threads, args.tiny)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
