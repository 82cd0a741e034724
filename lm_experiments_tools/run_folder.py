"""Run folders: a training run never lands silently in a folder that already holds another one, and a failed run
ends with one line naming the cause while its traceback goes to a log file in the folder.

A folder holds a run when it has any of the files a run writes once it has started (checkpoints, tensorboard
events, results); config.json and git.diff alone are what a run that failed before its first step left, and a rerun
reuses the folder (writing them anew). Training into it needs a decision: `resume` continues that run from its
newest checkpoint, `overwrite` starts over and deletes those files once every input is checked (only those: the
folder may hold other things, and is never removed). Evaluation-only invocations write into the run they evaluate,
appending to its results, or into a new folder, never over another run (`evaluation_folder`).

A run resumed with `resume` keeps the settings that define it: `check_resumed_settings` refuses values that
differ from the folder's config.json, except those a caller allows to change by design (docs/design.md,
"Training, checkpoints and resume").

One writer per folder: the main process of a run holds an exclusive lock (`fcntl.flock` on RUN_LOCK_NAME in the
folder, which names the holder's pid and host) from before its first write until it ends, whichever way it ends.
The OS drops the lock of a process that dies, so a killed run never blocks the next one; a second live run is
refused with one line naming the holder, before it spends any time (under torchrun every process stops).

`exit_with_one_line` is what an entry script's `main()` runs inside: any exception becomes one line on stderr
("error: <cause> (traceback: <log file>)") and an exit code, 2 for bad input (`BadInputError`, and the types the
caller names for its setup stage) and 1 for everything else (`RunFailure`, a full disk, bugs). The log file is
error.log in the run folder, or a file in the temporary folder when there is none yet; a `BadInputError` raised
before the run folder exists (a refused flag) needs no traceback and gets none. A Ctrl-C that reaches it (one
during setup, or a second one) ends with one line saying what was saved, and exit code 130.
"""
import contextlib
import errno
import fcntl
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import CheckpointError, find_latest_checkpoint
from .distributed import MainProcessRefused, decide_on_main_process, exit_after_failure, get_distributed_rank
from .errors import (BAD_INPUT_EXIT_CODE, FAILURE_REPORTS_ENV, RUN_FAILURE_EXIT_CODE, BadInputError,
                     interrupt_exit_code)
from .run_config import CONFIG_FILE, GIT_DIFF_FILE

logger = logging.getLogger(__name__)

ERROR_LOG_NAME = "error.log"  # tracebacks of failures, appended; not a run file (a failed start leaves no run)
RUN_FILE_PATTERNS = ("model_*.pth", ".model_*.pth.*.tmp", "events.out.tfevents.*", "config.json", "git.diff",
                     "results.json", "results.jsonl")
MAX_NAMES_IN_ERROR = 4
RUN_LOCK_NAME = ".run.lock"  # not a run file: a run that never took a step leaves a folder a rerun may reuse
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
INTERRUPTED_IN_SETUP = "interrupted before training started: nothing saved"
INTERRUPTED_IN_RUN = "interrupted: stopped at once, nothing saved since the last checkpoint"


class RunFolderError(BadInputError):
    """The run folder holds another run and neither resume nor overwrite was given (or both were)."""


class RunFolderLockedError(RunFolderError):
    """Another live process holds the run folder's lock: two runs would write one folder."""


_held_locks = {}  # resolved folder -> the open lock file whose flock this process holds


def lock_run_folder(folder) -> None:
    """Hold the one-writer lock of `folder` until `release_run_folders()` or the end of the process.

    The folder is created if needed; the lock file then names this process. Taking a lock this process already
    holds does nothing (a curriculum stage is prepared, then trained).

    Raises:
        RunFolderLockedError: another live process holds the lock (named by the pid and host it wrote).
    """
    folder = Path(folder)
    key = folder.resolve()
    if key in _held_locks:
        return
    check_writable(folder)
    try:
        file = open(folder / RUN_LOCK_NAME, "a+", encoding="utf-8")
    except OSError as error:  # e.g. a lock file of another user
        raise BadInputError(f"model_path {folder}: its lock file {RUN_LOCK_NAME} cannot be opened ({error.strerror}): "
                            "expected a folder whose files this process can write") from error
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "a process that has not named itself yet"
        file.close()
        raise RunFolderLockedError(f"model_path {folder} is in use by another run ({holder}): expected one run per "
                                   "folder; wait for that run to end, stop it, or choose another model_path") from None
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {platform.node()}\n")
    file.flush()
    _held_locks[key] = file


