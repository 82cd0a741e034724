"""CPU benchmarks of the encoder memory wrapper on a MiniLM-size backbone (issue 3).

- overhead: RMT forward over 16 segments vs 16 bare backbone calls on the same segment tensors (no grad);
- memory: peak RSS of no-grad inference at 8 ... 256 segments, one subprocess per setting;
- training: peak RSS and time per segment of forward + backward with full BPTT at 1, 2, 4, 8 segments.

The backbone is the offline MiniLM config (6 layers, hidden 384) with random weights: speed and memory do not
depend on the weights. Usage: python benchmarks/rmt_benchmarks.py [--which all|overhead|memory|training]
"""
import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

import torch

INPUT_SIZE = 512
NUM_MEM_TOKENS = 10
FIRST_CONTENT_ID = 1000  # random tokens from here on avoid [CLS]/[SEP]/[PAD] and [unused] ids


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", choices=["all", "overhead", "memory", "training"], default="all",
                        help="which benchmark to run (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the overhead benchmark (default: 5)")
    parser.add_argument("--memory_segments", type=int, nargs="+", default=[8, 32, 256],
                        help="segment counts of the inference-memory benchmark (default: 8 32 256)")
    parser.add_argument("--training_segments", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="segment counts of the training benchmark (default: 1 2 4 8)")
    parser.add_argument("--worker", choices=["inference", "training"], help=argparse.SUPPRESS)
    parser.add_argument("--n_segments", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or min(args.memory_segments + args.training_segments) < 1:
        parser.error("--threads, --repeats and segment counts must be >= 1")
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


def build_wrapper(max_n_segments):
    """RMT encoder (input 512, 10 memory tokens) around a randomly initialised MiniLM-size BERT classifier."""
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    from lm_experiments_tools.offline_model import offline_model_path
    from modeling_rmt import RMTEncoderForSequenceClassification

    path = offline_model_path()
    config = AutoConfig.from_pretrained(path, num_labels=6)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return RMTEncoderForSequenceClassification(model, NUM_MEM_TOKENS, tokenizer, INPUT_SIZE, max_n_segments)


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
    wrapper = build_wrapper(args.n_segments)
    input_ids = random_input(wrapper, args.n_segments)
    labels = torch.zeros(1, dtype=torch.long)
    reset_peak_rss()
    rss_before = process_memory_mib("VmRSS")
    start = time.perf_counter()
    if args.worker == "inference":
        with torch.no_grad():
            wrapper.eval()(input_ids, labels=labels)
    else:
        wrapper.train()(input_ids, labels=labels).loss.backward()
    seconds = time.perf_counter() - start
    print(json.dumps({"n_segments": args.n_segments, "peak_rss_mib": process_memory_mib("VmHWM"),
                      "setup_rss_mib": rss_before, "seconds": seconds}))


def measure_in_subprocess(kind, n_segments, threads):
    command = [sys.executable, __file__, "--worker", kind, "--n_segments", str(n_segments), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


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


if __name__ == "__main__":
    main()
