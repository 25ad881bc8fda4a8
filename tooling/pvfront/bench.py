"""How much faster is pvfront than the in-tree and emulated devices? Measured, not assumed.

Under TCG wall time is emulation-bound and noisy, so the headline figures are what a hypervisor
pays per request: device notifications, accesses to the device's MMIO/PIO registers (each one
an exit under KVM) and interrupts. They come from QEMU's trace events, switched on over QMP
only around the workload so boot and console traffic stay out of the counts, and from the
guest's own counters (/proc/interrupts, /sys/block/*/stat, interface statistics). Throughput
is measured in separate boots without tracing, in the same QEMU configuration and on the same
disk image, the setups alternating boot by boot, and is compared as a ratio.

Every measurement is a function returning dataclasses; `run_bench` runs them all, judges the
goals and `write_outputs` keeps the JSON (and a chart) under build/bench/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pvfront import image, initramfs, provision, symcheck
from pvfront.console import CommandFailed, GuestError
from pvfront.errors import EXIT_FAILED, EXIT_OK, UsageError
from pvfront.guest import Guest, choose_accel, make_disk, measure_boot
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Disk, Nic, QmpError, Trace
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

JSON_VERSION = 1
# The events counted; QMP switches them on only around a workload.
TRACE_EVENTS = ("virtio_queue_notify", "memory_region_ops_read", "memory_region_ops_write")
NOTIFY_EVENT = "virtio_queue_notify"
REGION_EVENTS = ("memory_region_ops_read", "memory_region_ops_write")
GUEST_MEMORY_MIB = 512  # fio's shared libraries make the initramfs about 90 MB
BIG_COMMAND_TIMEOUT = 300.0
NET_CONNECT_TIMEOUT = 60.0
# Only addresses inside QEMU's user network: the host's loopback is 10.0.2.2 there.
GUEST_ADDRESS = "10.0.2.15/24"
HOST_FROM_GUEST = "10.0.2.2"


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- what is compared


@dataclass(frozen=True)
class BlockSetup:
    """One way of giving the guest the bench disk: device model, driver, names in the guest."""

    name: str
    interface: str  # qemu.Disk interface
    device: str  # guest block device
    ours: bool = False  # load the pvf_* modules
    in_tree: tuple[str, ...] = ()  # in-tree modules to modprobe
    regions: str = ""  # regex: QEMU memory regions that are this device's registers
    irqs: str = ""  # regex: this device's /proc/interrupts rows
    machine: str | None = None  # a machine other than the target's (legacy IDE needs pc)


@dataclass(frozen=True)
class NetSetup:
    name: str
    model: str  # qemu.Nic model
    ours: bool = False
    in_tree: tuple[str, ...] = ()
    regions: str = ""
    irqs: str = ""


PVF_BLK = "pvf_blk"
VIRTIO_BLK = "virtio_blk"
AHCI = "ahci"
IDE = "ide"
PVF_NET = "pvf_net"
VIRTIO_NET = "virtio_net"
E1000 = "e1000"


def block_setups(quick: bool) -> list[BlockSetup]:
    """pvf_blk, the in-tree virtio_blk, AHCI on q35 and (full runs) legacy IDE on pc."""
    setups = [
        BlockSetup(
            PVF_BLK,
            "virtio",
            "pvda",
            ours=True,
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bpvf\d+-(req\.|virtqueues|intx)",
        ),
        BlockSetup(
            VIRTIO_BLK,
            "virtio",
            "vda",
            in_tree=("virtio_pci", "virtio_blk"),
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bvirtio\d+-(req\.|virtqueues)",
        ),
        BlockSetup(
            AHCI, "ahci", "sda", in_tree=("ahci", "sd_mod"), regions=r"^ahci", irqs=r"\bahci\b"
        ),
    ]
    if not quick:
        # q35 has no legacy IDE controller: IDE runs on pc, the only setup that differs.
        setups.append(
            BlockSetup(
                IDE,
                "ide",
                "sda",
                in_tree=("ata_piix", "sd_mod"),
                regions=r"^ide$|bmdma",
                irqs=r"\bata_piix\b",
                machine="pc",
            )
        )
    return setups


def net_setups() -> list[NetSetup]:
    return [
        NetSetup(
            PVF_NET,
            "virtio",
            ours=True,
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bpvf\d+-(input|output|virtqueues|intx)",
        ),
        NetSetup(
            VIRTIO_NET,
            "virtio",
            in_tree=("virtio_pci", "virtio_net"),
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bvirtio\d+-(input|output|virtqueues)",
        ),
        NetSetup(E1000, "e1000", in_tree=("e1000",), regions=r"^e1000", irqs=r"\beth\d+\b"),
    ]


@dataclass(frozen=True)
class FioJob:
    """One fio workload; `traced_ios` bounds it by request count in the traced boots."""

    name: str
    rw: str
    bs: str
    iodepth: int
    traced_ios: int
    unit: str  # the throughput figure reported: MB/s or IOPS
    extra: tuple[str, ...] = ()
    throughput: bool = True  # False: only measured in traced boots (a diagnostic)


def fio_jobs(quick: bool) -> list[FioJob]:
    scale = 1 if quick else 2
    return [
        FioJob("seqread-1m", "read", "1M", 1, 16 * scale, "MB/s"),
        FioJob("seqwrite-1m", "write", "1M", 1, 16 * scale, "MB/s"),
        FioJob("randread-4k-qd1", "randread", "4k", 1, 250 * scale, "IOPS"),
        FioJob("randwrite-4k-qd1", "randwrite", "4k", 1, 250 * scale, "IOPS"),
        FioJob("randread-4k-qd16", "randread", "4k", 16, 1000 * scale, "IOPS"),
        FioJob("randwrite-4k-qd16", "randwrite", "4k", 16, 1000 * scale, "IOPS"),
        # Sixteen requests per io_submit: one plug, so blk-mq marks only the last one
        # bd->last. Tells whether a driver kicks once per batch or once per request.
        FioJob(
            "randread-4k-qd16-batch",
            "randread",
            "4k",
            16,
            1000 * scale,
            "IOPS",
            extra=("--iodepth_batch_submit=16", "--iodepth_batch_complete_min=16"),
            throughput=False,
        ),
    ]


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does."""

    quick: bool
    reps: int  # boots per setup (median over them)
    fio_seconds: int
    disk_mib: int
    net_bytes: int
    boot_runs: int
    depmod_runs: int
    build_runs: int
    image_boot_runs: int  # boots of the target's Debian image, firmware to login shell