def release_run_folders() -> None:
    """Release every run folder lock this process holds (the lock files stay; they name no one then)."""
    for file in _held_locks.values():
        file.close()  # closing the last descriptor of the open file drops its flock
    _held_locks.clear()


@contextlib.contextmanager
def holding_run_folders():
    """Context of a run: the run folder locks taken inside are released when it ends, whichever way it ends."""
    try:
        yield
    finally:
        release_run_folders()


def run_files(folder) -> list[Path]:
    """The files of a previous run in `folder` (sorted); [] when it has none, does not exist, or holds only the
    config.json and git.diff of a run that failed before its first step (the Trainer opens its events file at its
    first log)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted({path for pattern in RUN_FILE_PATTERNS for path in folder.glob(pattern) if path.is_file()})
    return [] if all(path.name in (CONFIG_FILE, GIT_DIFF_FILE) for path in files) else files


def _describe(files: list[Path]) -> str:
    names = [path.name for path in files]
    more = f" and {len(names) - MAX_NAMES_IN_ERROR} more" if len(names) > MAX_NAMES_IN_ERROR else ""
    return ", ".join(names[:MAX_NAMES_IN_ERROR]) + more


def check_resumed_settings(folder, values: dict, may_change) -> None:
    """Refuse to resume the run in `folder` with settings other than its own.

    Nothing is checked when the folder holds nothing to resume from (no checkpoint, events or results, only the
    config.json and git.diff of a run that stopped before its first step): resuming then starts a new run.

    Args:
        folder: the run folder.
        values: the settings the resumed run would write to config.json (its "args").
        may_change: names whose values may differ by design (e.g. iters, to extend a run; logging intervals).

    Raises:
        RunFolderError: the folder's config.json is unreadable, or a setting differs (all differences listed).
    """
    folder = Path(folder)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file() or not run_files(folder):
        return
    try:
        saved = json.loads(config_file.read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"--resume: {config_file} is unreadable ({error}): expected the config.json the run "
                             "wrote, to check that it resumes with its own settings") from error
    current = json.loads(json.dumps(values, default=str))  # as config.json stores them
    changed = [f"{name} {saved[name]!r} -> {current[name]!r}" for name in sorted(current)
               if name in saved and name not in may_change and saved[name] != current[name]]
    if changed:
        raise RunFolderError(f"--resume of {folder} changes the settings that define the run "
                             f"({'; '.join(changed)}): expected the values of its {CONFIG_FILE}, or another "
                             f"model_path for a new run (only {', '.join(sorted(may_change))} may change)")


def check_writable(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, before any training time is spent.

    Raises:
        BadInputError: the folder cannot be created or written (permissions, a file in the way, read-only disk).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{threading.get_native_id()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise BadInputError(f"model_path={str(folder)!r} is not writable ({error.strerror}): expected a folder "
                            f"this process can create files in") from error


def prepare_run_folder(folder, *, resume: bool, overwrite: bool, is_main: bool = True) -> None:
    """Refuse a folder that holds a run unless told what to do with it, and take its lock; nothing is deleted here
    (`delete_previous_run`, once every input is checked). The folder is created and checked for writing.

    The main process decides; under torchrun the others learn its decision (`decide_on_main_process`), so that a
    refusal stops every process before its first collective, with one line (the main process's).

    Args:
        folder: the run folder (`model_path`); None (nothing written) is always fine.
        resume: continue the run in the folder (or start one if it has none).
        overwrite: start a new run; `delete_previous_run` deletes the previous one's files.
        is_main: whether this is the main process, the one that decides and holds the lock.

    Raises:
        RunFolderError: the folder holds a run and neither flag is given, or both flags are given.
        RunFolderLockedError: another run is writing to the folder.
        MainProcessRefused: on the other processes, when the main process raised one of these.
    """
    decide_on_main_process(lambda: _claim_run_folder(folder, resume, overwrite), is_main)


def _claim_run_folder(folder, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite are both given: expected at most one (continue the run "
                             "in model_path, or start it over)")
    if folder is None:
        return
    files = run_files(folder)
    if files and not (resume or overwrite):
        raise RunFolderError(f"model_path {folder} already holds a run ({_describe(files)}): expected --resume to "
                             f"continue it, --overwrite to start over (deleting those files) or another model_path")
    lock_run_folder(folder)


def delete_previous_run(folder) -> None:
    """--overwrite: delete the files of the previous run in `folder` (only those: the folder may hold other things,
    and is never removed; None: nothing). Called on the main process, holding the folder's lock, once every input
    is checked."""
    if folder is None:
        return
    files = run_files(folder)
    for path in files:
        path.unlink(missing_ok=True)
    if files:
        logger.warning(f"--overwrite: deleted {len(files)} files of the previous run in {folder} "
                       f"({_describe(files)})")


def prepare_evaluation_folder(folder, evaluated, *, is_main: bool = True) -> Path:
    """The folder an evaluation-only run of `evaluated` writes to (`evaluation_folder`), its lock taken by the main
    process; under torchrun every process learns the main process's decision, as in `prepare_run_folder`."""
    decide_on_main_process(lambda: lock_run_folder(evaluation_folder(folder, evaluated)), is_main)
    return evaluation_folder(folder, evaluated)


def evaluation_folder(folder, evaluated) -> Path:
    """The folder an evaluation-only run of the run folder `evaluated` writes to: the evaluated run itself (when
    `folder` is None or the same folder), or a new or empty folder, never over another run. The writer takes its
    lock (`lock_run_folder`) before writing.

    A folder written by an earlier evaluation of the same run (its config.json has validate_only and the same
    model_cpt) is not another run: evaluating again appends to its results.

    Raises:
        RunFolderError: `folder` holds another run.
    """
    target = Path(evaluated if folder is None else folder)
    if target.resolve() != Path(evaluated).resolve():
        files = run_files(target)
        if files and not _is_evaluation_of(target, evaluated):
            raise RunFolderError(f"--validate_only --model_cpt {evaluated} --model_path {folder}: model_path holds "
                                 f"another run ({_describe(files)}); expected no --model_path (results go to the "
                                 "evaluated run), model_path equal to model_cpt, or a new or empty folder")
    return target


def _is_evaluation_of(folder: Path, evaluated) -> bool:
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    same_run = Path(str(saved.get("model_cpt"))).resolve() == Path(evaluated).resolve()
    return bool(saved.get("validate_only")) and same_run


# ---- failures -------------------------------------------------------------------------------------------------

def _process_label() -> str:
    """'' in a single process, 'rank R: ' under torchrun (every process reports its own failure)."""
    return f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


class CommandLineError(BadInputError):
    """A flag argparse cannot parse (unknown flag, wrong type, missing value)."""


def raise_on_parse_errors(parser):
    """Make `parser` (argparse / HfArgumentParser) raise CommandLineError instead of printing its usage and
    exiting, so that a wrong flag ends as one line like every other bad input. Returns the parser."""
    def error(message: str):
        raise CommandLineError(f"{message}: see --help for the flags and their types")

    parser.error = error
    return parser


def report_failure(line: str, exit_code: int) -> None:
    """Print the one line of this process's failure on stderr, prefixed with its rank in a multi-process run.

    Under lm_experiments_tools.launcher the line goes to the launcher's report folder instead (written whole, by
    rename), and the launcher prints each distinct line of the run's processes once."""
    folder = os.environ.get(FAILURE_REPORTS_ENV)
    if folder and Path(folder).is_dir():
        rank = get_distributed_rank()
        report = {"rank": rank, "line": line, "exit_code": exit_code, "time": time.time()}
        path = Path(folder) / f"rank{rank}.json"
        try:
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(report))
            os.replace(temporary, path)
            return
        except OSError:
            pass  # the launcher then names this process's exit code; the line itself still reaches stderr
    print(f"{_process_label()}{line}", file=sys.stderr, flush=True)


