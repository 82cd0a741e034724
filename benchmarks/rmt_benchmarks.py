"""CPU benchmarks of the memory wrappers (issues 3 and 13; docs/design.md, memory wrappers).

- overhead: RMT forward over 16 segments vs 16 bare backbone calls on the same segment tensors (no grad);
- memory: peak RSS of no-grad inference at 8 ... 256 segments, one subprocess per setting;
- training: peak RSS and time per segment of forward + backward with full BPTT at 1, 2, 4, 8 segments;
- checkpointing: side by side, full BPTT vs `segment_checkpointing=True`, peak RSS and time per segment of one
  training step at 1 ... 32 segments, for the encoder and for a GPT-2-small-size decoder; one subprocess per
  setting and repeat, repeats interleaved (full, checkpointed, full, ...), median times. The checkpointed workers
  run under the allocator the launchers use with segment checkpointing (tcmalloc, `--malloc_preload`;
  docs/performance.md, "Memory-bounded BPTT (segment checkpointing)"), the full-BPTT workers under glibc's default
  malloc.

The encoder backbone is the offline MiniLM config (6 layers, hidden 384), the decoder a GPT-2 small config (12
layers, hidden 768, vocabulary 50257), both with random weights: speed and memory do not depend on the weights.
Usage: python benchmarks/rmt_benchmarks.py [--which all|overhead|memory|training|checkpointing]
"""
import argparse
import ctypes.util
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from lm_experiments_tools.malloc import tune_malloc_for_segment_checkpointing

