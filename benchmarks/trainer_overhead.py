"""Per-step overhead of `Trainer` against a bare PyTorch loop on the same model and batches.

Two copies of one small transformer encoder LM train with AdamW on the same batches: one by a bare
forward/backward/step loop, one by the Trainer. The two run interleaved step by step: the Trainer's "dataloader"
runs one timed bare step before it hands over each batch, so machine load hits both loops alike. Trainer time per
step = (wall time of train() - time of the bare steps inside it) / steps. The Trainer logs every `--log_interval`
steps to tensorboard in a temporary model_path, as a real run does. Overhead = Trainer time / bare time - 1,
median over rounds.

    python benchmarks/trainer_overhead.py --log_interval 10
"""
import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch import nn

from lm_experiments_tools import Trainer, TrainerArgs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_interval", type=int, default=10, help="Trainer log interval in steps")
    parser.add_argument("--steps_per_round", type=int, default=100, help="Steps of each loop per round")
    parser.add_argument("--rounds", type=int, default=5, help="Measured rounds")
    parser.add_argument("--batch_size", type=int, default=4, help="Samples per step")
    parser.add_argument("--seq_len", type=int, default=64, help="Tokens per sample")
    parser.add_argument("--hidden_size", type=int, default=128, help="Model width")
    parser.add_argument("--num_layers", type=int, default=2, help="Transformer encoder layers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives stable timings)")
    return parser.parse_args()


class TinyEncoderLM(nn.Module):
    """Token embeddings, a transformer encoder and a vocabulary head with a cross-entropy loss."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, nhead=4, dim_feedforward=4 * hidden_size, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, input_ids, labels):
        logits = self.head(self.encoder(self.embeddings(input_ids)))  # (batch, seq_len, vocab)
        return {"loss": nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())}


def bare_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    loss = model(**batch)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class BatchesWithBareSteps:
    """An iterable of batches for the Trainer that first runs (and times) one bare step per batch it yields."""

    def __init__(self, batches: list[dict], model: nn.Module, optimizer: torch.optim.Optimizer):
        self.batches, self.model, self.optimizer = batches, model, optimizer
        self.bare_seconds = 0.0

    def __iter__(self):
        for batch in self.batches:
            start = time.perf_counter()
            bare_step(self.model, self.optimizer, batch)
            self.bare_seconds += time.perf_counter() - start
            yield batch


def train_timed(trainer: Trainer, batches: BatchesWithBareSteps, steps: int) -> tuple[float, float]:
    """(bare seconds per step, Trainer seconds per step) over the next `steps` steps."""
    batches.bare_seconds = 0.0
    trainer.args.iters += steps
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    return batches.bare_seconds / steps, (wall - batches.bare_seconds) / steps


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab_size = 1000
    batch_list = [{"input_ids": torch.randint(0, vocab_size, (args.batch_size, args.seq_len)),
                   "labels": torch.randint(0, vocab_size, (args.batch_size, args.seq_len))}
                  for _ in range(args.steps_per_round)]
    bare_model = TinyEncoderLM(vocab_size, args.hidden_size, args.num_layers)
    trainer_model = copy.deepcopy(bare_model)
    batches = BatchesWithBareSteps(batch_list, bare_model, torch.optim.AdamW(bare_model.parameters(), lr=1e-4))
    with tempfile.TemporaryDirectory() as model_path:
        trainer_args = TrainerArgs(model_path=model_path, batch_size=args.batch_size, iters=0, lr=1e-4,
                                   log_interval=args.log_interval)
        trainer = Trainer(trainer_args, trainer_model, torch.optim.AdamW(trainer_model.parameters(), lr=1e-4),
                          batches, None)
        train_timed(trainer, batches, args.log_interval)  # warm-up: allocator, tensorboard writer
        timings = [train_timed(trainer, batches, args.steps_per_round) for _ in range(args.rounds)]
    bare = statistics.median(b for b, _ in timings)
    ratios = [t / b for b, t in timings]
    ratio = statistics.median(ratios)
    print(f"bare loop {1e3 * bare:.2f} ms/step | Trainer {1e3 * bare * ratio:.2f} ms/step | overhead "
          f"{100 * (ratio - 1):+.2f}% (median of {args.rounds} rounds of {args.steps_per_round} interleaved "
          f"steps, log_interval={args.log_interval}, {args.threads} thread(s))")
    print("per-round Trainer/bare ratios: " + " ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
