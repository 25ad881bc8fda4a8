"""What a run measured: figures per boot, their medians and ratios, and judged goals."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pvfront.image import BootPhases


@dataclass
class Throughput:
    """A throughput figure per boot; compared through its median."""

    subject: str  # blk | net
    setup: str
    workload: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return median(self.samples)


@dataclass
class CostSample:
    """What one traced workload cost the hypervisor, over `units` requests or packets."""

    units: int
    notifications: int
    exits: int  # register accesses (MMIO/PIO) to the device plus notifications
    interrupts: int
    regions: dict[str, int] = field(default_factory=dict)  # "op region" -> accesses
    # Notifications by virtqueue ("vq0") and interrupts by /proc/interrupts row name: which
    # queue (RX or TX, request or config) a difference comes from.
    queues: dict[str, int] = field(default_factory=dict)

    def per_unit(self) -> dict[str, float | None]:
        return {
            "notifications": ratio(self.notifications, self.units),
            "exits": ratio(self.exits, self.units),
            "interrupts": ratio(self.interrupts, self.units),
            "notifications+interrupts": ratio(self.notifications + self.interrupts, self.units),
        }


@dataclass
class Cost:
    subject: str
    setup: str
    workload: str
    unit: str  # request | packet
    samples: list[CostSample] = field(default_factory=list)

    def median_per_unit(self, metric: str) -> float | None:
        return median([s.per_unit()[metric] for s in self.samples])


@dataclass
class Toolchain:
    symcheck_cold_s: float | None = None
    symcheck_warm_s: float | None = None
    symcheck_modules: int | None = None
    depmod_s: list[float] = field(default_factory=list)
    boot_s: list[float] = field(default_factory=list)
    setup_build_s: list[float] = field(default_factory=list)
    image_boots: list[BootPhases] = field(default_factory=list)

    @property
    def image_boot_s(self) -> list[float]:
        return [boot.total_s for boot in self.image_boots]


@dataclass(frozen=True)
class Goal:
    """A target figure: `measured` must be <= (better='lower') or >= `limit`."""

    name: str
    measured: float | None
    limit: float
    better: str  # lower | higher
    unit: str  # "x" for a ratio, "s" for seconds
    basis: str  # how measured was computed, in words

    @property
    def verdict(self) -> str:
        return judge(self.measured, self.limit, self.better)

    @property
    def gap(self) -> str:
        return describe_gap(self.measured, self.limit, self.better, self.unit)


@dataclass
class BenchReport:
    timestamp: str
    quick: bool
    machine: dict[str, Any]
    target: str
    release: str
    plan: dict[str, Any]
    throughput: list[Throughput] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    toolchain: Toolchain = field(default_factory=Toolchain)
    goals: list[Goal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # measurements that failed
    notes: list[str] = field(default_factory=list)  # how this run differs from the plan
    seconds: float = 0.0
    remaining: list[str] = field(default_factory=list)  # steps an interrupted run did not finish

    def find_throughput(self, subject: str, setup: str, workload: str) -> Throughput | None:
        return next(
            (
                t
                for t in self.throughput
                if (t.subject, t.setup, t.workload) == (subject, setup, workload)
            ),
            None,
        )

    def find_cost(
        self, subject: str, setup: str, workload: str, unit: str | None = None
    ) -> Cost | None:
        """The workload's cost per `unit`, or per the first unit it is counted in."""
        return next(
            (
                c
                for c in self.costs
                if (c.subject, c.setup, c.workload) == (subject, setup, workload)
                and unit in (None, c.unit)
            ),
            None,
        )


# --------------------------------------------------------------------------- pure helpers


def median(values: Iterable[float | None]) -> float | None:
    """The median of the figures that exist; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def judge(measured: float | None, limit: float, better: str) -> str:
    """met / short against the limit, or n/a when nothing was measured."""
    if measured is None:
        return "n/a"
    if better == "lower":
        return "met" if measured <= limit else "short"
    if better == "higher":
        return "met" if measured >= limit else "short"
    raise ValueError(f"better must be 'lower' or 'higher', not {better!r}")


def describe_gap(measured: float | None, limit: float, better: str, unit: str) -> str:
    """How far a short goal is from its limit, in its own unit and in percent."""
    if judge(measured, limit, better) != "short":
        return ""
    assert measured is not None
    missing = measured - limit if better == "lower" else limit - measured
    percent = f" ({100 * missing / limit:.0f}%)" if limit else ""
    direction = "over" if better == "lower" else "under"
    return f"{missing:.2f}{unit} {direction}{percent}"