def write_error_log(folder, error: BaseException) -> Path:
    """Append the traceback of `error` to folder/error.log (error.rank{R}.log on other ranks); when the folder
    does not exist or cannot be written, to a file in the temporary folder. Returns the file written."""
    rank = int(os.environ.get("RANK", "0"))
    name = ERROR_LOG_NAME if rank == 0 else ERROR_LOG_NAME.replace(".log", f".rank{rank}.log")
    text = (f"---- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {' '.join(sys.argv)}\n"
            + "".join(traceback.format_exception(error)))
    candidates = [Path(folder) / name] if folder is not None and Path(folder).is_dir() else []
    candidates.append(Path(tempfile.gettempdir()) / f"{Path(sys.argv[0]).stem}-{os.getpid()}-{name}")
    for path in candidates:
        try:
            with open(path, "a") as file:
                file.write(text)
            return path
        except OSError:
            continue
    return candidates[-1]


def describe_failure(error: BaseException, folder=None) -> str:
    """One line naming the cause; a full disk also names the last good checkpoint in `folder`."""
    known = isinstance(error, (BadInputError, RuntimeError, OSError, ValueError))
    message = " ".join(str(error).split()) or type(error).__name__
    line = message if known else f"{type(error).__name__}: {message}"
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS and folder is not None:
        try:
            latest = find_latest_checkpoint(folder, loadable=True)
        except (OSError, CheckpointError):
            latest = None
        line += f"; the last good checkpoint is {latest}" if latest else f"; no checkpoint in {folder} yet"
    return line


