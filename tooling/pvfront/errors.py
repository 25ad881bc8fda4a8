"""Errors a user can cause or fix, each carrying the exit code the CLI returns for it."""

from __future__ import annotations

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
