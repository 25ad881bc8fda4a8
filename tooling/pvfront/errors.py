"""Errors a user can cause or fix, each carrying the exit code the CLI returns for it."""

from __future__ import annotations

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


class FailedError(PvfrontError):
    """The work ran and its result is a failure (exit 1)."""

    exit_code = EXIT_FAILED
