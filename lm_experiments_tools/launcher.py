"""torchrun or `accelerate launch`, ending a failed run as its processes' one line and exit code.

    python -m lm_experiments_tools.launcher torchrun --nproc_per_node 2 train.py ...
    python -m lm_experiments_tools.launcher accelerate launch --num_processes 2 --multi_gpu train.py ...

(the launcher's own command line after the module's name).

Both launchers report a process that exits with any code but 0 as a failure of their own: a traceback of some 30
lines, then exit code 1, so a refused flag (exit code 2, found by every process) would end in one error line per
process and that report. Run through this module, each process writes its one line (`run_folder.report_failure`)
to a report folder instead of stderr; when the launcher fails, each distinct line is printed once (prefixed with
its rank when the processes disagree) and this process exits with the code of the first process that reported,
2 for bad input or 1 for a failure. A process that died without a report (killed by a signal, an uncaught
exception) gets one line naming its rank and exit code; its own output is above. An interrupted run (Ctrl-C) ends
with exit code 130 and no line of this module: its main process said what it saved (the entry scripts end at once,
by the signal, when it comes while they load their libraries).
"""
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import FAILURE_REPORTS_ENV, INTERRUPT_EXIT_CODE, RUN_FAILURE_EXIT_CODE

LAUNCHERS = {"torchrun": ["torchrun"], "accelerate": ["accelerate", "launch"]}  # name -> its command's first words
QUIET_LOGGERS = "torch.distributed.elastic.multiprocessing"  # logs each failed and stopped process once more


def read_reports(folder) -> list[dict]:
    """The processes' reports in `folder` (rank, line, exit_code, time), oldest first."""
    reports = []
    for path in Path(folder).glob("rank*.json"):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # written by rename, so a report is whole or absent; anything else is not ours
    return sorted(reports, key=lambda report: report["time"])


def summarize(reports: list[dict]) -> tuple[list[str], int]:
    """The lines to print and the exit code for the reports of a failed run (at least one)."""
    lines = list(dict.fromkeys(report["line"] for report in reports))
    if len(lines) > 1:
        lines = list(dict.fromkeys(f"rank {report['rank']}: {report['line']}" for report in reports))
    return lines, reports[0]["exit_code"]


def describe_unreported(rank, exit_code: int) -> str:
    """The line for a process that ended with `exit_code` and no report."""
    if exit_code < 0:
        try:
            cause = f"was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            cause = f"was killed by signal {-exit_code}"
    else:
        cause = f"exited with code {exit_code}"
    return f"error: process of rank {rank} {cause} without a report of its own (its output, if any, is above)"


def first_failure(error) -> tuple[object, int]:
    """(rank, exit code) of the process whose failure the launcher observed first."""
    if isinstance(error, subprocess.CalledProcessError):  # accelerate's single-process launch
        return 0, error.returncode
    rank, failure = error.get_first_failure()
    return rank, failure.exitcode


def run_launcher(name: str, args: list[str]) -> None:
    """Run torchrun's or `accelerate launch`'s arguments `args` in this process; failures raise."""
    if name == "torchrun":
        from torch.distributed.run import main as start
    else:
        from accelerate.commands.launch import launch_command, launch_command_parser

        def start(args):
            launch_command(launch_command_parser().parse_args(args))
    quiet_process_logs()  # once imported: the loggers exist
    start(args)


def quiet_process_logs() -> None:
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(QUIET_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = next((name for name, words in LAUNCHERS.items() if argv[:len(words)] == words), None)
    if name is None:
        print(f"error: {' '.join(argv[:2]) or 'no command'}: expected 'torchrun ARGS' or 'accelerate launch ARGS'",
              file=sys.stderr)
        sys.exit(2)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    with tempfile.TemporaryDirectory(prefix="launch-reports-") as folder:
        os.environ[FAILURE_REPORTS_ENV] = folder  # the processes inherit it
        try:
            run_launcher(name, argv[len(LAUNCHERS[name]):])
        except (ChildFailedError, subprocess.CalledProcessError) as error:
            reports = read_reports(folder)
            if reports:
                lines, code = summarize(reports)
            else:
                rank, exit_code = first_failure(error)
                if exit_code in (INTERRUPT_EXIT_CODE, -signal.SIGINT):  # its main process said what was saved
                    sys.exit(INTERRUPT_EXIT_CODE)
                lines, code = [describe_unreported(rank, exit_code)], RUN_FAILURE_EXIT_CODE
            print("\n".join(lines), file=sys.stderr, flush=True)
            sys.exit(code)


if __name__ == "__main__":
    main()
