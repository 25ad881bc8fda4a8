"""Reading what the guest and QEMU print: trace logs, /proc/interrupts, block stats, fio and
iperf3 JSON, ping's summary, ethtool's features."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pvfront.bench.plan import FioJob, NetJob

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


def _json_after_noise(text: str, program: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in {program}'s output: {text.strip()[:200]!r}")
    try:
        data = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{program}'s JSON is cut or garbled: {exc}") from None
    return dict(data)


def parse_iperf3_json(text: str, job: NetJob) -> float:
    """iperf3 --json from the client: the job's figure as the receiving end counted it.

    Streams: MB/s (decimal) received, summed over the flows. UDP: datagrams received per
    second, those the receiver counted lost left out.
    """
    data = _json_after_noise(text, "iperf3")
    if data.get("error"):
        raise ValueError(f"iperf3: {data['error']}")
    try:
        received = data["end"]["sum_received"]
        seconds = float(received["seconds"])
        if seconds <= 0:
            raise ValueError("iperf3 measured no time")
        if job.kind == "stream":
            return float(received["bytes"]) / seconds / 1e6
        if job.kind == "udp":
            return (int(received["packets"]) - int(received["lost_packets"])) / seconds
    except (KeyError, TypeError) as exc:
        raise ValueError(f"iperf3's JSON lacks {exc}") from None
    raise ValueError(f"{job.name}: iperf3 does not measure {job.kind} jobs")


_PING_COUNTS = re.compile(r"^(\d+) packets transmitted, (\d+) (?:packets )?received", re.M)
_PING_RTT = re.compile(r"^(?:round-trip|rtt) min/avg/max[^=]*= ([\d.]+)/([\d.]+)/([\d.]+)", re.M)


def parse_ping_rtt(text: str) -> float:
    """The mean round trip in microseconds from ping's summary (busybox's or iputils'); an
    error when a request went unanswered (the mean would leave it out)."""
    counts, rtt = _PING_COUNTS.search(text), _PING_RTT.search(text)
    if counts is None or rtt is None:
        raise ValueError(f"no ping summary in {text.strip()[-200:]!r}")
    sent, answered = int(counts.group(1)), int(counts.group(2))
    if answered != sent:
        raise ValueError(f"ping: {sent - answered} of {sent} requests unanswered")
    return float(rtt.group(2)) * 1000


def parse_ethtool_features(text: str) -> dict[str, bool]:
    """`ethtool -k DEV`: feature name -> on, whether fixed or not."""
    features = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([a-z0-9-]+): (on|off)\b", line)
        if match:
            features[match.group(1)] = match.group(2) == "on"
    return features


def uptime_span(output: str) -> float:
    """Seconds between the two /proc/uptime readings a guest command echoed as `@@ a b`."""
    match = re.search(r"^@@ ([\d.]+) ([\d.]+)", output, re.M)
    if not match:
        raise ValueError(f"no timing line in {output!r}")
    return float(match.group(2)) - float(match.group(1))
