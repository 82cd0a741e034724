"""Batches on their way to the model: device transfer, sub-batches for accumulation, forward arguments, and the
endless stream of training batches whose position can be saved and restored exactly.
"""
import inspect
import logging
from collections.abc import Mapping

import torch

from .rng import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

_END = object()  # marks an exhausted epoch iterator


def move_to_device(batch, device: torch.device):
    """Tensors of a (nested) mapping/list moved to `device`; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({key: move_to_device(value, device) for key, value in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


def batch_num_samples(batch: Mapping) -> int:
    """Number of samples: the first dimension of the batch's first tensor (or length of its first list)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    for value in batch.values():
        if isinstance(value, (list, tuple)):
            return len(value)
    raise ValueError(f"cannot tell the number of samples of a batch with keys {list(batch)}: expected a tensor "
                     f"with a batch dimension or a list")


def split_batch(batch: Mapping, sub_batch_size: int) -> list[dict]:
    """Cut a batch into sub-batches of `sub_batch_size` samples (the last may be smaller).

    Values whose first dimension (or length) equals the number of samples are sliced; others (scalars,
    per-batch settings) are shared by all sub-batches.
    """
    num_samples = batch_num_samples(batch)
    if num_samples <= sub_batch_size:
        return [dict(batch)]
    sub_batches = []
    for start in range(0, num_samples, sub_batch_size):
        end = start + sub_batch_size
        sub_batches.append({key: value[start:end] if _is_per_sample(value, num_samples) else value
                            for key, value in batch.items()})
    return sub_batches


def _is_per_sample(value, num_samples: int) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() > 0 and value.shape[0] == num_samples
    return isinstance(value, (list, tuple)) and len(value) == num_samples


class ForwardArgumentFilter:
    """Keeps the batch keys that the model's forward accepts (all of them if forward takes **kwargs)."""

    def __init__(self, model: torch.nn.Module):
        parameters = inspect.signature(model.forward).parameters.values()
        self.accepts_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)
        self.names = {p.name for p in parameters
                      if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}

    def __call__(self, batch: Mapping) -> dict:
        if self.accepts_any:
            return dict(batch)
        return {key: value for key, value in batch.items() if key in self.names}


class TrainBatchStream:
    """Endless iteration over a training DataLoader, epoch after epoch, with a resumable position.

    The position is (epoch, batches consumed in it, random states when the epoch's iterator was created). A
    shuffling sampler draws its order from the global generator when the iterator is created, so restoring those
    states and drawing the consumed batches again reproduces the exact remaining order of the interrupted epoch.
    """

    def __init__(self, dataloader, sampler=None):
        self.dataloader = dataloader
        self.sampler = sampler if sampler is not None else getattr(dataloader, "sampler", None)
        self.epoch = 0
        self.batches_in_epoch = 0
        self.epoch_rng_state = None
        self._iterator = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "epoch_rng_state": self.epoch_rng_state}

    def load_state_dict(self, state: dict) -> None:
        """Move to `state`'s position now: the next batch is the one after the last consumed one.

        This sets the global random states to those of the epoch start; the caller restores its own afterwards.
        """
        self.epoch = state["epoch"]
        if state.get("epoch_rng_state") is not None:
            set_rng_state(state["epoch_rng_state"])
        self._start_epoch()
        skip = state["batches_in_epoch"]
        logger.info(f"skipping {skip} already used batches of epoch {self.epoch}")
        while self.batches_in_epoch < skip and next(self._iterator, _END) is not _END:
            self.batches_in_epoch += 1

    def _start_epoch(self) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.epoch_rng_state = get_rng_state()
        self._iterator = iter(self.dataloader)
        self.batches_in_epoch = 0

    def __next__(self):
        if self._iterator is None:
            self._start_epoch()
        batch = next(self._iterator, _END)
        if batch is _END:
            if self.batches_in_epoch == 0:
                raise ValueError("train_dataloader yields no batches: expected a non-empty DataLoader")
            self.epoch += 1
            self._start_epoch()
            return next(self)
        self.batches_in_epoch += 1
        return batch

    def __iter__(self):
        return self
