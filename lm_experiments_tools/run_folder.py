"""Run folders: a training run never lands silently in a folder that already holds another one.

A folder holds a run when it has any of the files a run writes (checkpoints, tensorboard events, config.json,
results). Training into it needs a decision: `resume` continues that run from its newest checkpoint, `overwrite`
starts over and deletes those files first (only those: the folder may hold other things, and is never removed).
Evaluation-only invocations do not call this check: they append to a finished run's results on purpose.
"""
import logging
from pathlib import Path

from .errors import BadInputError

logger = logging.getLogger(__name__)

ERROR_LOG_NAME = "error.log"  # full traceback of the last failure, written by the entry scripts
RUN_FILE_PATTERNS = ("model_*.pth", ".model_*.pth.*.tmp", "events.out.tfevents.*", "config.json", "git.diff",
                     "results.json", "results.jsonl", ERROR_LOG_NAME)
MAX_NAMES_IN_ERROR = 4


class RunFolderError(BadInputError):
    """The run folder holds another run and neither resume nor overwrite was given (or both were)."""


def run_files(folder) -> list[Path]:
    """The files of a previous run in `folder` (sorted), [] when it has none or does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted({path for pattern in RUN_FILE_PATTERNS for path in folder.glob(pattern) if path.is_file()})


def _describe(files: list[Path]) -> str:
    names = [path.name for path in files]
    more = f" and {len(names) - MAX_NAMES_IN_ERROR} more" if len(names) > MAX_NAMES_IN_ERROR else ""
    return ", ".join(names[:MAX_NAMES_IN_ERROR]) + more


def prepare_run_folder(folder, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Refuse a folder that holds a run unless told what to do with it; with `overwrite`, empty it of that run.

    Args:
        folder: the run folder (`model_path`); None (nothing written) is always fine.
        resume: continue the run in the folder (or start one if it has none).
        overwrite: delete the previous run's files, then start a new run.
        is_main: only the main process deletes; the others only check, which reaches the same decision because
            the decision depends on the flags whenever files are there.

    Raises:
        RunFolderError: the folder holds a run and neither flag is given, or both flags are given.
    """
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite are both given: expected at most one (continue the run "
                             "in model_path, or start it over)")
    if folder is None or resume:
        return
    files = run_files(folder)
    if not files:
        return
    if not overwrite:
        raise RunFolderError(f"model_path {folder} already holds a run ({_describe(files)}): expected --resume to "
                             f"continue it, --overwrite to start over (deleting those files) or another model_path")
    if is_main:
        for path in files:
            path.unlink(missing_ok=True)
        logger.warning(f"--overwrite: deleted {len(files)} files of the previous run in {folder} "
                       f"({_describe(files)})")
