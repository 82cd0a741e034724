"""Minimal complete use of the lm_experiments_tools Trainer: a small randomly initialised Hugging Face BERT learns a
synthetic classification task offline, with an exact accuracy metric gathered over all processes.

Task: a sequence of random tokens; the label is 1 when the marker token appears in it, else 0.

    python examples/train_tiny_classifier.py --model_path runs/example/run_1
    torchrun --standalone --nproc_per_node 2 examples/train_tiny_classifier.py --model_path runs/example/ddp
    tensorboard --logdir runs/example
"""
import logging
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from transformers import BertConfig, BertForSequenceClassification, HfArgumentParser

from lm_experiments_tools import Trainer, TrainerArgs
from lm_experiments_tools.distributed import init_distributed
from lm_experiments_tools.run_config import prepare_run

logger = logging.getLogger(__name__)

MARKER_TOKEN = 1


@dataclass
class ExampleArgs:
    n_train: int = field(default=4000, metadata={"help": "Training samples"})
    n_valid: int = field(default=512, metadata={"help": "Validation samples (and as many test samples)"})
    vocab_size: int = field(default=32, metadata={"help": "Token ids are drawn from [2, vocab_size)"})
    seq_len: int = field(default=16, metadata={"help": "Tokens per sample"})


def make_dataset(n_samples: int, args: ExampleArgs, seed: int) -> TensorDataset:
    """Random sequences; half of them get the marker token at a random position."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, args.vocab_size, (n_samples, args.seq_len), generator=generator)
    labels = torch.randint(0, 2, (n_samples,), generator=generator)
    positions = torch.randint(0, args.seq_len, (n_samples,), generator=generator)
    input_ids[labels == 1, positions[labels == 1]] = MARKER_TOKEN
    return TensorDataset(input_ids, labels)


def collate(samples) -> dict:
    input_ids, labels = map(torch.stack, zip(*samples))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def make_loader(dataset, batch_size: int, shuffle: bool, world_size: int) -> DataLoader:
    sampler = DistributedSampler(dataset, shuffle=shuffle) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      collate_fn=collate)


def keep_for_metrics(batch: dict, output) -> dict:
    """Per-sample predictions and labels; the Trainer gathers them from all processes."""
    return {"predictions": output["logits"].argmax(dim=-1), "labels": batch["labels"]}


def accuracy(data: dict) -> dict:
    return {"accuracy": (data["predictions"] == data["labels"]).float().mean().item()}


def main():
    parser = HfArgumentParser((TrainerArgs, ExampleArgs))
    trainer_args, example_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    context = init_distributed()  # first: rank, world size and device come from torchrun's environment
    prepare_run(trainer_args, logger)
    torch.manual_seed(trainer_args.seed)

    # one optimizer step takes batch_size * gradient_accumulation_steps samples per process
    train_batch = trainer_args.batch_size * trainer_args.gradient_accumulation_steps
    train_loader = make_loader(make_dataset(example_args.n_train, example_args, seed=0), train_batch, True,
                               context.world_size)
    valid_loader = make_loader(make_dataset(example_args.n_valid, example_args, seed=1), 64, False,
                               context.world_size)
    test_loader = make_loader(make_dataset(example_args.n_valid, example_args, seed=2), 64, False,
                              context.world_size)

    config = BertConfig(vocab_size=example_args.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=example_args.seq_len,
                        num_labels=2)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer_args.lr or 1e-3)

    trainer = Trainer(trainer_args, model, optimizer, train_loader, valid_loader,
                      keep_for_metrics_fn=keep_for_metrics, metrics_fn=accuracy)
    best = trainer.train()
    test = trainer.validate(test_loader, split="test")
    if context.is_main:
        logger.info(f"best validation {best}; test (last weights) {test}")


if __name__ == "__main__":
    main()
