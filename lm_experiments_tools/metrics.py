"""Metric hooks of the Trainer and their reduction over batches and processes.

- `batch_metrics_fn(batch, output) -> {name: scalar}`: averaged over all batches of all processes.
- `keep_for_metrics_fn(batch, output) -> {key: tensor | list}`: per-sample values kept over the whole pass;
  tensors are split into rows along their first dimension, lists are extended. The rows of all processes are
  gathered (rank 0's first) and `metrics_fn` receives, per key, a stacked tensor when all rows share a shape and a
  list otherwise.
- `metrics_fn(data) -> {name: scalar}`: dataset-level metrics (exact match, F1, ...).
Every process ends with the same numbers, so decisions taken on them agree across processes.
"""
from collections import defaultdict
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist


def loss_batch_metrics(batch: Mapping, output: Mapping) -> dict:
    """The default `batch_metrics_fn`: the model's loss."""
    return {"loss": output["loss"]}


def _rows(value) -> list:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return list(value) if value.dim() > 0 else [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _collate_rows(rows: list):
    if rows and all(isinstance(row, torch.Tensor) for row in rows) and len({row.shape for row in rows}) == 1:
        return torch.stack(rows)
    return rows


def _as_float(value) -> float:
    return value.item() if isinstance(value, torch.Tensor) else float(value)


class MetricsAccumulator:
    """Collects the hooks' results batch by batch; `compute()` reduces them over processes and starts over."""

    def __init__(self, batch_metrics_fn: Callable = loss_batch_metrics, keep_for_metrics_fn: Callable | None = None,
                 metrics_fn: Callable | None = None):
        self.batch_metrics_fn = batch_metrics_fn or loss_batch_metrics
        self.keep_for_metrics_fn = keep_for_metrics_fn
        self.metrics_fn = metrics_fn
        self._reset()

    def _reset(self) -> None:
        self.sums = {}  # name -> running sum; tensors stay on their device until compute() (no sync per step)
        self.counts = defaultdict(int)
        self.kept = defaultdict(list)

    def add(self, batch: Mapping, output: Mapping) -> None:
        for name, value in self.batch_metrics_fn(batch, output).items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] += 1
        if self.keep_for_metrics_fn is not None:
            for key, value in self.keep_for_metrics_fn(batch, output).items():
                self.kept[key].extend(_rows(value))

    def compute(self) -> dict:
        """Metrics over everything added since the last call, identical on all processes.

        Returns:
            {name: float}: batch metric means, then the results of metrics_fn on the gathered kept data.
        """
        local = ({name: _as_float(value) for name, value in self.sums.items()}, dict(self.counts), dict(self.kept))
        self._reset()
        parts = [local]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        sums, counts, kept = defaultdict(float), defaultdict(int), defaultdict(list)
        for part_sums, part_counts, part_kept in parts:
            for name, value in part_sums.items():
                sums[name] += value
                counts[name] += part_counts[name]
            for key, rows in part_kept.items():
                kept[key].extend(rows)
        metrics = {name: sums[name] / counts[name] for name in sums}
        if self.metrics_fn is not None:
            data = {key: _collate_rows(rows) for key, rows in kept.items()}
            metrics.update({name: _as_float(value) for name, value in self.metrics_fn(data).items()})
        return metrics