INPUT_SIZE = 512
NUM_MEM_TOKENS = 10
FIRST_CONTENT_ID = 1000  # random tokens from here on avoid [CLS]/[SEP]/[PAD] and [unused] ids
DECODER_MEM_TOKENS = 2  # the paper's ArXiv setting; its segment is decoder_input_size - 2 * 2 tokens
MODELS = ("encoder", "decoder")
# the allocator the launchers preload with SEGMENT_CHECKPOINTING=1 (scripts/batch_setup.sh): glibc's malloc fragments
# its heap under the recompute-then-free pattern of segment checkpointing, so that peak RSS grows with the segments
TCMALLOC = ctypes.util.find_library("tcmalloc_minimal") or ""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", choices=["all", "overhead", "memory", "training", "checkpointing"], default="all",
                        help="which benchmark to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the overhead benchmark (default: 5)")
    parser.add_argument("--memory_segments", type=int, nargs="+", default=[8, 32, 256],
                        help="segment counts of the inference-memory benchmark (default: 8 32 256)")
    parser.add_argument("--training_segments", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="segment counts of the training benchmark (default: 1 2 4 8)")
    parser.add_argument("--checkpointing_segments", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                        help="segment counts of the checkpointing benchmark (default: 1 2 4 8 16 32)")
    parser.add_argument("--checkpointing_models", choices=MODELS, nargs="+", default=list(MODELS),
                        help="wrappers of the checkpointing benchmark (default: encoder decoder)")
    parser.add_argument("--checkpointing_repeats", type=int, default=2,
                        help="interleaved repeats of each setting of the checkpointing benchmark (default: 2)")
    parser.add_argument("--full_bptt_max_segments", type=int, default=32,
                        help="largest segment count of the full-BPTT baseline, to stay within the machine's memory; "
                             "larger counts run with checkpointing only (default: 32)")
    parser.add_argument("--malloc_preload", default=TCMALLOC,
                        help="allocator library LD_PRELOADed into the segment-checkpointing workers, as the launchers "
                             "do; empty: glibc's malloc (default: tcmalloc where installed, here "
                             f"{TCMALLOC or 'not installed'!r})")
    parser.add_argument("--decoder_input_size", type=int, default=128,
                        help="decoder tokens per forward pass, 2 memory tokens read and written included (default: "
                             "128, the paper's small ArXiv setting)")
    parser.add_argument("--worker", choices=["inference", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--n_segments", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, default="encoder", help=argparse.SUPPRESS)
    parser.add_argument("--segment_checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no_malloc_tuning", action="store_true",
                        help="checkpointed workers under glibc's malloc keep its defaults instead of the settings the "
                             "entry scripts apply (lm_experiments_tools.malloc), to show what they change")
    args = parser.parse_args(argv)
    counts = args.memory_segments + args.training_segments + args.checkpointing_segments
    if min(args.threads, args.repeats, args.checkpointing_repeats, args.full_bptt_max_segments, *counts) < 1:
        parser.error("--threads, repeats and segment counts must be >= 1")
    if args.decoder_input_size <= 2 * DECODER_MEM_TOKENS:
        parser.error(f"--decoder_input_size must exceed {2 * DECODER_MEM_TOKENS} (the memory tokens)")
    return args


def process_memory_mib(field):
    """A memory field of /proc/self/status in MiB: VmRSS (resident now) or VmHWM (peak resident)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is that of the measured step only."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def build_wrapper(max_n_segments, segment_checkpointing=False):
    """RMT encoder (input 512, 10 memory tokens) around a randomly initialised MiniLM-size BERT classifier."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    from modeling_rmt import RMTEncoderForSequenceClassification
    from rmt_experiments.offline_model import offline_model_path

    path = offline_model_path()
    config = AutoConfig.from_pretrained(path, num_labels=6)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return RMTEncoderForSequenceClassification(model, NUM_MEM_TOKENS, tokenizer, INPUT_SIZE, max_n_segments,
                                               segment_checkpointing=segment_checkpointing)


def build_decoder(max_n_segments, input_size, segment_checkpointing=False):
    """RMT decoder (2 memory tokens) around a randomly initialised GPT-2 small (12 x 768, vocabulary 50257)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_rmt import MemoryCell, MemoryConfig, RecurrentWrapper

    torch.manual_seed(0)
    memory = MemoryConfig(layout="decoder", num_mem_tokens=DECODER_MEM_TOKENS, input_size=input_size,
                          max_n_segments=max_n_segments, segment_checkpointing=segment_checkpointing)
    return RecurrentWrapper(MemoryCell(GPT2LMHeadModel(GPT2Config()), memory_config=memory))


def training_step(args, n_segments):
    """A function that runs one forward + backward step over `n_segments` full segments (batch 1)."""
    if args.model == "decoder":
        wrapper = build_decoder(n_segments, args.decoder_input_size, args.segment_checkpointing).train()
        generator = torch.Generator().manual_seed(n_segments)
        vocab_size = wrapper.memory_cell.model.config.vocab_size

        def step(count):
            input_ids = torch.randint(vocab_size, (1, count * wrapper.segment_size), generator=generator)
            # the Trainer needs only the loss: no (B, T, V) logits kept across segments
            wrapper(input_ids=input_ids, labels=input_ids, return_logits=False).loss.backward()
    else:
        wrapper = build_wrapper(n_segments, args.segment_checkpointing).train()

        def step(count):
            wrapper(random_input(wrapper, count), labels=torch.zeros(1, dtype=torch.long)).loss.backward()
    return step


def random_input(wrapper, n_segments, batch_size=1):
    """(B, n_segments * segment_size) random content tokens: exactly n_segments full segments."""
    generator = torch.Generator().manual_seed(n_segments)
    vocab_size = wrapper.mem_token_ids[0].item()  # the memory ids follow the vocabulary
    shape = (batch_size, n_segments * wrapper.segment_size)
    return torch.randint(FIRST_CONTENT_ID, vocab_size, shape, generator=generator)


def bare_segments(wrapper, input_ids):
    """The segments the wrapper feeds the backbone, as (B, 512) input ids: [CLS] mem [SEP] tokens [SEP]."""
    batch_size = len(input_ids)
    prefix = wrapper.segment_prefix.expand(batch_size, -1)
    closing = torch.full((batch_size, 1), wrapper.sep_token_id)
    return [torch.cat([prefix, chunk, closing], dim=1) for chunk in input_ids.split(wrapper.segment_size, dim=1)]


def loaded_allocator():
    """The LD_PRELOADed library if it is mapped into this process, else 'glibc malloc'."""
    preload = os.environ.get("LD_PRELOAD", "")
    with open("/proc/self/maps") as maps:
        mapped = preload and os.path.basename(preload) in maps.read()
    return preload if mapped else "glibc malloc"


def time_call(function):
    """(wall seconds, CPU seconds of this process) of one call; CPU time is less disturbed by other jobs."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def run_overhead(args):
    """Median wall time of RMT over 16 segments vs 16 bare backbone calls, runs interleaved."""
    n_segments = 16
    wrapper = build_wrapper(n_segments).eval()
    input_ids = random_input(wrapper, n_segments)
    segments = bare_segments(wrapper, input_ids)
    mask = torch.ones_like(segments[0])

    def rmt():
        wrapper(input_ids)

    def bare():
        for segment in segments:
            wrapper.model(input_ids=segment, attention_mask=mask)

    with torch.no_grad():
        rmt(), bare()  # warm-up
        times = {"RMT forward": [], "16 bare backbone calls": []}
        for _ in range(args.repeats):
            for name, function in zip(times, (rmt, bare)):
                times[name].append(time_call(function))
    print(f"\n## Wrapper overhead: 16 segments x 512, batch 1, no grad, median of {args.repeats} interleaved runs")
    print("| run | median wall s | median CPU s | CPU s of each run |\n|---|---|---|---|")
    medians = {}
    for name, runs in times.items():
        walls, cpus = zip(*runs)
        medians[name] = statistics.median(cpus)
        print(f"| {name} | {statistics.median(walls):.3f} | {medians[name]:.3f} | "
              f"{', '.join(f'{t:.3f}' for t in cpus)} |")
    ratio = medians["RMT forward"] / medians["16 bare backbone calls"]
    print(f"RMT / bare (median CPU time) = {ratio:.3f} (target <= 1.05)")


def worker(args):
    """Measure one setting in this process and print one JSON line."""
    torch.set_num_threads(args.threads)
    tuned = args.segment_checkpointing and not args.no_malloc_tuning and tune_malloc_for_segment_checkpointing()
    if args.worker == "inference":
        wrapper = build_wrapper(args.n_segments).eval()
        input_ids = random_input(wrapper, args.n_segments)

        def step(count):
            with torch.no_grad():
                wrapper(input_ids, labels=torch.zeros(1, dtype=torch.long))
    else:
        step = training_step(args, args.n_segments)
    if args.warmup:
        step(1)  # first-call costs (thread pools, allocator growth) out of the measured step
    reset_peak_rss()
    rss_before = process_memory_mib("VmRSS")
    seconds, cpu_seconds = time_call(lambda: step(args.n_segments))
    print(json.dumps({"n_segments": args.n_segments, "peak_rss_mib": process_memory_mib("VmHWM"),
                      "setup_rss_mib": rss_before, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "allocator": loaded_allocator(), "glibc_tuned": tuned}))


def measure_in_subprocess(kind, n_segments, threads, extra=(), malloc_preload=""):
    command = [sys.executable, __file__, "--worker", kind, "--n_segments", str(n_segments), "--threads", str(threads),
               *extra]
    env = {**os.environ, "LD_PRELOAD": malloc_preload} if malloc_preload else None
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {' '.join(command[2:])} failed:\n{result.stderr[-2000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    if row["allocator"] != (malloc_preload or "glibc malloc"):
        raise RuntimeError(f"benchmark worker ran under {row['allocator']}, expected {malloc_preload!r}")
    return row


def measure_table(kind, segment_counts, threads, title):
    """Measure each segment count in its own subprocess and print one table row per count."""
    rows = [measure_in_subprocess(kind, n, threads) for n in segment_counts]
    print(f"\n## {title}, batch 1, one subprocess per setting; peak RSS = VmHWM during the measured step")
    print("| segments | tokens | peak RSS MiB | RSS before MiB | growth MiB | growth per segment MiB | s/segment |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        n, growth = row["n_segments"], row["peak_rss_mib"] - row["setup_rss_mib"]
        print(f"| {n} | {n * (INPUT_SIZE - NUM_MEM_TOKENS - 3)} | {row['peak_rss_mib']:.0f} | "
              f"{row['setup_rss_mib']:.0f} | {growth:.0f} | {growth / n:.1f} | {row['seconds'] / n:.3f} |")
    return rows


def run_memory(args):
    rows = measure_table("inference", args.memory_segments, args.threads, "Inference memory: no grad")
    first, last = rows[0], rows[-1]
    print(f"peak RSS at {last['n_segments']} / at {first['n_segments']} segments = "
          f"{last['peak_rss_mib'] / first['peak_rss_mib']:.3f} (target <= 1.10)")


def run_training(args):
    measure_table("training", args.training_segments, args.threads, "Training: forward + backward, full BPTT")


def available_memory_mib():
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:")) / 1024


def full_bptt_fits(runs, n):
    """Whether full BPTT at n segments is expected to fit in 80% of the available memory, extrapolating linearly
    from the two largest full-BPTT runs so far (True while there are fewer than two)."""
    done = sorted((count, max(r["peak_rss_mib"] for r in rows)) for (ckpt, count), rows in runs.items() if not ckpt)
    if len(done) < 2:
        return True
    (n0, peak0), (n1, peak1) = done[-2:]
    expected = peak1 + (n - n1) * (peak1 - peak0) / (n1 - n0)
    return expected < 0.8 * available_memory_mib()


def machine_load():
    """'load average 1 / 5 / 15 min, available memory' of this machine, for the record beside timings."""
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"load average {load}, {available_memory_mib() / 1024:.1f} GiB available"


def checkpointing_runs(args, model):
    """{(segment_checkpointing, n): [worker results]}, repeats interleaved: each round runs every setting once."""
    runs = {}
    for repeat in range(args.checkpointing_repeats):
        for n in args.checkpointing_segments:
            for checkpointed in (False, True):
                if not checkpointed and (n > args.full_bptt_max_segments or not full_bptt_fits(runs, n)):
                    print(f"  [{model} n={n} full BPTT] skipped: above --full_bptt_max_segments or expected not to "
                          f"fit in memory; {machine_load()}", flush=True)
                    continue
                extra = ["--model", model, "--decoder_input_size", str(args.decoder_input_size), "--warmup"]
                extra += ["--segment_checkpointing"] if checkpointed else []
                extra += ["--no_malloc_tuning"] if args.no_malloc_tuning else []
                preload = args.malloc_preload if checkpointed else ""
                row = measure_in_subprocess("training", n, args.threads, extra, malloc_preload=preload)
                runs.setdefault((checkpointed, n), []).append(row)
                print(f"  [{model} n={n} checkpointing={checkpointed} repeat {repeat + 1}] "
                      f"peak {row['peak_rss_mib']:.0f} MiB, {row['cpu_seconds'] / n:.3f} CPU s/segment "
                      f"({row['seconds'] / n:.3f} wall); {machine_load()}",
                      flush=True)
    return runs


def print_checkpointing_table(args, model, runs):
    """One row per segment count: peak RSS and median s/segment of both, with the checkpointing/full ratios."""
    def summary(checkpointed, n):
        rows = runs.get((checkpointed, n))
        if not rows:
            return None
        return max(r["peak_rss_mib"] for r in rows), statistics.median(r["cpu_seconds"] / n for r in rows)

    tokens = INPUT_SIZE - NUM_MEM_TOKENS - 3 if model == "encoder" else args.decoder_input_size - 2 * DECODER_MEM_TOKENS
    allocator = args.malloc_preload or "glibc malloc"
    print(f"\n## Training step, {model}, batch 1, {tokens} tokens per segment: full BPTT (glibc malloc) vs "
          f"segment_checkpointing ({allocator}) (peak RSS = VmHWM, max over {args.checkpointing_repeats} interleaved "
          "repeats; s/segment = median CPU seconds of the process, less disturbed by other jobs than wall time)")
    print("| segments | full peak MiB | ckpt peak MiB | ckpt / full peak | ckpt peak / ckpt 1-segment peak | "
          "full s/seg | ckpt s/seg | ckpt / full time |\n|---|---|---|---|---|---|---|---|")
    first = summary(True, args.checkpointing_segments[0])
    for n in args.checkpointing_segments:
        full, ckpt = summary(False, n), summary(True, n)
        cells = [f"{full[0]:.0f}" if full else "not run (memory)", f"{ckpt[0]:.0f}",
                 f"{ckpt[0] / full[0]:.2f}" if full else "-", f"{ckpt[0] / first[0]:.2f}",
                 f"{full[1]:.3f}" if full else "-", f"{ckpt[1]:.3f}", f"{ckpt[1] / full[1]:.2f}" if full else "-"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    last = args.checkpointing_segments[-1]
    print(f"{model}: checkpointed peak at {last} / at {args.checkpointing_segments[0]} segments = "
          f"{summary(True, last)[0] / first[0]:.2f} (target <= 1.5)", flush=True)


def run_checkpointing(args):
    print(f"\nmachine before the checkpointing benchmark: {machine_load()}")
    for model in args.checkpointing_models:
        print_checkpointing_table(args, model, checkpointing_runs(args, model))
    print(f"machine after: {machine_load()}")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), MiniLM-size BERT (6 x 384), input 512, "
          f"{NUM_MEM_TOKENS} memory tokens")
    if args.which in ("all", "overhead"):
        run_overhead(args)
    if args.which in ("all", "memory"):
        run_memory(args)
    if args.which in ("all", "training"):
        run_training(args)
    if args.which in ("all", "checkpointing"):
        run_checkpointing(args)


if __name__ == "__main__":
    main()
