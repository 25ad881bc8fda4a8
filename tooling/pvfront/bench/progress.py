"""What the bench says while it runs, and how one failed measurement is kept."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pvfront.bench.results import BenchReport
from pvfront.console import CommandFailed, GuestError
from pvfront.qemu import QmpError


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def record(report: BenchReport, failure: str, action: Callable[[], None]) -> None:
    """Run one boot; a guest failure is reported and the bench goes on with the rest."""
    try:
        action()
    except (GuestError, CommandFailed, QmpError, ValueError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.errors.append(f"{failure}: {first}")
        say(f"FAILED {failure}: {first}")
