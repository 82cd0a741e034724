"""lm_experiments_tools: class lookup, optimizer lookup, rank-0 helpers, run bookkeeping, distributed setup."""
import json
import logging
from argparse import Namespace

import pytest
import torch

from lm_experiments_tools import TrainerArgs
from lm_experiments_tools.class_names import get_cls_by_name
from lm_experiments_tools.distributed import get_distributed_rank, init_distributed, rank_0
from lm_experiments_tools.optimizers import get_optimizer
from lm_experiments_tools.run_config import collect_run_configuration, prepare_run


def test_get_cls_by_name():
    assert get_cls_by_name("torch.nn:Linear") is torch.nn.Linear
    assert get_cls_by_name("lm_experiments_tools:TrainerArgs") is TrainerArgs
    for bad, message in [("torch.nn.Linear", "not of the form 'module:Class'"),
                         ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
                         ("torch.nn:NoSuchLayer", "has no attribute 'NoSuchLayer'")]:
        with pytest.raises(ValueError, match=message):
            get_cls_by_name(bad)


def test_get_optimizer(monkeypatch):
    import transformers.optimization

    class TransformersOnlyOptimizer(torch.optim.SGD):
        pass

    monkeypatch.setattr(transformers.optimization, "TransformersOnlyOptimizer", TransformersOnlyOptimizer,
                        raising=False)
    assert get_optimizer("AdamW") is torch.optim.AdamW  # torch.optim first
    assert get_optimizer("TransformersOnlyOptimizer") is TransformersOnlyOptimizer
    assert get_optimizer("transformers.optimization:Adafactor") is transformers.optimization.Adafactor
    with pytest.raises(ValueError, match="unknown optimizer 'Adamm'"):
        get_optimizer("Adamm")


def test_single_process_distributed_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    context = init_distributed()
    assert init_distributed() is context  # idempotent
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert not torch.distributed.is_initialized()
    assert get_distributed_rank() == 0


def test_rank_0_runs_only_on_rank_0(monkeypatch):
    calls = []
    record = rank_0(lambda value: calls.append(value) or value)
    assert record(1) == 1
    monkeypatch.setenv("RANK", "1")
    assert record(2) is None
    assert calls == [1]


@pytest.mark.parametrize("make_args", [
    lambda path: TrainerArgs(model_path=path, lr=3e-4),
    lambda path: Namespace(model_path=path, lr=3e-4, task="memorize"),
])
def test_prepare_run_writes_config_and_diff(tmp_path, monkeypatch, make_args):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    model_path = tmp_path / "runs" / "run_1"
    prepare_run(make_args(str(model_path)), logging.getLogger("test"))
    config = json.loads((model_path / "config.json").read_text())
    assert config["args"]["lr"] == 3e-4 and config["args"]["model_path"] == str(model_path)
    assert config["environment"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert config["environment"]["world_size"] == 1
    assert config["machine"]["torch"] == torch.__version__
    assert config["git_commit"] is None or len(config["git_commit"]) == 40
    assert (model_path / "git.diff").exists()


def test_prepare_run_only_on_rank_0(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    prepare_run(Namespace(model_path=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_collect_run_configuration_rejects_unknown_args():
    with pytest.raises(ValueError, match="args of type list is not supported"):
        collect_run_configuration([1, 2])
