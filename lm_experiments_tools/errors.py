"""The two kinds of failure a run can end with, and the exit code each gives on the command line (and that of
an interrupted run).

Entry scripts print one line naming the cause and exit with the code of its kind; the full traceback goes to a
log file in the run folder. Library code raises these (or subclasses) so that the kind is decided where the
cause is known, not guessed from a builtin exception type far away.
"""
import os
import signal

BAD_INPUT_EXIT_CODE = 2
RUN_FAILURE_EXIT_CODE = 1
INTERRUPT_EXIT_CODE = 128 + signal.SIGINT  # 130: what shells report for a command ended by Ctrl-C
FAILURE_REPORTS_ENV = "LM_TOOLS_FAILURE_REPORTS"  # set by lm_experiments_tools.launcher: where processes report


def interrupt_exit_code() -> int:
    """The exit code of a run stopped by Ctrl-C (SIGINT): 130, so that a script that chains runs stops too; 0 under
    torchrun, which reports any other code as a failure with a traceback of its own (scripts/launch.sh then
    exits 130 itself)."""
    return 0 if os.environ.get("TORCHELASTIC_RUN_ID") else INTERRUPT_EXIT_CODE


class BadInputError(ValueError):
    """The user gave something unusable: a flag value, a file, a checkpoint, a run folder (exit code 2)."""

    exit_code = BAD_INPUT_EXIT_CODE


class RunFailure(RuntimeError):
    """The run started from good input but cannot go on: a full disk, non-finite weights (exit code 1)."""

    exit_code = RUN_FAILURE_EXIT_CODE
