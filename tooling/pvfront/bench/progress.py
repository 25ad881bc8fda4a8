"""What the bench says while it runs: a line before each measured step, with the time left."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pvfront.bench.results import BenchReport
from pvfront.console import CommandFailed, GuestError
from pvfront.qemu import QmpError


@dataclass(frozen=True)
class Step:
    """One measured step of a run (a boot, a timing): `name` is how errors and an interrupted
    run's JSON call it, `says` what its progress line says."""

    name: str
    says: str
    action: Callable[[], None]


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def time_left(durations: Sequence[float], steps_left: int) -> float | None:
    """Seconds the steps left should take at the mean pace so far; None before any finished."""
    if not durations:
        return None
    return statistics.fmean(durations) * steps_left


def progress_line(number: int, total: int, durations: Sequence[float], says: str) -> str:
    """`step 5/28, about 4 min left: ...` before step `number` (from 1), the estimate counting
    that step; no estimate before the first step has finished."""
    left = time_left(durations, total - number + 1)
    if left is None:
        return f"step {number}/{total}: {says}"
    minutes = round(left / 60)
    estimate = f"about {minutes} min left" if minutes else "under a minute left"
    return f"step {number}/{total}, {estimate}: {says}"


def run_steps(
    report: BenchReport, steps: Sequence[Step], clock: Callable[[], float] = time.monotonic
) -> None:
    """Run the steps in order, each after its progress line on stderr. `report.remaining`
    names the steps not finished yet at every moment: an interrupted run knows what it lacks."""
    report.remaining = [step.name for step in steps]
    durations: list[float] = []
    for number, step in enumerate(steps, 1):
        say(progress_line(number, len(steps), durations, step.says))
        started = clock()
        step.action()
        durations.append(clock() - started)
        del report.remaining[0]


def record(report: BenchReport, failure: str, action: Callable[[], None]) -> None:
    """Run one boot; a guest failure is reported and the bench goes on with the rest."""
    try:
        action()
    except (GuestError, CommandFailed, QmpError, ValueError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.errors.append(f"{failure}: {first}")
        say(f"FAILED {failure}: {first}")


def measured(report: BenchReport, name: str, says: str, action: Callable[[], None]) -> Step:
    """A step whose failure is recorded under its name, and the run goes on."""
    return Step(name, says, lambda: record(report, name, action))
