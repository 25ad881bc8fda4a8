"""Reading what the guest and QEMU print: trace logs, /proc/interrupts, block stats, fio JSON."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pvfront.bench.plan import FioJob

# The events counted; QMP switches them on only around a workload.
TRACE_EVENTS = ("virtio_queue_notify", "memory_region_ops_read", "memory_region_ops_write")
NOTIFY_EVENT = "virtio_queue_notify"
REGION_EVENTS = ("memory_region_ops_read", "memory_region_ops_write")


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


def uptime_span(output: str) -> float:
    """Seconds between the two /proc/uptime readings a guest command echoed as `@@ a b`."""
    match = re.search(r"^@@ ([\d.]+) ([\d.]+)", output, re.M)
    if not match:
        raise ValueError(f"no timing line in {output!r}")
    return float(match.group(2)) - float(match.group(1))
