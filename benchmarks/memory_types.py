"""Cost of the associative memory (ARMT) beside the memory tokens (RMT) and the bare backbone, in one run.

For each setting, time per segment and peak RSS of one step, each in its own subprocess (peak RSS = VmHWM over the
measured step), for three memories on the same random-weight backbone:
- bare: the wrapper with no memory tokens (independent segments, the backbone alone on each);
- tokens: 10 memory tokens carried as hidden states (the paper's RMT);
- associative: 10 write tokens and every layer's key-value memory, d_mem 64 (ARMT).

Encoder: the offline MiniLM config (6 layers, hidden 384), input 512, batch 1 and 16, 8 and 64 segments,
inference (no grad) and training (forward + backward, full BPTT; batch 16 over 2 segments, see GRID), plus the
inference-memory flatness check at 8 vs 256 segments. Decoder: the GPT-2 small config (12 layers, hidden 768), input 128. The targets: associative time per
segment at most 1.3x the memory tokens'; associative inference memory at 256 segments at most 1.1x that at 8.

    python benchmarks/memory_types.py                      # the whole grid (about 30 minutes on 2 cores)
    python benchmarks/memory_types.py --quick               # a small grid, to check that it runs
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from rmt_benchmarks import process_memory_mib, reset_peak_rss

INPUT_SIZE = 512
DECODER_INPUT_SIZE = 128
NUM_MEM_TOKENS = 10
D_MEM = 64
FIRST_CONTENT_ID = 1000  # random tokens from here on avoid [CLS]/[SEP]/[PAD] and [unused] ids
LAST_CONTENT_ID = 30000  # below MiniLM's vocabulary of 30522
MEMORIES = ("bare", "tokens", "associative")
# (model, mode, batch size, segments). Training at batch 16 keeps every segment's activations for full BPTT: at 8
# segments the step outgrew 24 GiB and was killed, so batch 16 trains over 2 segments here
GRID = [("encoder", "inference", batch, n) for batch in (1, 16) for n in (8, 64)]
GRID += [("encoder", "training", 1, 8), ("encoder", "training", 1, 64), ("encoder", "training", 16, 2)]
GRID += [("encoder", "inference", 1, 256), ("decoder", "inference", 1, 8), ("decoder", "inference", 1, 64),
         ("decoder", "training", 1, 8)]
QUICK_GRID = [("encoder", "inference", 1, 2), ("encoder", "training", 1, 2), ("encoder", "inference", 1, 4),
              ("decoder", "training", 1, 2)]


def memory_config(memory, layout, input_size, n_segments):
    """The MemoryConfig of a memory ('bare': no memory tokens)."""
    from modeling_rmt import MemoryConfig

    return MemoryConfig(layout=layout, num_mem_tokens=0 if memory == "bare" else NUM_MEM_TOKENS,
                        input_size=input_size, max_n_segments=n_segments,
                        memory_type="associative" if memory == "associative" else "tokens", d_mem=D_MEM)


def build_encoder(memory, n_segments):
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    from modeling_rmt import RMTEncoderForSequenceClassification
    from rmt_experiments.offline_model import offline_model_path

    path = offline_model_path()
    torch.manual_seed(0)
    model = BertForSequenceClassification(AutoConfig.from_pretrained(path, num_labels=6))
    return RMTEncoderForSequenceClassification(model, tokenizer=AutoTokenizer.from_pretrained(path),
                                               memory_config=memory_config(memory, "encoder", INPUT_SIZE, n_segments))


def build_decoder(memory, n_segments):
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_rmt import MemoryCell, RecurrentWrapper

    torch.manual_seed(0)
    config = memory_config(memory, "decoder", DECODER_INPUT_SIZE, n_segments)
    return RecurrentWrapper(MemoryCell(GPT2LMHeadModel(GPT2Config()), memory_config=config))


def step_function(model, memory, mode, batch_size, n_segments):
    """A function running one inference (no grad) or training (forward + backward) step over full segments."""
    build = build_encoder if model == "encoder" else build_decoder
    wrapper = build(memory, n_segments).train(mode == "training")
    generator = torch.Generator().manual_seed(n_segments)
    if model == "encoder":
        input_ids = torch.randint(FIRST_CONTENT_ID, LAST_CONTENT_ID, (batch_size, n_segments * wrapper.segment_size),
                                  generator=generator)
        inputs = {"input_ids": input_ids, "labels": torch.zeros(batch_size, dtype=torch.long)}
    else:
        input_ids = torch.randint(50257, (batch_size, n_segments * wrapper.segment_size), generator=generator)
        inputs = {"input_ids": input_ids, "labels": input_ids, "return_logits": False}

    def step():
        if mode == "training":
            wrapper(**inputs).loss.backward()
        else:
            with torch.no_grad():
                wrapper(**inputs)
    return step


def worker(args):
    """Measure one setting in this process; print one JSON line."""
    torch.set_num_threads(args.threads)
    step = step_function(args.model, args.memory, args.mode, args.batch_size, args.n_segments)
    reset_peak_rss()
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds_per_segment": seconds / args.n_segments, "peak_rss_mib": process_memory_mib("VmHWM")}))


def measure(setting, memory, threads):
    model, mode, batch_size, n_segments = setting
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--memory", memory,
               "--mode", mode, "--batch_size", str(batch_size), "--n_segments", str(n_segments),
               "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"worker {' '.join(command[2:])} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows):
    print("| model | mode | batch | segments | s/segment bare / tokens / associative | associative / tokens time "
          "| peak RSS MiB bare / tokens / associative | associative / tokens memory |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, mode, batch_size, n_segments), row in rows.items():
        times = " / ".join(f"{row[m]['seconds_per_segment']:.3f}" for m in MEMORIES)
        memory = " / ".join(f"{row[m]['peak_rss_mib']:.0f}" for m in MEMORIES)
        time_ratio = row["associative"]["seconds_per_segment"] / row["tokens"]["seconds_per_segment"]
        memory_ratio = row["associative"]["peak_rss_mib"] / row["tokens"]["peak_rss_mib"]
        print(f"| {model} | {mode} | {batch_size} | {n_segments} | {times} | {time_ratio:.2f} | {memory} | "
              f"{memory_ratio:.2f} |")


def print_flatness(rows):
    inference = sorted((n, row) for (model, mode, batch_size, n), row in rows.items()
                       if (model, mode, batch_size) == ("encoder", "inference", 1))
    if len(inference) >= 2:
        (short, first), (long, last) = inference[0], inference[-1]
        for memory in MEMORIES:
            ratio = last[memory]["peak_rss_mib"] / first[memory]["peak_rss_mib"]
            print(f"{memory}: encoder inference peak RSS at {long} / at {short} segments = {ratio:.3f} "
                  "(target for associative <= 1.10)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small grid (2-4 segments), to check that it runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker (default: 2)")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=("encoder", "decoder"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", choices=MEMORIES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("inference", "training"), help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n_segments", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: expected a positive integer")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    rows = {}
    for setting in (QUICK_GRID if args.quick else GRID):
        rows[setting] = {memory: measure(setting, memory, args.threads) for memory in MEMORIES}
        print(f"measured {setting}: {json.dumps(rows[setting])}", file=sys.stderr, flush=True)
        if args.json:  # after every setting: a grid stopped halfway keeps what it measured
            with open(args.json, "w") as file:
                json.dump([{"setting": list(k), **v} for k, v in rows.items()], file, indent=1)
    print_table(rows)
    print_flatness(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
