"""What a run records next to its checkpoints: its arguments, environment, machine and git commit (config.json)
and its uncommitted changes (git.diff), written once by `prepare_run`."""
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path

import torch

from .distributed import get_distributed_rank

CONFIG_FILE = "config.json"
GIT_DIFF_FILE = "git.diff"


def _args_to_dict(args) -> dict:
    if dataclasses.is_dataclass(args):
        return dataclasses.asdict(args)
    if isinstance(args, Namespace):
        return vars(args).copy()
    if isinstance(args, dict):
        return dict(args)
    raise ValueError(f"args of type {type(args).__name__} is not supported: expected a dataclass, "
                     f"an argparse.Namespace or a dict")


def _run_git(*command: str) -> str | None:
    """Output of a git command in the folder of this package's checkout, None when git is unavailable."""
    repo_dir = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", *command], cwd=repo_dir, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def collect_run_configuration(args) -> dict:
    """Everything needed to tell a run apart and repeat it.

    Args:
        args: a dataclass, argparse.Namespace or dict of the run's arguments.

    Returns:
        A JSON-serialisable dict: args, environment (CUDA_VISIBLE_DEVICES, world size), machine, git commit.
    """
    commit = _run_git("rev-parse", "HEAD")
    return {
        "args": json.loads(json.dumps(_args_to_dict(args), default=str)),
        "environment": {
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "command": sys.argv,
        },
        "machine": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "git_commit": commit.strip() if commit else None,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_run(args, logger: logging.Logger | None = None) -> None:
    """Create `args.model_path` and write config.json and git.diff there (rank 0 only).

    Args:
        args: the run's arguments (dataclass, argparse.Namespace or dict) with a `model_path` entry; a None
            model_path writes nothing.
        logger: where to report what was written; defaults to this module's logger.
    """
    logger = logger or logging.getLogger(__name__)
    model_path = _args_to_dict(args).get("model_path")
    if model_path is None or get_distributed_rank() != 0:
        return
    model_path = Path(model_path)
    model_path.mkdir(parents=True, exist_ok=True)
    configuration = collect_run_configuration(args)
    (model_path / CONFIG_FILE).write_text(json.dumps(configuration, indent=2))
    (model_path / GIT_DIFF_FILE).write_text(_run_git("diff", "HEAD") or "")
    logger.info(f"run configuration written to {model_path / CONFIG_FILE} (git commit "
                f"{configuration['git_commit']}), uncommitted changes to {model_path / GIT_DIFF_FILE}")