@contextlib.contextmanager
def exit_with_one_line(run_folder: Callable[[], str | None] | str | None = None,
                       bad_input: tuple = (BadInputError,), interrupted: str = INTERRUPTED_IN_RUN):
    """End the process with one line on stderr and an exit code for any exception raised inside.

    Args:
        run_folder: the run folder (or a function returning the current one, e.g. a curriculum stage's) where
            error.log gets the traceback.
        bad_input: exception types that mean bad input (exit code 2); e.g. (ValueError, OSError) around the
            setup stage, where a missing file is the user's. Everything else exits with code 1.
        interrupted: the line of a Ctrl-C inside (KeyboardInterrupt: one outside the Trainer's stop handling, or a
            second one), which says what was saved; the exit code is `interrupt_exit_code()`.

    SystemExit (a stop signal's clean exit, argparse) passes through. On the other processes of a torchrun run,
    a refusal of the main process (MainProcessRefused) and an interrupt end without a line: the main process
    prints the one line of the run.
    """
    try:
        yield
    except SystemExit:
        raise
    except MainProcessRefused as refused:
        logging.shutdown()
        exit_after_failure(refused.exit_code)
    except KeyboardInterrupt:
        logging.shutdown()
        if get_distributed_rank() == 0:
            print(interrupted, file=sys.stderr, flush=True)
        exit_after_failure(interrupt_exit_code())
    except BaseException as error:  # noqa: B036 - every failure must end as one line, whatever its type
        folder = run_folder() if callable(run_folder) else run_folder
        code = BAD_INPUT_EXIT_CODE if isinstance(error, bad_input) else RUN_FAILURE_EXIT_CODE
        where = ""
        # a refused option before any run folder exists is fully told by its message; anything else keeps its trace
        if (folder is not None and Path(folder).is_dir()) or not isinstance(error, BadInputError):
            where = f" (traceback: {write_error_log(folder, error)})"
        logging.shutdown()  # flush log handlers, so that nothing is printed after the error line
        report_failure(f"error: {describe_failure(error, folder)}{where}", code)
        # the other processes may never reach the exit barrier of a normal ending: tear down as a failure now
        exit_after_failure(code)
