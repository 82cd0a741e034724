"""Checkpoint files: one dict per file, written atomically and read back with `weights_only=True`.

A kill at any moment leaves either the previous file or the new one, never a truncated file: the dict is written
to a temporary file in the same folder, flushed to disk and renamed over the target (`os.replace` is atomic on
POSIX and Windows when both names are on one file system).
"""
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BEST_CHECKPOINT_NAME = "model_best.pth"
ITERATION_CHECKPOINT_PATTERN = re.compile(r"model_(\d+)\.pth")
REQUIRED_KEYS = ("model_state_dict",)
MAX_KEYS_IN_ERROR = 5
CHECKPOINT_FILE_MODE = 0o644


class CheckpointError(ValueError):
    """A file is not a checkpoint this library can load (missing, corrupted, foreign or of another model)."""


def iteration_checkpoint_name(n_iter: int) -> str:
    return f"model_{n_iter}.pth"


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened for fsync on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` to `path` atomically: temporary file in the same folder, fsync, rename.

    Args:
        path: target file; its folder is created if needed.
        state: a dict of tensors and plain Python values (what `torch.load(weights_only=True)` accepts).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temp_name, CHECKPOINT_FILE_MODE)  # mkstemp makes owner-only files; checkpoints are shared
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _load_failure_reason(error: Exception) -> str:
    """torch.load's message in a few words: its weights_only messages run to a paragraph of advice."""
    message = str(error)
    detail = (message.split("WeightsUnpickler error:", 1)[-1].strip().split(". ")[0].splitlines() or [""])[0]
    if "Unsupported global" in detail:
        return f"it holds Python objects that weights_only=True refuses: {detail}"
    return f"truncated, corrupted or not written by torch.save: {detail or type(error).__name__}"


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by `save_checkpoint` onto the CPU with `weights_only=True`.

    Args:
        path: the checkpoint file.

    Returns:
        The checkpoint dict (it has at least 'model_state_dict').

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, holds non-tensor objects or is not a
            checkpoint dict.
    """
    path = Path(path)
    expected = f"expected a checkpoint dict with keys {list(REQUIRED_KEYS)} saved by lm_experiments_tools"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, OSError, ... depending on the damage
        raise CheckpointError(f"cannot load checkpoint {path} ({_load_failure_reason(error)}): {expected}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}: {expected}")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        found = sorted(map(str, state))[:MAX_KEYS_IN_ERROR]
        raise CheckpointError(f"checkpoint {path} lacks {missing} (has {found}...): {expected}")
    return state


def _describe_keys(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_KEYS_IN_ERROR} more" if len(keys) > MAX_KEYS_IN_ERROR else ""
    return ", ".join(keys[:MAX_KEYS_IN_ERROR]) + more


def apply_model_state(model: torch.nn.Module, state_dict: dict, source) -> None:
    """Load `state_dict` into `model`, or explain in one line why it belongs to another model.

    Args:
        model: the model to fill (not wrapped in DDP).
        state_dict: parameters and buffers, e.g. `load_checkpoint(path)['model_state_dict']`.
        source: where the weights came from, named in the error.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
                  for key, value in expected.items() if key in state_dict and state_dict[key].shape != value.shape]
    problems = [f"{label}: {_describe_keys(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise CheckpointError(f"checkpoint {source} holds weights of another model than "
                              f"{type(model).__name__} ({'; '.join(problems)})")
    model.load_state_dict(state_dict)


def load_model_weights(model: torch.nn.Module, path) -> dict:
    """Load the model weights of checkpoint `path` into `model`.

    Returns:
        The whole checkpoint dict (metrics, iteration, ...).
    """
    checkpoint = load_checkpoint(path)
    apply_model_state(model, checkpoint["model_state_dict"], path)
    return checkpoint


def _stored_iteration(path: Path) -> int:
    """Iteration of a checkpoint without reading its tensors (memory-mapped load)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("iteration", -1))


def find_latest_checkpoint(folder) -> Path | None:
    """The most advanced checkpoint in `folder`: model_{N}.pth with the largest N, or model_best.pth if later.

    Args:
        folder: a run folder (`model_path`).

    Returns:
        Path of the checkpoint to resume from, or None when the folder has none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = []  # (iteration, prefer interval checkpoints on ties, path)
    for path in folder.iterdir():
        match = ITERATION_CHECKPOINT_PATTERN.fullmatch(path.name)
        if match:
            candidates.append((int(match.group(1)), 1, path))
    best = folder / BEST_CHECKPOINT_NAME
    if best.is_file():
        try:
            candidates.append((_stored_iteration(best), 0, best))
        except Exception as error:  # a damaged best checkpoint must not block resuming from the others
            logger.warning(f"ignoring {best} when looking for the latest checkpoint: {error}")
    return max(candidates)[2] if candidates else None