def make_plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            quick=True,
            reps=1,
            fio_seconds=2,
            disk_mib=128,
            net_bytes=8 << 20,
            boot_runs=3,
            depmod_runs=3,
            build_runs=1,
            image_boot_runs=1,
        )
    return Plan(
        quick=False,
        reps=3,
        fio_seconds=4,
        disk_mib=256,
        net_bytes=32 << 20,
        boot_runs=5,
        depmod_runs=5,
        build_runs=3,
        image_boot_runs=3,
    )


# --------------------------------------------------------------------------- results


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
    image_boot_s: list[float] = field(default_factory=list)


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

    def find_throughput(self, subject: str, setup: str, workload: str) -> Throughput | None:
        return next(
            (
                t
                for t in self.throughput
                if (t.subject, t.setup, t.workload) == (subject, setup, workload)
            ),
            None,
        )

    def find_cost(self, subject: str, setup: str, workload: str) -> Cost | None:
        return next(
            (
                c
                for c in self.costs
                if (c.subject, c.setup, c.workload) == (subject, setup, workload)
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


_TRACE_LINE = re.compile(r"^(?:\d+@[\d.]+:)?(?P<event>\w+)\s(?P<rest>.*)$")
_REGION_NAME = re.compile(r"\bname '(?P<name>[^']*)'")
_QUEUE_INDEX = re.compile(r"\bn (?P<n>\d+)\b")


@dataclass
class TraceCounts:
    """Trace events counted by name, and memory-region accesses by (event, region)."""

    events: Counter[str] = field(default_factory=Counter)
    regions: Counter[tuple[str, str]] = field(default_factory=Counter)
    notified_queues: Counter[str] = field(default_factory=Counter)  # "vq<n>" -> notifications

    def region_accesses(self, pattern: str) -> int:
        """Reads and writes to regions whose name matches pattern."""
        compiled = re.compile(pattern)
        return sum(n for (_, name), n in self.regions.items() if compiled.search(name))

    def region_table(self, pattern: str) -> dict[str, int]:
        compiled = re.compile(pattern)
        return {
            f"{event.removeprefix('memory_region_ops_')} {name}": n
            for (event, name), n in sorted(self.regions.items())
            if compiled.search(name)
        }


def parse_trace(lines: Iterable[str]) -> TraceCounts:
    """Count a QEMU log-backend trace (with or without the `pid@time:` prefix)."""
    counts = TraceCounts()
    for line in lines:
        match = _TRACE_LINE.match(line.strip())
        if not match:
            continue
        event = match.group("event")
        counts.events[event] += 1
        if event in REGION_EVENTS:
            name = _REGION_NAME.search(match.group("rest"))
            counts.regions[(event, name.group("name") if name else "")] += 1
        elif event == NOTIFY_EVENT:
            queue = _QUEUE_INDEX.search(match.group("rest"))
            counts.notified_queues[f"vq{queue.group('n')}" if queue else "vq?"] += 1
    return counts


def parse_interrupts(text: str) -> dict[str, tuple[int, str]]:
    """/proc/interrupts: row label -> (count summed over CPUs, description)."""
    lines = text.splitlines()
    header = next((line for line in lines if "CPU" in line), "")
    cpus = len(re.findall(r"\bCPU\d+\b", header)) or 1
    rows = {}
    for line in lines:
        match = re.match(r"^\s*([^\s:]+):\s*(.*)$", line)
        if not match or "CPU" in line.split(":")[0]:
            continue
        fields = match.group(2).split()
        counts = []
        for token in fields[:cpus]:
            if not token.isdigit():
                break
            counts.append(int(token))
        if not counts:
            continue
        rows[match.group(1)] = (sum(counts), " ".join(fields[len(counts) :]))
    return rows


def interrupt_rows(
    before: Mapping[str, tuple[int, str]], after: Mapping[str, tuple[int, str]], pattern: str
) -> dict[str, int]:
    """Interrupts taken between two /proc/interrupts readings, by the name of each row whose
    description matches pattern (a row that appeared meanwhile counts from zero)."""
    compiled = re.compile(pattern)
    rows: dict[str, int] = {}
    for label, (count, description) in after.items():
        if compiled.search(description):
            name = f"irq {description.split()[-1]}"
            rows[name] = rows.get(name, 0) + count - before.get(label, (0, ""))[0]
    return rows


def interrupt_delta(
    before: Mapping[str, tuple[int, str]], after: Mapping[str, tuple[int, str]], pattern: str
) -> int:
    """Interrupts taken between two /proc/interrupts readings by rows matching pattern."""
    return sum(interrupt_rows(before, after, pattern).values())


def parse_block_stat(text: str) -> int:
    """Requests completed (reads + writes) from /sys/block/<dev>/stat."""
    fields = text.split()
    if len(fields) < 5:
        raise ValueError(f"not a block stat line: {text!r}")
    return int(fields[0]) + int(fields[4])


def parse_fio_json(text: str) -> dict[str, float]:
    """fio --output-format=json (possibly after warnings): bytes/s and IOPS, both directions."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio's output")
    data = json.loads(text[start:])
    job = data["jobs"][0]
    if job.get("error"):
        raise ValueError(f"fio job failed with error {job['error']}")
    return {
        f"{direction}_{key}": float(job[direction][key])
        for direction in ("read", "write")
        for key in ("bw_bytes", "iops")
    }


def fio_figure(result: Mapping[str, float], job: FioJob) -> float:
    """The job's headline: MB/s (decimal) or IOPS, of the direction it exercises."""
    direction = "write" if "write" in job.rw else "read"
    if job.unit == "MB/s":
        return result[f"{direction}_bw_bytes"] / 1e6
    return result[f"{direction}_iops"]


def fio_command(job: FioJob, device: str, *, seconds: int | None, ios: int | None, out: str) -> str:
    """The fio invocation: direct I/O on the raw device, bounded by time or request count."""
    argv = [
        "fio",
        f"--name={job.name}",
        f"--filename=/dev/{device}",
        "--direct=1",
        f"--rw={job.rw}",
        f"--bs={job.bs}",
        "--ioengine=libaio",
        f"--iodepth={job.iodepth}",
        *job.extra,
        "--output-format=json",
        f"--output={out}",
    ]
    if seconds is not None:
        argv += [f"--runtime={seconds}", "--time_based"]
    if ios is not None:
        argv.append(f"--number_ios={ios}")
    return " ".join(argv)


def uptime_span(output: str) -> float:
    """Seconds between the two /proc/uptime readings a guest command echoed as `@@ a b`."""
    match = re.search(r"^@@ ([\d.]+) ([\d.]+)", output, re.M)
    if not match:
        raise ValueError(f"no timing line in {output!r}")
    return float(match.group(2)) - float(match.group(1))


# --------------------------------------------------------------------------- goals


def _cost_ratio(
    report: BenchReport, subject: str, ours: str, theirs: str, workload: str, metric: str
) -> float | None:
    mine = report.find_cost(subject, ours, workload)
    other = report.find_cost(subject, theirs, workload)
    if mine is None or other is None:
        return None
    return ratio(mine.median_per_unit(metric), other.median_per_unit(metric))


def _throughput_ratio(
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
                    _throughput_ratio(report, "blk", PVF_BLK, VIRTIO_BLK, job.name),
                    1.0,
                    "higher",
                    "x",
                    f"{PVF_BLK} / {VIRTIO_BLK} median {job.unit}",
                )
            )
    return goals


NET_DIRECTIONS = ("guest-to-host", "host-to-guest")


def net_goals(report: BenchReport) -> list[Goal]:
    goals = []
    for direction in NET_DIRECTIONS:
        goals.append(
            Goal(
                f"net {direction}: exits/packet <= {VIRTIO_NET}",
                _cost_ratio(report, "net", PVF_NET, VIRTIO_NET, direction, "exits"),
                1.0,
                "lower",
                "x",
                f"{PVF_NET} / {VIRTIO_NET} device exits per packet",
            )
        )
        goals.append(
            Goal(
                f"net {direction}: MB/s >= {VIRTIO_NET}",
                _throughput_ratio(report, "net", PVF_NET, VIRTIO_NET, direction),
                1.0,
                "higher",
                "x",
                f"{PVF_NET} / {VIRTIO_NET} median MB/s",
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


# --------------------------------------------------------------------------- guests


def fio_files(tree: KernelTree) -> dict[str, Path] | None:
    """The host's fio and every library it loads, for the guest; None where they cannot run.

    The host's fio is an x86_64 binary: it runs in an amd64 guest only.
    """
    fio = shutil.which("fio")
    if fio is None or tree.target.arch != "amd64" or platform.machine() != "x86_64":
        return None
    output = subprocess.run(["ldd", fio], capture_output=True, text=True, check=False).stdout
    files: dict[str, Path] = {"/usr/bin/fio": Path(fio).resolve()}
    for line in output.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > 2 and parts[2].startswith("/"):
            files[parts[2]] = Path(parts[2]).resolve()
        elif parts and parts[0].startswith("/"):  # the dynamic loader itself
            files[parts[0]] = Path(parts[0]).resolve()
    return files


@dataclass
class Images:
    """Initramfs images built once per setup and reused by every boot of it."""

    ws: Workspace
    tree: KernelTree
    directory: Path
    files: Mapping[str, Path]
    built: dict[str, initramfs.Initramfs] = field(default_factory=dict)

    def get(self, name: str, ours: bool, in_tree: Sequence[str]) -> initramfs.Initramfs:
        if name not in self.built:
            modules = (
                sorted(self.ws.target_build_dir(self.tree.target.id).glob("pvf_*.ko"))
                if ours
                else []
            )
            if ours and not modules:
                raise UsageError(
                    f"{self.ws.target_build_dir(self.tree.target.id)}: no pvf_*.ko "
                    f"(run: pvfront build --target {self.tree.target.id})"
                )
            spec = initramfs.ImageSpec(
                modules=modules,
                in_tree_modules=list(in_tree),
                files=dict(self.files),
                init=initramfs.InitOptions(load_modules=ours),
                # Uncompressed: about 90 MB of fio libraries unpack faster than they inflate.
                gzip_level=None,
            )
            self.built[name] = initramfs.build(
                self.tree, spec, self.directory / f"{name}.cpio", self.ws.build_dir / "modindex"
            )
        return self.built[name]


def _tree_for(tree: KernelTree, machine: str | None) -> KernelTree:
    if machine is None or machine == tree.target.machine:
        return tree
    return dataclasses.replace(tree, target=dataclasses.replace(tree.target, machine=machine))


@contextlib.contextmanager
def _guest(
    ws: Workspace,
    tree: KernelTree,
    image: initramfs.Initramfs,
    in_tree: Sequence[str],
    trace_dir: Path | None,
    label: str,
    **devices: Any,
) -> Iterator[Guest]:
    """A booted guest with the setup's drivers loaded; traced guests get QMP and a trace file."""
    trace = None
    if trace_dir is not None:
        # Nothing is traced from the start: QMP switches the events on around the workload.
        events = trace_dir / "events"
        events.write_text("")
        trace = Trace(events, trace_dir / f"{label}.trace")
    with Guest(
        ws,
        tree,
        image=image.path,
        memory_mib=GUEST_MEMORY_MIB,
        trace=trace,
        qmp=trace is not None,
        label=f"bench-{label}",
        command_timeout=BIG_COMMAND_TIMEOUT,
        **devices,
    ) as guest:
        if in_tree:
            guest.run("modprobe -a " + " ".join(in_tree))
        yield guest


class TraceWindow:
    """Trace events on only while the `with` block runs; `counts` holds what they logged."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        trace = guest.trace
        if trace is None:
            raise UsageError("TraceWindow needs a guest started with trace=")
        self.path = trace.out
        self.counts = TraceCounts()
        self._offset = 0

    def _set(self, enable: bool) -> None:
        for name in TRACE_EVENTS:
            self.guest.qmp.execute("trace-event-set-state", name=name, enable=enable)

    def __enter__(self) -> TraceWindow:
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        self._set(True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._set(False)
        # query-status is a round trip through the main loop, which writes the log lines.
        self.guest.qmp.execute("query-status")
        with self.path.open(errors="replace") as log:
            log.seek(self._offset)
            self.counts = parse_trace(log)


def cost_sample(
    units: int,
    counts: TraceCounts,
    irq_before: Mapping[str, tuple[int, str]],
    irq_after: Mapping[str, tuple[int, str]],
    regions: str,
    irqs: str,
) -> CostSample:
    """One traced window's cost: exits are the notifications plus register accesses."""
    notifications = counts.events[NOTIFY_EVENT]
    by_row = interrupt_rows(irq_before, irq_after, irqs)
    return CostSample(
        units=units,
        notifications=notifications,
        exits=notifications + counts.region_accesses(regions),
        interrupts=sum(by_row.values()),
        regions=counts.region_table(regions),
        queues={**{f"notify {q}": n for q, n in sorted(counts.notified_queues.items())}, **by_row},
    )


def _interrupts(guest: Guest) -> dict[str, tuple[int, str]]:
    return parse_interrupts(guest.run("cat /proc/interrupts").output)


def _wait_for(guest: Guest, test: str, seconds: int = 30) -> None:
    """Poll a shell test until it holds; CommandFailed after `seconds`."""
    # A subshell: `exit` must not end the guest's shell.
    guest.run(
        f"(i=0; while ! {test}; do i=$((i+1)); [ $i -gt {seconds * 10} ] && exit 1; "
        f"sleep 0.1; done)",
        timeout=seconds + 10,
    )


# --------------------------------------------------------------------------- block


def _run_fio(
    guest: Guest, job: FioJob, device: str, *, seconds: int | None, ios: int | None
) -> dict[str, float]:
    out = f"/tmp/{job.name}.json"
    command = fio_command(job, device, seconds=seconds, ios=ios, out=out)
    guest.run(f"{command} >/dev/null", timeout=BIG_COMMAND_TIMEOUT)
    return parse_fio_json(guest.run(f"tr -d '\\n' < {out}; rm -f {out}").output)


def _dd_throughput(guest: Guest, job: FioJob, device: str, seconds: int) -> float:
    """Without fio (no runnable binary for this arch): parallel dd, one stream per queue slot.

    Each stream reads or writes its own slice sequentially: a stand-in for the queue depth,
    not random I/O.
    """
    block = 1 << 20 if job.bs.upper() == "1M" else 4096
    count = max(1, (seconds * (64 if block == 4096 else 4) * 1024 * 1024) // block // job.iodepth)
    direction = (
        "if=/dev/zero of=/dev/{d} oflag=direct seek={s}"
        if "write" in job.rw
        else "if=/dev/{d} of=/dev/null iflag=direct skip={s}"
    )
    streams = " ".join(
        f"dd {direction.format(d=device, s=i * count)} bs={block} count={count} 2>/dev/null &"
        for i in range(job.iodepth)
    )
    output = guest.run(
        f"a=$(cut -d' ' -f1 /proc/uptime); {streams} wait; "
        f"b=$(cut -d' ' -f1 /proc/uptime); echo \"@@ $a $b\"",
        timeout=BIG_COMMAND_TIMEOUT,
    ).output
    span = uptime_span(output)
    total = count * job.iodepth
    return total * block / span / 1e6 if job.unit == "MB/s" else total / span


def block_throughput_boot(
    ws: Workspace,
    tree: KernelTree,
    setup: BlockSetup,
    image: initramfs.Initramfs,
    disk: Path,
    jobs: Sequence[FioJob],
    plan: Plan,
    have_fio: bool,
) -> dict[str, float]:
    """One boot without tracing: every throughput job on the setup's device."""
    figures = {}
    with _guest(
        ws,
        _tree_for(tree, setup.machine),
        image,
        setup.in_tree,
        None,
        f"blk-{setup.name}",
        disks=[Disk(disk, interface=setup.interface)],
    ) as guest:
        _wait_for(guest, f"[ -b /dev/{setup.device} ]")
        for job in jobs:
            if not job.throughput:
                continue
            if have_fio:
                result = _run_fio(guest, job, setup.device, seconds=plan.fio_seconds, ios=None)
                figures[job.name] = fio_figure(result, job)
            else:
                figures[job.name] = _dd_throughput(guest, job, setup.device, plan.fio_seconds)
    return figures


def block_cost_boot(
    ws: Workspace,
    tree: KernelTree,
    setup: BlockSetup,
    image: initramfs.Initramfs,
    disk: Path,
    jobs: Sequence[FioJob],
    trace_dir: Path,
    have_fio: bool,
) -> dict[str, CostSample]:
    """One traced boot: each job bounded by request count, counted between QMP switches."""
    samples = {}
    with _guest(
        ws,
        _tree_for(tree, setup.machine),
        image,
        setup.in_tree,
        trace_dir,
        f"blk-{setup.name}-traced",
        disks=[Disk(disk, interface=setup.interface)],
    ) as guest:
        _wait_for(guest, f"[ -b /dev/{setup.device} ]")
        stat = f"cat /sys/block/{setup.device}/stat"
        for job in jobs:
            if not have_fio and job.extra:
                continue  # batching needs fio's io_submit; dd cannot ask for it
            before_irq = _interrupts(guest)
            before = parse_block_stat(guest.run(stat).output)
            with TraceWindow(guest) as window:
                if have_fio:
                    guest.run(
                        fio_command(
                            job, setup.device, seconds=None, ios=job.traced_ios, out="/dev/null"
                        )
                        + " >/dev/null",
                        timeout=BIG_COMMAND_TIMEOUT,
                    )
                else:
                    _dd_throughput(guest, job, setup.device, 1)
            requests = parse_block_stat(guest.run(stat).output) - before
            samples[job.name] = cost_sample(
                requests, window.counts, before_irq, _interrupts(guest), setup.regions, setup.irqs
            )
    return samples


def _record(report: BenchReport, failure: str, action: Callable[[], None]) -> None:
    """Run one boot; a guest failure is reported and the bench goes on with the rest."""
    try:
        action()
    except (GuestError, CommandFailed, QmpError, ValueError, KeyError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.errors.append(f"{failure}: {first}")
        _say(f"FAILED {failure}: {first}")


def bench_block(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, images: Images, work: Path
) -> None:
    """Block devices: untraced boots for throughput, traced boots for costs, alternating."""
    setups = block_setups(plan.quick)
    jobs = fio_jobs(plan.quick)
    have_fio = bool(images.files)
    disk = make_disk(work, plan.disk_mib, pattern_seed=1, name="bench-disk.img")
    for setup in setups:
        for job in jobs:
            if job.throughput:
                report.throughput.append(Throughput("blk", setup.name, job.name, job.unit))
            report.costs.append(Cost("blk", setup.name, job.name, "request"))
    for rep in range(plan.reps):
        for setup in setups:
            image = images.get(f"blk-{setup.name}", setup.ours, setup.in_tree)

            def throughput(setup: BlockSetup = setup, image: initramfs.Initramfs = image) -> None:
                figures = block_throughput_boot(ws, tree, setup, image, disk, jobs, plan, have_fio)
                for name, value in figures.items():
                    found = report.find_throughput("blk", setup.name, name)
                    assert found is not None
                    found.samples.append(value)

            def costs(setup: BlockSetup = setup, image: initramfs.Initramfs = image) -> None:
                samples = block_cost_boot(ws, tree, setup, image, disk, jobs, work, have_fio)
                for name, sample in samples.items():
                    found = report.find_cost("blk", setup.name, name)
                    assert found is not None
                    found.samples.append(sample)

            _say(f"blk {setup.name} run {rep + 1}/{plan.reps}: throughput")
            _record(report, f"blk {setup.name} throughput boot {rep + 1}", throughput)
            _say(f"blk {setup.name} run {rep + 1}/{plan.reps}: traced")
            _record(report, f"blk {setup.name} traced boot {rep + 1}", costs)
    with contextlib.suppress(OSError):
        disk.unlink()


# --------------------------------------------------------------------------- net


@dataclass
class PeerResult:
    bytes: int = 0
    error: str = ""


class HostPeer:
    """A TCP sink or source on the host's loopback, for one connection from the guest."""

    def __init__(self, mode: str, size: int, timeout: float) -> None:
        if mode not in ("sink", "source"):
            raise ValueError(f"mode must be sink or source, not {mode!r}")
        self.mode = mode
        self.size = size
        self.timeout = timeout
        self.result = PeerResult()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(timeout)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostPeer:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.thread.join(self.timeout)
        self.server.close()

    def _serve(self) -> None:
        try:
            connection, _ = self.server.accept()
        except OSError as exc:
            self.result.error = f"no connection from the guest: {exc}"
            return
        with connection:
            connection.settimeout(self.timeout)
            try:
                if self.mode == "sink":
                    self._sink(connection)
                else:
                    self._source(connection)
            except OSError as exc:
                self.result.error = str(exc)

    def _sink(self, connection: socket.socket) -> None:
        # Closing after `size` bytes is what ends the guest's nc.
        while self.result.bytes < self.size:
            chunk = connection.recv(1 << 16)
            if not chunk:
                break
            self.result.bytes += len(chunk)

    def _source(self, connection: socket.socket) -> None:
        chunk = b"\0" * (1 << 16)
        remaining = self.size
        while remaining > 0:
            sent = connection.send(chunk[:remaining])
            remaining -= sent
            self.result.bytes += sent
        connection.shutdown(socket.SHUT_WR)
        while connection.recv(1 << 16):
            pass


def _net_command(direction: str, size: int, port: int) -> str:
    """The guest side of a transfer, timed with /proc/uptime around it."""
    if direction == "guest-to-host":
        blocks = size // (1 << 16)
        transfer = (
            f"dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {HOST_FROM_GUEST} {port}"
        )
    else:
        transfer = f'n=$(nc {HOST_FROM_GUEST} {port} </dev/null | wc -c); echo "bytes $n"'
    return (
        f"a=$(cut -d' ' -f1 /proc/uptime); {transfer}; "
        f"b=$(cut -d' ' -f1 /proc/uptime); echo \"@@ $a $b\""
    )


def _transfer(guest: Guest, direction: str, size: int) -> float:
    """Move size bytes over the guest's NIC in one direction; MB/s as the guest timed it."""
    with HostPeer(
        "sink" if direction == "guest-to-host" else "source", size, NET_CONNECT_TIMEOUT
    ) as peer:
        output = guest.run(
            _net_command(direction, size, peer.port), timeout=BIG_COMMAND_TIMEOUT
        ).output
    if peer.result.error:
        raise ValueError(f"{direction}: host side: {peer.result.error}")
    if direction == "host-to-guest":
        got = re.search(r"^bytes (\d+)", output, re.M)
        moved = int(got.group(1)) if got else 0
    else:
        moved = peer.result.bytes
    if moved != size:
        raise ValueError(f"{direction}: {moved} of {size} bytes arrived")
    return size / uptime_span(output) / 1e6


def _configure_nic(guest: Guest) -> str:
    """Bring the guest's one NIC up on QEMU's user network; its name."""
    _wait_for(guest, "ls /sys/class/net | grep -qv '^lo$'")
    names = [n for n in guest.run("ls /sys/class/net").output.split() if n != "lo"]
    name = names[0]
    guest.run(
        f"ip link set {name} up && ip addr add {GUEST_ADDRESS} dev {name} && "
        f"ip route add default via {HOST_FROM_GUEST}"
    )
    _wait_for(guest, f"grep -q 1 /sys/class/net/{name}/carrier")
    return name


def _packets(guest: Guest, nic: str) -> int:
    output = guest.run(
        f"cat /sys/class/net/{nic}/statistics/rx_packets /sys/class/net/{nic}/statistics/tx_packets"
    ).output
    return sum(int(n) for n in output.split())


def net_boot(
    ws: Workspace,
    tree: KernelTree,
    setup: NetSetup,
    image: initramfs.Initramfs,
    plan: Plan,
    trace_dir: Path | None,
) -> dict[str, float | CostSample]:
    """One boot, both directions: MB/s untraced, or a CostSample per direction traced."""
    results: dict[str, float | CostSample] = {}
    label = f"net-{setup.name}" + ("-traced" if trace_dir else "")
    with _guest(
        ws, tree, image, setup.in_tree, trace_dir, label, nics=[Nic(model=setup.model)]
    ) as guest:
        nic = _configure_nic(guest)
        for direction in NET_DIRECTIONS:
            if trace_dir is None:
                results[direction] = _transfer(guest, direction, plan.net_bytes)
                continue
            before_irq = _interrupts(guest)
            before = _packets(guest, nic)
            with TraceWindow(guest) as window:
                _transfer(guest, direction, plan.net_bytes)
            packets = _packets(guest, nic) - before
            results[direction] = cost_sample(
                packets, window.counts, before_irq, _interrupts(guest), setup.regions, setup.irqs
            )
    return results


def bench_net(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, images: Images, work: Path
) -> None:
    setups = net_setups()
    for setup in setups:
        for direction in NET_DIRECTIONS:
            report.throughput.append(Throughput("net", setup.name, direction, "MB/s"))
            report.costs.append(Cost("net", setup.name, direction, "packet"))
    for rep in range(plan.reps):
        for setup in setups:
            # The net images carry no fio: nothing in them needs it.
            image = images.get(f"net-{setup.name}", setup.ours, setup.in_tree)
            for traced in (False, True):

                def boot(
                    setup: NetSetup = setup,
                    image: initramfs.Initramfs = image,
                    traced: bool = traced,
                ) -> None:
                    for direction, value in net_boot(
                        ws, tree, setup, image, plan, work if traced else None
                    ).items():
                        if isinstance(value, CostSample):
                            found = report.find_cost("net", setup.name, direction)
                            assert found is not None
                            found.samples.append(value)
                        else:
                            found_t = report.find_throughput("net", setup.name, direction)
                            assert found_t is not None
                            found_t.samples.append(value)

                kind = "traced" if traced else "throughput"
                _say(f"net {setup.name} run {rep + 1}/{plan.reps}: {kind}")
                _record(report, f"net {setup.name} {kind} boot {rep + 1}", boot)


# --------------------------------------------------------------------------- toolchain


def time_depmod(tree: KernelTree, runs: int) -> list[float]:
    """depmod checking every in-tree module's symbols against Module.symvers, as symcheck does."""
    argv = ["depmod", "-n", "-e", "-E", str(tree.symvers), "-b", str(tree.root), tree.release]
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        timings.append(time.perf_counter() - start)
    return timings


def time_setup_build(ws: Workspace, runs: int) -> list[float]:
    """Wall time of the README's main command, `invoke setup build`, on a warm cache.

    One unmeasured run first makes the cache and the build stamp warm.
    """
    invoke = shutil.which("invoke")
    argv = [invoke] if invoke else [sys.executable, "-m", "invoke"]
    argv += ["setup", "build"]
    timings = []
    for index in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ws.root, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ValueError(
                f"invoke setup build exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-300:]}"
            )
        if index:
            timings.append(time.perf_counter() - start)
    return timings


def bench_toolchain(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, work: Path
) -> None:
    tools = report.toolchain

    def symbols() -> None:
        figures = symcheck.bench_tree(tree.modules_dir, tree.symvers, work / "symcache", jobs=2)
        tools.symcheck_cold_s = figures["cold"]
        tools.symcheck_warm_s = figures["warm"]
        tools.symcheck_modules = figures["modules"]
        tools.depmod_s = time_depmod(tree, plan.depmod_runs)

    def boot() -> None:
        tools.boot_s = measure_boot(ws, tree, plan.boot_runs)

    def setup_build() -> None:
        tools.setup_build_s = time_setup_build(ws, plan.build_runs)

    def image_boot() -> None:
        tools.image_boot_s = image.measure_boot(ws, tree, plan.image_boot_runs)

    _say("toolchain: invoke setup build")
    _record(report, "invoke setup build", setup_build)
    _say("toolchain: symbol check vs depmod")
    _record(report, "symcheck", symbols)
    _say("toolchain: boot to first command")
    _record(report, "measure_boot", boot)
    _say("toolchain: Debian guest to login shell (the image is made first if it must be)")
    _record(report, "image.measure_boot", image_boot)


# --------------------------------------------------------------------------- the run


def machine_info(ws: Workspace, tree: KernelTree) -> dict[str, Any]:
    """Where the figures come from: they mean nothing without it."""
    cpu = ""
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else ""
    qemu = subprocess.run(
        [tree.target.qemu, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fio = (
        subprocess.run(
            ["fio", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if shutil.which("fio")
        else ""
    )
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Other work on the host moves the wall-time figures, not the counts.
        "load_average_at_start": os.getloadavg()[0],
        "host_kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": qemu[0] if qemu else "",
        "accel": choose_accel(ws, tree),
        "fio": fio,
    }


def run_bench(ws: Workspace, quick: bool) -> BenchReport:
    """Every measurement on the default target, then the goals judged on them."""
    started = time.monotonic()
    plan = make_plan(quick)
    targets = load_targets(ws.targets_file)
    tree = provision.ensure(ws, [targets.default])[0]
    report = BenchReport(
        timestamp=datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"),
        quick=quick,
        machine=machine_info(ws, tree),
        target=tree.target.id,
        release=tree.release,
        plan=dataclasses.asdict(plan),
    )
    with tempfile.TemporaryDirectory(prefix="pvf-bench-") as tmp:
        work = Path(tmp)
        # The toolchain first: `invoke setup build` also refreshes the modules benched below.
        bench_toolchain(ws, tree, report, plan, work)
        files = fio_files(tree)
        if files is None:
            report.notes.append(
                "fio cannot run in this guest: block throughput uses "
                "parallel dd (sequential streams)"
            )
        images = Images(ws, tree, work, files or {})
        bench_block(ws, tree, report, plan, images, work)
        net_images = Images(ws, tree, work, {})
        bench_net(ws, tree, report, plan, net_images, work)
    report.goals = [
        *block_goals(report, fio_jobs(quick)),
        *net_goals(report),
        *toolchain_goals(report.toolchain),
    ]
    report.seconds = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- output


def to_json(report: BenchReport) -> dict[str, Any]:
    """The report as plain data, with every median and per-unit figure spelled out."""
    return {
        "version": JSON_VERSION,
        "timestamp": report.timestamp,
        "quick": report.quick,
        "seconds": round(report.seconds, 1),
        "machine": report.machine,
        "target": report.target,
        "release": report.release,
        "plan": report.plan,
        "throughput": [
            {
                "subject": t.subject,
                "setup": t.setup,
                "workload": t.workload,
                "unit": t.unit,
                "samples": t.samples,
                "median": t.median,
            }
            for t in report.throughput
        ],
        "costs": [
            {
                "subject": c.subject,
                "setup": c.setup,
                "workload": c.workload,
                "unit": c.unit,
                "samples": [{**dataclasses.asdict(s), "per_unit": s.per_unit()} for s in c.samples],
                "median_per_unit": {
                    m: c.median_per_unit(m)
                    for m in ("notifications", "exits", "interrupts", "notifications+interrupts")
                },
            }
            for c in report.costs
        ],
        "toolchain": {
            **dataclasses.asdict(report.toolchain),
            "depmod_median_s": median(report.toolchain.depmod_s),
            "boot_median_s": median(report.toolchain.boot_s),
            "setup_build_median_s": median(report.toolchain.setup_build_s),
        },
        "goals": [
            {
                "name": g.name,
                "measured": g.measured,
                "limit": g.limit,
                "better": g.better,
                "unit": g.unit,
                "basis": g.basis,
                "verdict": g.verdict,
                "gap": g.gap,
            }
            for g in report.goals
        ],
        "errors": report.errors,
        "notes": report.notes,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _setups_of(report: BenchReport, subject: str) -> list[str]:
    seen: list[str] = []
    items: list[Throughput | Cost] = [*report.throughput, *report.costs]
    for item in items:
        if item.subject == subject and item.setup not in seen:
            seen.append(item.setup)
    return seen


def _workloads_of(items: Iterable[Throughput | Cost], subject: str) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item.subject == subject and item.workload not in seen:
            seen.append(item.workload)
    return seen


def render_table(report: BenchReport) -> str:
    """The terminal report: throughput, per-request costs, toolchain and the goals."""
    lines = [
        f"pvfront bench {'--quick ' if report.quick else ''}{report.timestamp}: "
        f"{report.target} {report.release}, {report.machine.get('qemu', '')} "
        f"({report.machine.get('accel', '')}), {report.machine.get('cpu', '')} x"
        f"{report.machine.get('cores', '')}, median of {report.plan['reps']} boot(s)",
        "",
    ]
    for subject, ours, theirs in (("blk", PVF_BLK, VIRTIO_BLK), ("net", PVF_NET, VIRTIO_NET)):
        setups = _setups_of(report, subject)
        if not setups:
            continue
        rows = [["throughput", "unit", *setups, f"{ours}/{theirs}"]]
        for workload in _workloads_of(report.throughput, subject):
            cells = [report.find_throughput(subject, s, workload) for s in setups]
            unit = next((c.unit for c in cells if c), "")
            rows.append(
                [
                    workload,
                    unit,
                    *[_fmt(c.median if c else None, 1) for c in cells],
                    _fmt(_throughput_ratio(report, subject, ours, theirs, workload)),
                ]
            )
        lines += [*_table(rows), ""]
        unit = "request" if subject == "blk" else "packet"
        rows = [[f"per {unit}", "metric", *setups]]
        for workload in _workloads_of(report.costs, subject):
            for metric in ("notifications", "exits", "interrupts"):
                costs = [report.find_cost(subject, s, workload) for s in setups]
                rows.append(
                    [
                        workload,
                        metric,
                        *[_fmt(c.median_per_unit(metric) if c else None) for c in costs],
                    ]
                )
        lines += [*_table(rows), ""]
    tools = report.toolchain
    rows = [
        ["toolchain", "seconds"],
        [
            f"symcheck full tree cold ({tools.symcheck_modules or '-'} modules)",
            _fmt(tools.symcheck_cold_s),
        ],
        ["symcheck full tree warm", _fmt(tools.symcheck_warm_s)],
        ["depmod -n -e -E (median)", _fmt(median(tools.depmod_s))],
        ["boot to first command (median)", _fmt(median(tools.boot_s))],
        ["invoke setup build, warm (median)", _fmt(median(tools.setup_build_s))],
    ]
    lines += [*_table(rows), ""]
    rows = [["goal", "measured", "limit", "verdict", "gap"]]
    for goal in report.goals:
        rows.append(
            [
                goal.name,
                _fmt(goal.measured) + goal.unit,
                ("<= " if goal.better == "lower" else ">= ") + _fmt(goal.limit) + goal.unit,
                goal.verdict,
                goal.gap,
            ]
        )
    lines += _table(rows)
    met = sum(g.verdict == "met" for g in report.goals)
    lines += [
        "",
        f"goals: {met} met, {sum(g.verdict == 'short' for g in report.goals)} short, "
        f"{sum(g.verdict == 'n/a' for g in report.goals)} not measured; "
        f"{report.seconds:.0f} s",
    ]
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"error: {e}" for e in report.errors]
    return "\n".join(lines) + "\n"


def write_chart(report: BenchReport, path: Path) -> bool:
    """A bar chart of the ratio goals against their limits; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    goals = [g for g in report.goals if g.unit == "x" and g.measured is not None]
    if not goals:
        return False
    figure, axes = plt.subplots(figsize=(10, 0.35 * len(goals) + 1.5))
    names = [g.name for g in goals]
    colours = ["tab:green" if g.verdict == "met" else "tab:red" for g in goals]
    positions = range(len(goals))
    axes.barh(positions, [g.measured for g in goals], color=colours)
    axes.scatter(
        [g.limit for g in goals],
        positions,
        marker="|",
        s=300,
        color="black",
        label="goal limit",
        zorder=3,
    )
    axes.set_yticks(list(positions), names, fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("ratio (log scale); green met, red short")
    axes.set_title(
        f"pvfront bench {report.timestamp} ({report.target}, {report.machine.get('accel', '')})"
    )
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


@dataclass(frozen=True)
class Outputs:
    json: Path
    latest: Path
    chart: Path | None


def write_outputs(ws: Workspace, report: BenchReport) -> Outputs:
    """build/bench/bench-<timestamp>.json, latest.json, and the chart beside them."""
    directory = ws.build_dir / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_json(report), indent=1) + "\n"
    path = directory / f"bench-{report.timestamp}.json"
    path.write_text(text)
    latest = directory / "latest.json"
    latest.write_text(text)
    chart = directory / f"bench-{report.timestamp}.png"
    if write_chart(report, chart):
        shutil.copyfile(chart, directory / "latest.png")
        return Outputs(path, latest, chart)
    return Outputs(path, latest, None)


def bench_command(ws: Workspace, quick: bool) -> int:
    """`pvfront bench` / `invoke bench`: run, print the table, keep the JSON and chart.

    Exit 0 when every measurement ran (short goals are reported, not failed), 1 when some
    boot or measurement failed.
    """
    report = run_bench(ws, quick)
    sys.stdout.write(render_table(report))
    outputs = write_outputs(ws, report)
    print(f"json: {outputs.json} (and {outputs.latest.name})")
    print(
        f"chart: {outputs.chart}"
        if outputs.chart
        else "chart: not drawn (pip install matplotlib, or pip install -e '.[bench]')"
    )
    return EXIT_FAILED if report.errors else EXIT_OK
