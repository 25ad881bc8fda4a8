"""Errors a user can cause or fix, each carrying the exit code the CLI returns for it."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

#: Exit codes shared by the CLI, the invoke tasks and the test harness.
EXIT_OK = 0
EXIT_FAILED = 1  # the thing under test failed (a build, a check, a guest scenario)
EXIT_SETUP = 2  # bad usage, unreadable input, missing tool or mirror: nothing was tested
EXIT_KERNEL = 3  # the guest kernel crashed or hung


class PvfrontError(Exception):
    """An error reported to the user as one line, without a traceback."""

    exit_code = EXIT_SETUP

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(PvfrontError):
    """The command line or a data file asks for something that does not exist."""


class SetupError(PvfrontError):
    """The host lacks a tool, a kernel target or network access that the command needs."""


class ArchiveUnavailable(SetupError):
    """An unstable suite's archive cannot provide a target today (apt says a package is
    missing or uninstallable): the target is unavailable, which is not a pvfront failure."""


class FailedError(PvfrontError):
    """The work ran and its result is a failure (exit 1)."""

    exit_code = EXIT_FAILED


def read_input(path: str | Path, error: type[PvfrontError]) -> bytes:
    """The bytes of a file the user named; a missing or unreadable one is one `error` line."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None


#: OSErrors without a file name that still say something a user can act on.
_USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def describe(exc: OSError) -> str | None:
    """One line for an OSError a user can fix (a path they named, a full or read-only disk),
    naming the file when the error knows it; None for anything else (a bug: a traceback)."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        if exc.filename2 is not None:
            return f"{exc.filename} -> {exc.filename2}: {reason}"
        return f"{exc.filename}: {reason}"
    if exc.errno not in _USER_ERRNOS:
        return None
    from pvfront.workspace import default_cache  # errors.py is imported by everything

    return f"{reason} (pvfront writes to its cache {default_cache()} and to build/)"


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body the way every shell (the CLI, the invoke tasks) reports it: a
    PvfrontError or an OSError on a path is one `pvfront: error:` line on stderr and its exit
    code (2 for the OSError), Ctrl-C is 130 and a closed stdout pipe 2, without a traceback."""
    try:
        return body()
    except PvfrontError as exc:
        message, code = str(exc), exc.exit_code
    except KeyboardInterrupt:
        print("pvfront: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_SETUP
    except OSError as exc:
        described = describe(exc)
        if described is None:
            raise
        message, code = described, EXIT_SETUP
    print(f"pvfront: error: {message}", file=sys.stderr)
    return code
