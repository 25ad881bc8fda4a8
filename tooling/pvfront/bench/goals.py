"""The figures pvfront must reach, judged on a report's measurements."""

from __future__ import annotations

from collections.abc import Sequence

from pvfront.bench.plan import (
    AHCI,
    NET_COST_UNITS,
    NET_DIRECTIONS,
    PVF_BLK,
    PVF_NET,
    VIRTIO_BLK,
    VIRTIO_NET,
    FioJob,
    NetJob,
)
from pvfront.bench.results import BenchReport, Goal, Toolchain, median, ratio


def _cost_ratio(
    report: BenchReport,
    subject: str,
    ours: str,
    theirs: str,
    workload: str,
    metric: str,
    unit: str | None = None,
) -> float | None:
    mine = report.find_cost(subject, ours, workload, unit)
    other = report.find_cost(subject, theirs, workload, unit)
    if mine is None or other is None:
        return None
    return ratio(mine.median_per_unit(metric), other.median_per_unit(metric))


def throughput_ratio(
    report: BenchReport, subject: str, ours: str, theirs: str, workload: str
) -> float | None:
    mine = report.find_throughput(subject, ours, workload)
    other = report.find_throughput(subject, theirs, workload)
    if mine is None or other is None:
        return None
    return ratio(mine.median, other.median)


def block_goals(report: BenchReport, jobs: Sequence[FioJob]) -> list[Goal]:
    goals = []
    for job in jobs:
        if job.iodepth == 1:
            goals.append(
                Goal(
                    f"blk {job.name}: notifications/request <= {VIRTIO_BLK}",
                    _cost_ratio(report, "blk", PVF_BLK, VIRTIO_BLK, job.name, "notifications"),
                    1.0,
                    "lower",
                    "x",
                    f"{PVF_BLK} / {VIRTIO_BLK} notifications per request",
                )
            )
        else:
            goals.append(
                Goal(
                    f"blk {job.name}: (notifications+interrupts)/request <= 0.9x {VIRTIO_BLK}",
                    _cost_ratio(
                        report, "blk", PVF_BLK, VIRTIO_BLK, job.name, "notifications+interrupts"
                    ),
                    0.9,
                    "lower",
                    "x",
                    f"{PVF_BLK} / {VIRTIO_BLK} (notifications + interrupts) per request",
                )
            )
        if job.rw.startswith("rand"):
            exits = _cost_ratio(report, "blk", AHCI, PVF_BLK, job.name, "exits")
            goals.append(
                Goal(
                    f"blk {job.name}: >= 5x fewer exits/request than {AHCI}",
                    exits,
                    5.0,
                    "higher",
                    "x",
                    f"{AHCI} / {PVF_BLK} device exits per request",
                )
            )
    for job in jobs:
        if job.throughput:
            goals.append(
                Goal(
                    f"blk {job.name}: {job.unit} >= 1.0x {VIRTIO_BLK}",
                    throughput_ratio(report, "blk", PVF_BLK, VIRTIO_BLK, job.name),
                    1.0,
                    "higher",
                    "x",
                    f"{PVF_BLK} / {VIRTIO_BLK} median {job.unit}",
                )
            )
    return goals


#: Latency may trail the in-tree driver's by this much (the issue's goal).
RR_LIMIT = 1.05


def net_goals(report: BenchReport, jobs: Sequence[NetJob]) -> list[Goal]:
    """Exits per packet and per KiB each way, then every stream job's throughput and the
    round trip, each against virtio_net in the same run."""
    goals = [
        Goal(
            f"net {direction}: exits/{unit} <= {VIRTIO_NET}",
            _cost_ratio(report, "net", PVF_NET, VIRTIO_NET, direction, "exits", unit),
            1.0,
            "lower",
            "x",
            f"{PVF_NET} / {VIRTIO_NET} device exits per {unit}",
        )
        for direction in NET_DIRECTIONS
        # Per KiB is the goal: a driver that sends bigger packets needs fewer.
        for unit in NET_COST_UNITS
    ]
    for job in jobs:
        measured = throughput_ratio(report, "net", PVF_NET, VIRTIO_NET, job.name)
        if job.kind == "stream":
            # QEMU's virtio-net is not offered MQ here: the flows share one queue pair.
            flows = f", {job.flows} flows on one queue pair" if job.flows > 1 else ""
            goals.append(
                Goal(
                    f"net {job.name}: MB/s >= {VIRTIO_NET}",
                    measured,
                    1.0,
                    "higher",
                    "x",
                    f"{PVF_NET} / {VIRTIO_NET} median MB/s{flows}",
                )
            )
        elif job.kind == "rr":
            goals.append(
                Goal(
                    f"net {job.name}: round trip <= {RR_LIMIT}x {VIRTIO_NET}",
                    measured,
                    RR_LIMIT,
                    "lower",
                    "x",
                    f"{PVF_NET} / {VIRTIO_NET} median of the mean ICMP echo round trip",
                )
            )
    return goals


def toolchain_goals(tools: Toolchain) -> list[Goal]:
    depmod = median(tools.depmod_s)
    return [
        Goal(
            "symcheck full tree cold <= 3x depmod",
            ratio(tools.symcheck_cold_s, depmod),
            3.0,
            "lower",
            "x",
            "symcheck cold / median depmod -n -e -E",
        ),
        Goal(
            "symcheck full tree warm <= 1x depmod",
            ratio(tools.symcheck_warm_s, depmod),
            1.0,
            "lower",
            "x",
            "symcheck warm / median depmod -n -e -E",
        ),
        Goal(
            "boot to first command <= 3 s",
            median(tools.boot_s),
            3.0,
            "lower",
            "s",
            "median seconds from starting QEMU to the first command's result",
        ),
        Goal(
            "Debian guest to login shell <= 25 s",
            median(tools.image_boot_s),
            25.0,
            "lower",
            "s",
            "median seconds from starting QEMU to the first command in the image's root "
            "login shell: firmware, GRUB, kernel, initramfs-tools, systemd",
        ),
    ]
