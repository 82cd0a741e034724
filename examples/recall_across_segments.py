"""Both memories on the smallest task that needs one: recall a value across a segment boundary.

A tiny randomly initialised BERT reads two segments. The first opens with `--pairs` (key, value) token pairs, the
rest is filler; the second segment is filler that ends with one of the keys, and the label is that key's value
(one of 6). Only memory connects the two segments, so accuracy above 1/6 is what the memory carried.

    python examples/recall_across_segments.py --memory_type associative --steps 600
    python examples/recall_across_segments.py --memory_type tokens --steps 600

It prints the accuracy on fresh samples every `--eval_every` steps.
"""
import argparse
import time

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from rmt_experiments.offline_model import offline_model_path
from modeling_rmt import RMTEncoderForSequenceClassification
from modeling_rmt.associative import associative_parameters
from modeling_rmt.memory_config import MEMORY_TYPES

N_VALUES, N_KEYS = 6, 8
KEY_IDS, VALUE_IDS, FILLER_IDS = range(2000, 2000 + N_KEYS), range(3000, 3000 + N_VALUES), (4000, 5000)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory_type", choices=MEMORY_TYPES, default="associative")
    parser.add_argument("--pairs", type=int, default=1, help="(key, value) pairs in the first segment, 1..8")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--memory_lr_scale", type=float, default=1.0,
                        help="associative memory: its projections train at this multiple of --lr")
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.pairs <= N_KEYS:
        parser.error(f"--pairs {args.pairs}: expected 1..{N_KEYS}")
    return args


def make_batch(batch_size, segment_size, n_pairs):
    """(input ids (B, 2 * segment_size), labels (B,)): pairs at the start of segment 1, the query key last."""
    ids = torch.randint(*FILLER_IDS, (batch_size, 2 * segment_size))
    labels = torch.empty(batch_size, dtype=torch.long)
    for row in range(batch_size):
        keys = torch.tensor(KEY_IDS)[torch.randperm(N_KEYS)[:n_pairs]]
        values = torch.randint(0, N_VALUES, (n_pairs,))
        ids[row, 0:2 * n_pairs:2], ids[row, 1:2 * n_pairs:2] = keys, torch.tensor(VALUE_IDS)[values]
        asked = torch.randint(0, n_pairs, ()).item()
        ids[row, -1], labels[row] = keys[asked], values[asked]
    return ids, labels


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(offline_model_path())
    backbone = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, num_labels=N_VALUES))
    memory = {} if args.memory_type == "tokens" else {"memory_type": "associative", "d_mem": 16}
    model = RMTEncoderForSequenceClassification(backbone, num_mem_tokens=4, tokenizer=tokenizer, input_size=32,
                                                max_n_segments=2, **memory)
    own = {id(p) for p in associative_parameters(model)}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) not in own]},
        {"params": [p for p in model.parameters() if id(p) in own], "lr": args.lr * args.memory_lr_scale},
    ], lr=args.lr)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, labels = make_batch(32, model.segment_size, args.pairs)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            ids, labels = make_batch(256, model.segment_size, args.pairs)
            with torch.no_grad():
                accuracy = (model(ids).logits.argmax(-1) == labels).float().mean().item()
            print(f"{args.memory_type} pairs {args.pairs} step {step}: train loss {loss.item():.3f}, "
                  f"accuracy {100 * accuracy:.1f}% on 256 fresh samples ({time.perf_counter() - started:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
