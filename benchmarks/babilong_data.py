"""Time building one long BABILong sample from the tokenized background vs re-tokenizing text per sample.

    python benchmarks/babilong_data.py --input_seq_len 1000000

Ours: the background source is tokenized once (timed separately), then each sample is a token-span copy
plus fact insertion (`BABILongDataset.__getitem__`). Baseline (what the paper's code does): per sample,
take enough background text (the same split's sentences, repeated) and tokenize it, then cut it to length
and add the fact and question. Prints both per-sample times (median) and their ratio.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from babilong import BABILongDataset, background_sentences, load_background
from rmt_experiments.offline_model import load_tokenizer


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_seq_len", type=int, default=1_000_000, help="tokens per sample (default: 1M)")
    parser.add_argument("--task", default="memorize", help="task name (default: memorize)")
    parser.add_argument("--noise_dataset", default="default", help="background source (default: 'default')")
    parser.add_argument("--n_samples", type=int, default=10, help="samples timed for ours (default: 10)")
    parser.add_argument("--n_baseline", type=int, default=3, help="samples timed for the baseline (default: 3)")
    return parser.parse_args()


def time_calls(fn, n):
    """Median wall time of n calls of fn(i), in seconds."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def retokenizing_sample(dataset, text, index):
    """The baseline: tokenize the long background text for this sample, then cut and insert the task."""
    task_sample = dataset.task.draw(np.random.default_rng(index), index, dataset.split)
    background = dataset.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    facts = [dataset.tokenizer.encode(f, add_special_tokens=False) for f in task_sample.facts]
    question = dataset.tokenizer.encode(task_sample.question, add_special_tokens=False)
    n_background = dataset.input_seq_len - sum(map(len, facts)) - len(question)
    sample = sum(facts, []) + background[:n_background] + question
    assert len(sample) == dataset.input_seq_len, "baseline text too short"
    return torch.tensor(sample)


def main():
    args = parse_args()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()

    start = time.perf_counter()
    corpus = load_background(args.noise_dataset, "train", tokenizer)
    tokenize_once_s = time.perf_counter() - start
    dataset = BABILongDataset(args.task, corpus, tokenizer, args.input_seq_len)
    ours_s = time_calls(lambda i: dataset[i], args.n_samples)

    # enough repeated text for the requested length, with 10% to spare
    sentences = background_sentences(args.noise_dataset, "train")
    n_repeats = int(np.ceil(1.1 * args.input_seq_len / corpus.n_tokens))
    text = " ".join(sentences * n_repeats)
    baseline_s = time_calls(lambda i: retokenizing_sample(dataset, text, i), args.n_baseline)

    print(f"background {args.noise_dataset!r} train: {corpus.n_tokens:,} tokens, tokenized once in "
          f"{tokenize_once_s:.2f} s")
    print(f"ours (token spans): {ours_s:.4f} s per {args.input_seq_len:,}-token sample "
          f"(median of {args.n_samples})")
    print(f"baseline (re-tokenize {len(text) / 1e6:.1f} MB of text per sample): {baseline_s:.2f} s per sample "
          f"(median of {args.n_baseline})")
    print(f"speed-up: {baseline_s / ours_s:.0f}x")


if __name__ == "__main__":
    main()
