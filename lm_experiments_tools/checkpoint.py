"""Checkpoint files: one dict per file, written atomically and read back with `weights_only=True`.

A kill at any moment leaves either the previous file or the new one, never a truncated file: the dict is written
to a temporary file in the same folder, flushed to disk and renamed over the target (`os.replace` is atomic on
POSIX and Windows when both names are on one file system). A write that fails (a full disk) removes its
temporary file and raises `CheckpointWriteError` naming the target and the last good checkpoint beside it; a full
disk is named as such even though torch's zip writer reports it only as "unexpected pos" (see `_RecordingFile`).
`find_latest_checkpoint(folder, loadable=True)` skips damaged files with a warning naming each one.
"""
import errno
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

from .errors import BadInputError, RunFailure

logger = logging.getLogger(__name__)

BEST_CHECKPOINT_NAME = "model_best.pth"
ITERATION_CHECKPOINT_PATTERN = re.compile(r"model_(\d+)\.pth")
REQUIRED_KEYS = ("model_state_dict",)
MAX_KEYS_IN_ERROR = 5
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
CHECKPOINT_FILE_MODE = 0o644
# what torch.load(weights_only=True) names when it refuses a pickle that would import or run something
UNSAFE_GLOBAL_PATTERN = re.compile(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)
UNSAFE_OPERAND_PATTERN = re.compile(r"unsupported operand (\d+)", re.IGNORECASE)


class CheckpointError(BadInputError):
    """A file is not a checkpoint this library can load (missing, corrupted, foreign or of another model)."""


class CheckpointWriteError(RunFailure):
    """A checkpoint could not be written (e.g. no space left on device); the previous checkpoints are intact."""


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


class _RecordingFile:
    """A binary file that remembers the OSError of a failed write: torch's zip writer catches it and raises a
    RuntimeError that only says "unexpected pos", which would hide a full disk."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(path, state: dict) -> Path:
    """Write `state` to `path` atomically: temporary file in the same folder, fsync, rename.

    Args:
        path: target file; its folder is created if needed.
        state: a dict of tensors and plain Python values (what `torch.load(weights_only=True)` accepts).

    Returns:
        The path written.

    Raises:
        CheckpointWriteError: the file system refused the write (full disk, quota, permissions); no temporary
            file is left and the file previously at `path` is unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _write_error(path, error) from error
    recording = None
    try:
        os.chmod(temp_name, CHECKPOINT_FILE_MODE)  # mkstemp makes owner-only files; checkpoints are shared
        with os.fdopen(fd, "wb") as file:
            recording = _RecordingFile(file)
            torch.save(state, recording)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(path, error) from error
        if isinstance(error, RuntimeError) and recording is not None and recording.error is not None:
            raise _write_error(path, recording.error) from error
        raise
    return path


def _write_error(path: Path, error: OSError) -> CheckpointWriteError:
    """The one-line report of a failed write: what failed, why, and what is still there to resume from."""
    try:
        latest = find_latest_checkpoint(path.parent, loadable=True)
    except (OSError, CheckpointError):  # the folder may be unreadable, or hold only damaged checkpoints
        latest = None
    last_good = f"the last good checkpoint is {latest}" if latest else "no earlier checkpoint in that folder"
    cause = f"the disk is full ({error.strerror})" if error.errno in DISK_FULL_ERRNOS else error.strerror or error
    return CheckpointWriteError(f"cannot write checkpoint {path}: {cause}; {last_good}")


def _load_failure_reason(error: Exception) -> str:
    """torch.load's message in a few words: its weights_only messages run to a paragraph of advice.

    A pickle that names a Python callable or class (what a malicious file does to run code) is reported as refused,
    not as damage: the file may well be intact, it is just not safe to load.
    """
    message = str(error)
    unsafe_global = UNSAFE_GLOBAL_PATTERN.search(message)
    if unsafe_global:
        return (f"refused to unpickle {unsafe_global.group(1)}: weights_only=True loads only tensors and plain "
                f"values, never code")
    unsafe_operand = UNSAFE_OPERAND_PATTERN.search(message)
    if unsafe_operand:
        return (f"not a torch.save file of tensors and plain values: weights_only=True refused pickle instruction "
                f"{unsafe_operand.group(1)}")
    detail = (message.split("WeightsUnpickler error:", 1)[-1].strip().split(". ")[0].splitlines() or [""])[0]
    return f"truncated, corrupted or not written by torch.save: {detail or type(error).__name__}"


def load_checkpoint(path, mmap: bool = False) -> dict:
    """Read a checkpoint written by `save_checkpoint` onto the CPU with `weights_only=True`.

    Args:
        path: the checkpoint file.
        mmap: map the tensors instead of reading them (a cheap check that the file loads).

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
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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


def _checkpoints_newest_first(folder: Path) -> list[Path]:
    """model_{N}.pth by decreasing N, with model_best.pth placed by its stored iteration (after ties)."""
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
            logger.warning(f"ignoring damaged checkpoint {best}: {_load_failure_reason(error)}")
    return [path for *_, path in sorted(candidates, reverse=True)]


def _loads(path: Path) -> bool:
    """Whether `path` loads as a checkpoint; a warning names it and says why when it does not."""
    try:
        load_checkpoint(path, mmap=True)  # cheap: the tensors are mapped, not read
        return True
    except CheckpointError:
        pass
    try:  # a file that cannot be mapped (legacy format, or damaged): a full load tells which, and why
        load_checkpoint(path)
        return True
    except CheckpointError as error:
        logger.warning(f"skipping damaged checkpoint {path}, trying the next older one: {error}")
        return False


def find_latest_checkpoint(folder, loadable: bool = False) -> Path | None:
    """The most advanced checkpoint in `folder`: model_{N}.pth with the largest N, or model_best.pth if later.

    Args:
        folder: a run folder (`model_path`).
        loadable: skip files that do not load (truncated, corrupted, unsafe), logging a warning naming each,
            and return the newest one that does.

    Returns:
        Path of the checkpoint to resume from, or None when the folder has none.

    Raises:
        CheckpointError: with `loadable`, the folder has checkpoints but none of them loads.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = _checkpoints_newest_first(folder)
    if not loadable:
        return candidates[0] if candidates else None
    for path in candidates:
        if _loads(path):
            return path
    if candidates:
        raise CheckpointError(f"none of the checkpoints in {folder} loads ({', '.join(p.name for p in candidates)}; "
                              f"the warnings above say why): expected at least one intact checkpoint to resume from")
    return None
