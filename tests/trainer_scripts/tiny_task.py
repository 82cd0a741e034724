"""A tiny synthetic regression task shared by the Trainer tests and their subprocess script.

Targets are a fixed random linear function of the features plus noise; the model is a two-layer MLP with
optional dropout (so that random states matter for exact resume). Data order is shuffled unless told otherwise.
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lm_experiments_tools import Trainer, TrainerArgs
from lm_experiments_tools.distributed import init_distributed

N_FEATURES = 8
HIDDEN_SIZE = 16


def make_dataset(n_samples: int = 64, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n_samples, N_FEATURES, generator=generator)
    weights = torch.randn(N_FEATURES, generator=torch.Generator().manual_seed(1234))
    targets = features @ weights + 0.1 * torch.randn(n_samples, generator=generator)
    return TensorDataset(features, targets, torch.arange(n_samples))


def collate(samples) -> dict:
    features, targets, sample_ids = map(torch.stack, zip(*samples))
    return {"features": features, "targets": targets, "sample_ids": sample_ids}


class TinyRegressor(nn.Module):
    """MLP regressor; `sample_ids` in the batch is not a forward argument (the Trainer must drop it)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEATURES, HIDDEN_SIZE), nn.Tanh(), nn.Dropout(dropout),
                                 nn.Linear(HIDDEN_SIZE, 1))

    def forward(self, features, targets=None):
        predictions = self.net(features).squeeze(-1)  # (batch,)
        loss = nn.functional.mse_loss(predictions, targets) if targets is not None else None
        return {"loss": loss, "predictions": predictions}


def keep_errors(batch: dict, output: dict) -> dict:
    """keep_for_metrics_fn: per-sample absolute errors and sample ids."""
    return {"errors": (output["predictions"] - batch["targets"]).abs(), "ids": batch["sample_ids"].tolist()}


def dataset_metrics(data: dict) -> dict:
    """metrics_fn: mean absolute error over the whole dataset, and how many (distinct) samples it covers."""
    return {"mae": data["errors"].mean(), "n_samples": len(data["ids"]), "n_distinct": len(set(data["ids"]))}


def make_loader(dataset, batch_size: int, shuffle: bool) -> DataLoader:
    """A DataLoader over `dataset`, sharded with DistributedSampler when several processes run."""
    context = init_distributed()
    if context.world_size > 1:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=0)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def build_trainer(args: TrainerArgs, model_seed: int = 0, dropout: float = 0.0, shuffle: bool = True,
                  with_validation: bool = True, model: nn.Module | None = None, **trainer_kwargs) -> Trainer:
    """A Trainer of TinyRegressor (or `model`) with SGD; the train loader yields batch_size * accumulation."""
    torch.manual_seed(model_seed)
    model = model if model is not None else TinyRegressor(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr if args.lr is not None else 0.05, momentum=0.9)
    loader_batch_size = args.batch_size * args.gradient_accumulation_steps
    train_loader = make_loader(make_dataset(64, seed=0), loader_batch_size, shuffle)
    valid_loader = make_loader(make_dataset(24, seed=1), 8, shuffle=False) if with_validation else None
    return Trainer(args, model, optimizer, train_loader, valid_loader, **trainer_kwargs)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])
