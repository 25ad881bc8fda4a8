"""The benchmark's pure parts: trace and counter parsing, per-unit figures, goal verdicts, JSON.

No timing is asserted anywhere: the figures come from fabricated inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from pvfront import netns
from pvfront.bench.block import block_steps, fio_command
from pvfront.bench.goals import block_goals, net_goals, toolchain_goals
from pvfront.bench.guests import Images, TraceWindow, cost_sample, tree_for
from pvfront.bench.iperf import Iperf3Server, client_command, ping_command
from pvfront.bench.net import HostPeer, Link, Route, device_mtu, jobs_for, net_steps
from pvfront.bench.parse import (
    TRACE_EVENTS,
    fio_figure,
    interrupt_delta,
    parse_block_stat,
    parse_ethtool_features,
    parse_fio_json,
    parse_interrupts,
    parse_iperf3_json,
    parse_ping_rtt,
    parse_trace,
    uptime_span,
)
from pvfront.bench.plan import (
    AHCI,
    E1000,
    IDE,
    NET_DIRECTIONS,
    PVF_BLK,
    PVF_NET,
    PVF_NET_USER,
    VIRTIO_BLK,
    VIRTIO_NET,
    block_setups,
    fio_jobs,
    make_plan,
    net_jobs,
    net_setups,
)
from pvfront.bench.programs import host_program_files
from pvfront.bench.progress import Step, progress_line, run_steps, time_left
from pvfront.bench.report import JSON_VERSION, render_table, to_json, write_outputs
from pvfront.bench.results import (
    BenchReport,
    Cost,
    CostSample,
    Goal,
    Throughput,
    Toolchain,
    describe_gap,
    judge,
    median,
    ratio,
)
from pvfront.bench.run import Run, bench_command, plan_goals
from pvfront.errors import SetupError, UsageError, run_command
from pvfront.image import BootPhases
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Trace
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

TRACE = """\
memory_region_ops_write cpu -1 mr 0x55f4 addr 0xfee01004 value 0x28 size 4 name 'apic-msi'
virtio_queue_notify vdev 0x5601 n 0 vq 0x5602
12345@1700000000.123456:virtio_queue_notify vdev 0x5601 n 0 vq 0x5602
memory_region_ops_read cpu 0 mr 0x55f5 addr 0x14 value 0x0 size 4 name 'ahci'
memory_region_ops_write cpu 0 mr 0x55f5 addr 0x38 value 0x1 size 4 name 'ahci'
memory_region_ops_write cpu 0 mr 0x55f5 addr 0x38 value 0x1 size 4 name 'ahci'
memory_region_ops_read cpu 0 mr 0x55f6 addr 0x5 value 0x60 size 1 name 'serial'
memory_region_ops_read cpu 0 mr 0x55f7 addr 0x0 value 0x1 size 2 name 'virtio-pci-common-virtio-blk'
memory_region_ops_write cpu 0 mr 0x55f8 addr 0x0 value 0x0 size 4 name 'msix-table'
memory_region_ops_read cpu 0 mr 0x55f9 addr 0x0 value 0x0 size 1 name 'ide'
memory_region_ops_read cpu 0 mr 0x55fa addr 0x2 value 0x4 size 1 name 'piix-bmdma'
memory_region_ops_write cpu 0 mr 0x55fb addr 0x0 value 0x9 size 1 name 'bmdma'
memory_region_ops_write cpu 0 mr 0x55fc addr 0xc0 value 0x9 size 4 name 'e1000-mmio'

not a trace line
"""

INTERRUPTS_BEFORE = """\
           CPU0
  0:        141   IO-APIC   2-edge      timer
  3:        260   IO-APIC   3-edge      ttyS1
 24:          0   PCI-MSI 16384-edge      pvf0-config
 25:          3   PCI-MSI 16385-edge      pvf0-req.0
 26:         10   PCI-MSI 512000-edge      ahci[0000:00:1f.2]
 14:          5   IO-APIC  14-edge      ata_piix
 11:          7   IO-APIC  11-fasteoi   eth0
NMI:          0   Non-maskable interrupts
LOC:       1234   Local timer interrupts
ERR:          0
"""

INTERRUPTS_AFTER = """\
           CPU0
  0:        150   IO-APIC   2-edge      timer
  3:        900   IO-APIC   3-edge      ttyS1
 24:          0   PCI-MSI 16384-edge      pvf0-config
 25:        503   PCI-MSI 16385-edge      pvf0-req.0
 26:        310   PCI-MSI 512000-edge      ahci[0000:00:1f.2]
 14:         25   IO-APIC  14-edge      ata_piix
 11:         77   IO-APIC  11-fasteoi   eth0
 27:          4   PCI-MSI 16386-edge      pvf0-output.0
NMI:          0   Non-maskable interrupts
LOC:       2234   Local timer interrupts
ERR:          0
"""


def _setup(name: str, setups: list) -> object:
    return next(s for s in setups if s.name == name)


# --------------------------------------------------------------------------- trace


def test_trace_counts_events_with_and_without_the_pid_time_prefix():
    counts = parse_trace(TRACE.splitlines())
    assert counts.events["virtio_queue_notify"] == 2
    assert counts.events["memory_region_ops_write"] == 6
    assert counts.events["memory_region_ops_read"] == 5


def test_trace_counts_region_accesses_by_name_and_direction():
    counts = parse_trace(TRACE.splitlines())
    assert counts.regions[("memory_region_ops_read", "ahci")] == 1
    assert counts.regions[("memory_region_ops_write", "ahci")] == 2
    assert counts.regions[("memory_region_ops_read", "serial")] == 1


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (AHCI, 3),
        (PVF_BLK, 2),  # the common config read and the MSI-X table write
        (VIRTIO_BLK, 2),
        (IDE, 3),  # ide, piix-bmdma and bmdma, not the serial port
    ],
)
def test_each_block_setup_counts_only_its_own_registers(setup, expected):
    counts = parse_trace(TRACE.splitlines())
    regions = _setup(setup, block_setups(quick=False)).regions
    assert counts.region_accesses(regions) == expected


def test_e1000_counts_its_mmio_and_nothing_else():
    counts = parse_trace(TRACE.splitlines())
    regions = _setup(E1000, net_setups()).regions
    assert counts.region_accesses(regions) == 1
    assert counts.region_table(regions) == {"write e1000-mmio": 1}


def test_serial_and_apic_traffic_is_never_a_device_exit():
    counts = parse_trace(TRACE.splitlines())
    assert counts.region_accesses("^serial$|^apic") == 2  # the trace has both
    for setup in [*block_setups(quick=False), *net_setups()]:
        table = counts.region_table(setup.regions)
        assert not any("serial" in key or "apic" in key for key in table), setup.name


def test_an_empty_trace_counts_nothing():
    counts = parse_trace([])
    assert counts.events["virtio_queue_notify"] == 0
    assert counts.region_accesses(".*") == 0


# --------------------------------------------------------------------------- guest counters


def test_interrupts_parse_sums_and_describes_each_row():
    rows = parse_interrupts(INTERRUPTS_BEFORE)
    assert rows["25"] == (3, "PCI-MSI 16385-edge pvf0-req.0")
    assert rows["LOC"][0] == 1234
    assert "ERR" in rows


def test_interrupts_parse_sums_over_cpus():
    text = "           CPU0       CPU1\n 25:   3   4   PCI-MSI 16385-edge   virtio0-req.0\n"
    assert parse_interrupts(text)["25"] == (7, "PCI-MSI 16385-edge virtio0-req.0")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (PVF_BLK, 500),
        (AHCI, 300),
        (IDE, 20),
    ],
)
def test_interrupt_delta_takes_only_the_devices_rows(setup, expected):
    before = parse_interrupts(INTERRUPTS_BEFORE)
    after = parse_interrupts(INTERRUPTS_AFTER)
    irqs = _setup(setup, block_setups(quick=False)).irqs
    assert interrupt_delta(before, after, irqs) == expected


def test_a_row_that_appears_during_the_window_counts_from_zero():
    before = parse_interrupts(INTERRUPTS_BEFORE)
    after = parse_interrupts(INTERRUPTS_AFTER)
    pvf_net = _setup(PVF_NET, net_setups())
    assert interrupt_delta(before, after, pvf_net.irqs) == 4
    e1000 = _setup(E1000, net_setups())
    assert interrupt_delta(before, after, e1000.irqs) == 70


def test_block_stat_counts_reads_and_writes_completed():
    line = (
        "     503        0     4024      110       17        0      136        9        0"
        "      112      110        0        0        0        0        0        0\n"
    )
    assert parse_block_stat(line) == 520


def test_block_stat_rejects_garbage():
    with pytest.raises(ValueError):
        parse_block_stat("cat: can't open '/sys/block/pvda/stat'")


def test_uptime_span():
    assert uptime_span("bytes 8388608\n@@ 12.50 14.75\n") == pytest.approx(2.25)
    with pytest.raises(ValueError):
        uptime_span("nc: can't connect")


# --------------------------------------------------------------------------- fio


def _fio_output(
    read_bw: int, read_iops: float, write_bw: int, write_iops: float, error: int = 0
) -> str:
    job = {
        "jobname": "j",
        "error": error,
        "read": {"bw_bytes": read_bw, "iops": read_iops},
        "write": {"bw_bytes": write_bw, "iops": write_iops},
    }
    return "fio: some warning\n" + json.dumps({"fio version": "fio-3.33", "jobs": [job]})


def test_fio_json_after_warnings_gives_both_directions():
    result = parse_fio_json(_fio_output(2_000_000, 488.3, 0, 0.0))
    assert result == {
        "read_bw_bytes": 2_000_000.0,
        "read_iops": 488.3,
        "write_bw_bytes": 0.0,
        "write_iops": 0.0,
    }


def test_fio_job_error_is_an_error():
    with pytest.raises(ValueError):
        parse_fio_json(_fio_output(0, 0, 0, 0, error=5))
    with pytest.raises(ValueError):
        parse_fio_json("fio: failed to open /dev/pvda")


def test_fio_figure_picks_the_jobs_direction_and_unit():
    jobs = {j.name: j for j in fio_jobs(quick=True)}
    result = parse_fio_json(_fio_output(50_000_000, 47.7, 20_000_000, 2500.0))
    assert fio_figure(result, jobs["seqread-1m"]) == pytest.approx(50.0)
    assert fio_figure(result, jobs["seqwrite-1m"]) == pytest.approx(20.0)
    assert fio_figure(result, jobs["randwrite-4k-qd16"]) == pytest.approx(2500.0)
    assert fio_figure(result, jobs["randread-4k-qd1"]) == pytest.approx(47.7)


def test_fio_command_is_bounded_by_time_or_by_requests():
    job = next(j for j in fio_jobs(quick=True) if j.name == "randread-4k-qd16-batch")
    timed = fio_command(job, "pvda", seconds=3, ios=None, out="/tmp/x.json").split()
    assert {"--filename=/dev/pvda", "--direct=1", "--runtime=3", "--time_based"} <= set(timed)
    assert {"--iodepth=16", "--iodepth_batch_submit=16"} <= set(timed)
    assert not any(arg.startswith("--number_ios") for arg in timed)
    counted = fio_command(job, "vda", seconds=None, ios=500, out="/dev/null").split()
    assert "--number_ios=500" in counted
    assert not any(arg.startswith(("--runtime", "--time_based")) for arg in counted)


def test_every_job_has_the_bounds_the_issue_asks_for():
    jobs = fio_jobs(quick=False)
    assert {j.bs for j in jobs if j.rw in ("read", "write")} == {"1M"}
    random = [j for j in jobs if j.rw.startswith("rand")]
    assert {j.bs for j in random} == {"4k"}
    assert 1 in {j.iodepth for j in random} and max(j.iodepth for j in random) >= 16


# --------------------------------------------------------------------------- figures


def test_median_ignores_missing_figures():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0]) == 2.5
    assert median([None]) is None
    assert median([]) is None


def test_ratio_of_nothing_is_nothing():
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(1.0, 0) is None
    assert ratio(None, 2.0) is None


def test_cost_sample_per_unit():
    sample = CostSample(units=500, notifications=500, exits=520, interrupts=250)
    per = sample.per_unit()
    assert per["notifications"] == 1.0
    assert per["exits"] == pytest.approx(1.04)
    assert per["interrupts"] == 0.5
    assert per["notifications+interrupts"] == 1.5
    assert CostSample(units=0, notifications=3, exits=3, interrupts=0).per_unit()["exits"] is None


def test_cost_median_is_over_boots():
    cost = Cost(
        "blk",
        "x",
        "w",
        "request",
        [CostSample(100, 100, 100, 100), CostSample(100, 50, 50, 50), CostSample(100, 80, 90, 70)],
    )
    assert cost.median_per_unit("notifications") == 0.8
    assert cost.median_per_unit("exits") == 0.9


# --------------------------------------------------------------------------- goals


@pytest.mark.parametrize(
    ("measured", "limit", "better", "verdict"),
    [
        (1.0, 1.0, "lower", "met"),
        (1.01, 1.0, "lower", "short"),
        (0.5, 0.9, "lower", "met"),
        (5.0, 5.0, "higher", "met"),
        (4.9, 5.0, "higher", "short"),
        (None, 1.0, "higher", "n/a"),
    ],
)
def test_judge(measured, limit, better, verdict):
    assert judge(measured, limit, better) == verdict


def test_judge_refuses_an_unknown_direction():
    with pytest.raises(ValueError):
        judge(1.0, 1.0, "sideways")


def test_gap_says_how_far_and_which_way():
    assert describe_gap(1.25, 1.0, "lower", "x") == "0.25x over (25%)"
    assert describe_gap(4.0, 5.0, "higher", "x") == "1.00x under (20%)"
    assert describe_gap(0.5, 1.0, "lower", "x") == ""
    assert describe_gap(None, 1.0, "lower", "x") == ""


def _report() -> BenchReport:
    report = BenchReport(
        timestamp="20260101T000000Z",
        quick=True,
        machine={"cpu": "test"},
        target="deb12-amd64",
        release="6.1.0-0-amd64",
        plan={"reps": 1},
    )
    per_request = {  # setup -> (notifications, exits, interrupts) per 100 requests
        PVF_BLK: (100, 100, 100),
        VIRTIO_BLK: (100, 100, 100),
        AHCI: (0, 700, 100),
    }
    for job in fio_jobs(quick=True):
        for setup, (notes, exits, irqs) in per_request.items():
            report.costs.append(
                Cost("blk", setup, job.name, "request", [CostSample(100, notes, exits, irqs)])
            )
            if job.throughput:
                report.throughput.append(
                    Throughput(
                        "blk",
                        setup,
                        job.name,
                        job.unit,
                        [200.0 if setup == PVF_BLK else 100.0],
                    )
                )
    for direction in NET_DIRECTIONS:
        report.throughput.append(Throughput("net", PVF_NET, direction, "MB/s", [9.0]))
        report.throughput.append(Throughput("net", VIRTIO_NET, direction, "MB/s", [10.0]))
        report.costs.append(
            Cost("net", PVF_NET, direction, "packet", [CostSample(1000, 300, 300, 100)])
        )
        report.costs.append(
            Cost("net", VIRTIO_NET, direction, "packet", [CostSample(1000, 300, 310, 100)])
        )
    report.toolchain = Toolchain(
        symcheck_cold_s=1.2,
        symcheck_warm_s=0.3,
        symcheck_modules=4,
        depmod_s=[0.4, 0.5, 0.3],
        boot_s=[2.0, 2.5, 3.5],
        setup_build_s=[1.0],
        image_boots=[
            BootPhases(30.0, 20.0, 40.0),
            BootPhases(20.0, 20.0, 40.0),
            BootPhases(26.0, 20.0, 40.0),
        ],
    )
    report.goals = [
        *block_goals(report, fio_jobs(quick=True)),
        *net_goals(report, net_jobs(quick=True)),
        *toolchain_goals(report.toolchain),
    ]
    return report


def _goal(report: BenchReport, start: str) -> Goal:
    return next(g for g in report.goals if g.name.startswith(start))


def test_block_goals_compare_against_the_in_tree_driver_and_ahci():
    report = _report()
    qd1 = _goal(report, "blk randread-4k-qd1: notifications")
    assert (qd1.measured, qd1.verdict) == (1.0, "met")
    qd16 = _goal(report, "blk randread-4k-qd16: (notifications+interrupts)")
    assert (qd16.measured, qd16.limit, qd16.verdict) == (1.0, 0.9, "short")
    ahci = _goal(report, "blk randread-4k-qd1: >= 5x fewer exits")
    assert (ahci.measured, ahci.verdict) == (7.0, "met")
    speed = _goal(report, "blk seqread-1m: MB/s")
    assert (speed.measured, speed.verdict) == (2.0, "met")


def test_a_diagnostic_job_has_cost_goals_but_no_throughput_goal():
    report = _report()
    names = [g.name for g in report.goals]
    assert any(n.startswith("blk randread-4k-qd16-batch: (notif") for n in names)
    assert any(n.startswith("blk randread-4k-qd16: IOPS") for n in names)  # how one is named
    assert not any(n.startswith("blk randread-4k-qd16-batch: IOPS") for n in names)


def test_net_goals_per_direction():
    report = _report()
    for direction in NET_DIRECTIONS:
        exits = _goal(report, f"net {direction}: exits")
        assert exits.measured == pytest.approx(300 / 310) and exits.verdict == "met"
        speed = _goal(report, f"net {direction}: MB/s")
        assert speed.measured == pytest.approx(0.9) and speed.verdict == "short"


def test_toolchain_goals_use_the_median_depmod_and_boot():
    report = _report()
    assert _goal(report, "symcheck full tree cold").measured == pytest.approx(3.0)
    assert _goal(report, "symcheck full tree cold").verdict == "met"
    assert _goal(report, "symcheck full tree warm").measured == pytest.approx(0.75)
    boot = _goal(report, "boot to first command")
    assert (boot.measured, boot.verdict) == (2.5, "met")
    debian = _goal(report, "Debian guest to login shell")
    assert (debian.measured, debian.limit, debian.verdict) == (86.0, 25.0, "short")


def _empty_report() -> BenchReport:
    return BenchReport(
        timestamp="t", quick=True, machine={}, target="t", release="r", plan={"reps": 1}
    )


def test_goals_without_measurements_are_not_judged():
    report = _empty_report()
    goals = [
        *block_goals(report, fio_jobs(quick=True)),
        *net_goals(report, net_jobs(quick=True)),
        *toolchain_goals(Toolchain()),
    ]
    assert goals and all(g.verdict == "n/a" for g in goals)


# --------------------------------------------------------------------------- output


def test_json_shape():
    data = to_json(_report())
    assert data["version"] == JSON_VERSION
    assert set(data) >= {
        "timestamp",
        "quick",
        "machine",
        "target",
        "release",
        "plan",
        "throughput",
        "costs",
        "toolchain",
        "goals",
        "errors",
        "notes",
        "complete",
        "remaining",
    }
    assert (data["complete"], data["remaining"]) == (True, [])
    first = data["throughput"][0]
    assert set(first) == {"subject", "setup", "workload", "unit", "samples", "median"}
    cost = data["costs"][0]
    assert set(cost["median_per_unit"]) == {
        "notifications",
        "exits",
        "interrupts",
        "notifications+interrupts",
    }
    assert set(cost["samples"][0]) >= {
        "units",
        "notifications",
        "exits",
        "interrupts",
        "regions",
        "per_unit",
    }
    assert data["toolchain"]["depmod_median_s"] == 0.4
    assert data["toolchain"]["image_boot_median_s"] == 86.0
    assert data["toolchain"]["image_boots"][0] == {
        "firmware_and_loader_s": 30.0,
        "kernel_and_initramfs_s": 20.0,
        "userspace_s": 40.0,
    }
    goal = data["goals"][0]
    assert set(goal) == {"name", "measured", "limit", "better", "unit", "basis", "verdict", "gap"}
    assert json.loads(json.dumps(data)) == data  # plain data all the way down


GOAL_COLUMNS = ["goal", "measured", "limit", "verdict"]


def test_table_has_every_goal_on_its_own_row_with_its_own_verdict():
    report = _report()
    assert {"met", "short"} <= {g.verdict for g in report.goals}  # both kinds are shown
    lines = render_table(report).splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == GOAL_COLUMNS)
    verdict_at = lines[header].index("verdict")
    rows = lines[header + 1 : header + 1 + len(report.goals)]
    for goal, row in zip(report.goals, rows, strict=True):
        assert row.startswith(f"{goal.name}  ")
        assert row[verdict_at:].split()[0] == goal.verdict, row
    met = sum(g.verdict == "met" for g in report.goals)
    short = sum(g.verdict == "short" for g in report.goals)
    assert any(line.startswith(f"goals: {met} met, {short} short, ") for line in lines)
    headers = [line.split() for line in lines if line.startswith("throughput ")]
    # Every other setup as a ratio to the in-tree virtio driver, pvfront's first.
    assert [h[2:] for h in headers] == [
        ["pvf_blk", "virtio_blk", "ahci", "pvf_blk/virtio_blk", "ahci/virtio_blk"],
        ["pvf_net", "virtio_net", "pvf_net/virtio_net"],
    ]


def test_a_debian_guest_boot_is_split_at_the_kernel_and_at_systemd():
    # 70.25 s on the host's clock; the guest's kernel had run 52.5 s of them and started
    # the root filesystem's systemd 21.5 s after it started.
    phases = BootPhases.from_clocks(70.25, "52.50\n21500000\n")
    assert phases == BootPhases(17.75, 21.5, 31.0)
    assert phases.total_s == pytest.approx(70.25)


def test_the_table_shows_where_the_debian_guest_spent_its_boot():
    rows = dict(
        line.strip().rsplit(maxsplit=1)
        for line in render_table(_report()).splitlines()
        if line.endswith(tuple("0123456789")) and "(median)" in line
    )
    assert rows["Debian guest to login shell (median)"] == "86.00"
    assert rows["of which firmware and GRUB (median)"] == "26.00"
    assert rows["of which kernel and initramfs (median)"] == "20.00"
    assert rows["of which systemd to the shell (median)"] == "40.00"


def test_outputs_land_in_build_bench(tmp_path):
    ws = Workspace(root=tmp_path, cache=tmp_path / "cache")
    outputs = write_outputs(ws, _report())
    assert outputs.json == tmp_path / "build" / "bench" / "bench-20260101T000000Z.json"
    assert json.loads(outputs.latest.read_text()) == json.loads(outputs.json.read_text())


def test_quick_plan_is_lighter_than_the_full_one():
    quick, full = make_plan(True), make_plan(False)
    assert full.reps >= 3 and quick.reps <= full.reps
    assert quick.fio_seconds <= full.fio_seconds and quick.net_bytes <= full.net_bytes
    assert IDE not in {s.name for s in block_setups(quick=True)}
    assert IDE in {s.name for s in block_setups(quick=False)}


def test_host_peer_refuses_an_unknown_mode():
    with pytest.raises(ValueError):
        HostPeer("echo", 10, 1.0)


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_a_host_peer_on_a_tap_route_listens_inside_the_namespace_only():
    size = 3 * 65536 + 5
    client = (
        "import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10);"
        f" s.sendall(bytes({size})); s.close()"
    )
    with netns.namespace() as ns:
        route = Route.tap(ns, "tap0")
        assert (route.guest_cidr, route.host) == ("10.0.3.2/24", "10.0.3.1")
        with HostPeer("sink", size, 30.0, route) as peer:
            ns.run([sys.executable, "-c", client, route.host, str(peer.port)])
        assert (peer.result.bytes, peer.result.error) == (size, "")
        # The address exists in the namespace alone.
        with pytest.raises(ValueError, match=r"host side: cannot listen on 10\.0\.3\.1: "):
            HostPeer("sink", size, 5.0, Route(route.guest_cidr, route.host, route.host)).__enter__()


def test_notifications_are_also_counted_per_virtqueue():
    extra = "virtio_queue_notify vdev 0x5601 n 1 vq 0x5603"
    counts = parse_trace([*TRACE.splitlines(), extra])
    assert counts.notified_queues == {"vq0": 2, "vq1": 1}


def test_cost_sample_keeps_the_split_by_queue_and_interrupt_row():
    counts = parse_trace(TRACE.splitlines())
    pvf_net = _setup(PVF_NET, net_setups())
    sample = cost_sample(
        1000,
        counts,
        parse_interrupts(INTERRUPTS_BEFORE),
        parse_interrupts(INTERRUPTS_AFTER),
        pvf_net.regions,
        pvf_net.irqs,
    )
    assert sample.notifications == 2
    assert sample.exits == 2 + 2  # the notifications, the common config read, the MSI-X write
    assert sample.interrupts == 4
    assert sample.queues == {"notify vq0": 2, "irq pvf0-output.0": 4}


# --------------------------------------------------------------------------- progress


def test_no_estimate_before_the_first_step_has_finished():
    line = progress_line(1, 28, [], "blk pvf_blk run 1/3: throughput")
    assert line == "step 1/28: blk pvf_blk run 1/3: throughput"


def test_the_estimate_is_the_mean_step_times_the_steps_left_counting_this_one():
    # Two steps took 30 s and 50 s; steps 3 to 8 are left: 6 x 40 s.
    assert time_left([30.0, 50.0], 6) == 240.0
    assert progress_line(3, 8, [30.0, 50.0], "boot") == "step 3/8, about 4 min left: boot"


def test_the_estimate_is_in_whole_minutes_and_says_when_less_than_one_is_left():
    assert progress_line(10, 10, [100.0], "boot") == "step 10/10, about 2 min left: boot"
    assert progress_line(2, 3, [5.0], "boot") == "step 2/3, under a minute left: boot"


def test_each_step_is_announced_on_stderr_before_it_runs(capsys):
    announced = []
    steps = [
        Step(f"step {n}", f"boot {n}", lambda: announced.append(capsys.readouterr().err))
        for n in (1, 2, 3)
    ]
    ticks = iter([0.0, 60.0, 60.0, 240.0, 240.0, 241.0])  # the steps take 1 min, 3 min, 1 s
    run_steps(_empty_report(), steps, clock=lambda: next(ticks))
    assert announced == [
        "bench: step 1/3: boot 1\n",
        "bench: step 2/3, about 2 min left: boot 2\n",  # 2 steps at 1 min
        "bench: step 3/3, about 2 min left: boot 3\n",  # 1 step at 2 min
    ]


@pytest.mark.parametrize("quick", [True, False])
def test_every_boot_of_the_plan_is_a_step_of_its_own(quick, tmp_path):
    plan = make_plan(quick)
    report = _empty_report()
    ws = Workspace(root=tmp_path, cache=tmp_path / "cache")
    tree = None  # nothing boots: the steps are only listed
    images = Images(ws, tree, tmp_path, {})
    blk = block_steps(ws, tree, report, plan, images, tmp_path)
    net = net_steps(ws, tree, report, plan, images, tmp_path)
    assert len(blk) == plan.reps * len(block_setups(quick)) * 2  # throughput and traced
    assert len(net) == plan.reps * len(net_setups()) * 2
    names = [step.name for step in blk + net]
    assert len(set(names)) == len(names)
    assert not (tmp_path / "bench-disk.img").exists()  # made by the first block boot


def test_each_step_leaves_the_list_of_remaining_steps_when_it_finishes():
    report = _empty_report()
    seen = []
    steps = [Step(name, name, lambda: seen.append(list(report.remaining))) for name in "abc"]
    run_steps(report, steps)
    assert seen == [["a", "b", "c"], ["b", "c"], ["c"]]
    assert report.remaining == []


# --------------------------------------------------------------------------- interrupted runs


class FakeGuest:
    """Stands for harness.Guest: records that its `with` block was left."""

    def __init__(self) -> None:
        self.closed = False

    def __enter__(self) -> FakeGuest:
        return self

    def __exit__(self, *exc_info) -> None:
        self.closed = True


@dataclass
class FakeBench:
    """A run without QEMU: four steps that measure like boots; step 3 is interrupted with
    `interrupt` (raising or signalling) inside a guest's `with` block, unless `steps` is 2."""

    interrupt: Callable[[], None]
    steps: int = 4
    guest: FakeGuest = field(default_factory=FakeGuest)
    cleaned_up: bool = False
    ran_after_the_interrupt: bool = False

    @contextlib.contextmanager
    def prepare(self, ws: Workspace, plan) -> Iterator[Run]:
        report = BenchReport(
            timestamp="20260101T000000Z",
            quick=plan.quick,
            machine={"cpu": "fake"},
            target="deb12-amd64",
            release="6.1.0-0-amd64",
            plan=dataclasses.asdict(plan),
            notes=["fio cannot run in this guest"],
        )
        throughput = Throughput("blk", PVF_BLK, "seqread-1m", "MB/s")
        report.throughput.append(throughput)

        def symcheck() -> None:
            report.toolchain.symcheck_cold_s = 1.5

        def traced() -> None:
            with self.guest:
                self.interrupt()

        def net() -> None:
            self.ran_after_the_interrupt = True

        steps = [
            Step("blk pvf_blk throughput boot 1", "blk", lambda: throughput.samples.append(200.0)),
            Step("symcheck", "toolchain", symcheck),
            Step("blk pvf_blk traced boot 1", "blk traced", traced),
            Step("net pvf_net throughput boot 1", "net", net),
        ]
        try:
            yield Run(report, steps[: self.steps])
        finally:
            self.cleaned_up = True


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def _sigterm() -> None:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # it would kill the tests
        raise AssertionError("nothing handles SIGTERM during the run")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)  # the handler interrupts the sleep
    raise AssertionError("SIGTERM did not interrupt the step")


def _bench_json(ws: Workspace) -> dict:
    return json.loads((ws.build_dir / "bench" / "bench-20260101T000000Z.json").read_text())


@pytest.fixture
def default_sigterm():
    """SIGTERM as a bench run finds it from the command line: not handled by anyone."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:
        pytest.skip("signals are handled only in the main thread")
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("interrupt", [_ctrl_c, _sigterm], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_keeps_what_it_measured_and_exits_130(
    interrupt, tmp_path, capsys, default_sigterm
):
    ws = Workspace(root=tmp_path, cache=tmp_path / "cache")
    bench = FakeBench(interrupt)
    assert run_command(lambda: bench_command(ws, quick=True, prepare=bench.prepare)) == 130
    out, err = capsys.readouterr()
    assert out == ""  # no table for a run that did not finish
    assert err.endswith("pvfront: interrupted\n")
    assert "bench: step 3/4, under a minute left: blk traced\n" in err
    assert bench.guest.closed and bench.cleaned_up and not bench.ran_after_the_interrupt
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    partial = _bench_json(ws)
    assert partial["complete"] is False
    assert partial["remaining"] == ["blk pvf_blk traced boot 1", "net pvf_net throughput boot 1"]
    assert partial["throughput"][0]["samples"] == [200.0]
    assert partial["toolchain"]["symcheck_cold_s"] == 1.5
    assert not (ws.build_dir / "bench" / "latest.json").exists()  # the last complete run's

    # Nothing else is lost: the same JSON as a run of only the two steps that finished.
    capsys.readouterr()
    finished = FakeBench(interrupt, steps=2)
    assert bench_command(ws, quick=True, prepare=finished.prepare) == 0
    complete = _bench_json(ws)
    assert complete["complete"] is True and complete["remaining"] == []
    for data in (partial, complete):
        for key in ("complete", "remaining", "seconds"):
            del data[key]
    assert partial == complete


def test_an_interrupted_trace_window_asks_qmp_nothing_more(tmp_path):
    class Qmp:
        def __init__(self) -> None:
            self.commands: list[tuple[str, dict]] = []

        def execute(self, command: str, **arguments) -> None:
            self.commands.append((command, arguments))

    guest = SimpleNamespace(qmp=Qmp(), trace=Trace(tmp_path / "events", tmp_path / "out"))
    with pytest.raises(KeyboardInterrupt), TraceWindow(guest):
        raise KeyboardInterrupt
    assert [args["enable"] for _, args in guest.qmp.commands] == [True] * len(TRACE_EVENTS)


def test_an_interrupted_transfer_does_not_wait_for_the_guest():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), HostPeer("sink", 10, timeout=30.0) as peer:
        time.sleep(0.5)  # the peer waits in accept: closing its socket would not wake it
        raise KeyboardInterrupt
    peer.thread.join(5.0)
    assert not peer.thread.is_alive() and peer.result.error.startswith("no connection")
    assert time.monotonic() - started < 10.0  # not the 30 s the guest had to connect


@pytest.mark.parametrize("arch", ["amd64", "i386"])
def test_the_ide_setup_boots_a_machine_with_legacy_ide_and_the_others_the_targets_own(
    arch, tmp_path
):
    target = next(
        t for t in load_targets(Workspace.discover().targets_file).targets if t.arch == arch
    )
    tree = KernelTree(target, tmp_path, "0.0-test", {}, "headers")
    for setup in block_setups(quick=False):
        booted = tree_for(tree, setup.legacy_ide).target.qemu_machine
        if setup.legacy_ide:
            assert booted.legacy_ide, setup.name
        else:
            assert booted == target.qemu_machine, setup.name


# --------------------------------------------------------------------------- network jobs


def _job(name: str):
    return next(j for j in net_jobs(quick=False) if j.name == name)


def _iperf3_output(kind: str, **received) -> str:
    """What the guest's `iperf3 --json` prints, cut to the parts the bench reads (the shape
    of iperf 3.12's output)."""
    if kind == "udp":
        summary = {"seconds": 2.0, "bytes": 640000, "packets": 10000, "lost_packets": 0}
    else:
        summary = {"seconds": 2.0, "bytes": 300_000_000, "sender": True}
    summary.update(received)
    sent = {**summary, "bytes": summary["bytes"] + 1_000_000, "retransmits": 3}
    data = {"start": {"test_start": {"protocol": kind.upper()}}, "intervals": [], "end": {}}
    data["end"] = {"streams": [], "sum_sent": sent, "sum_received": summary}
    return "warning: something on stderr first\n" + json.dumps(data)


def test_a_stream_is_the_megabytes_per_second_the_receiver_counted():
    for name in ("guest-to-host", "host-to-guest-4flows"):
        figure = parse_iperf3_json(_iperf3_output("tcp"), _job(name))
        assert figure == pytest.approx(150.0)  # 300 MB received in 2 s, not the 301 sent


def test_udp_is_the_datagrams_per_second_that_arrived():
    output = _iperf3_output("udp", packets=10000, lost_packets=2500)
    assert parse_iperf3_json(output, _job("udp64-guest-to-host")) == pytest.approx(3750.0)


def test_an_iperf3_error_is_a_one_line_error():
    output = json.dumps({"start": {}, "error": "unable to connect to server: No route to host"})
    with pytest.raises(ValueError, match=r"^iperf3: unable to connect to server: No route"):
        parse_iperf3_json(output, _job("guest-to-host"))


@pytest.mark.parametrize(
    "output",
    ["iperf3: not found", '{"end": {"sum_received": {"seconds": 2.0', '{"end": {}}'],
    ids=["no JSON", "cut short", "no summary"],
)
def test_iperf3_output_that_is_not_a_result_is_an_error_not_a_figure(output):
    with pytest.raises(ValueError) as caught:
        parse_iperf3_json(output, _job("guest-to-host"))
    assert "\n" not in str(caught.value)


def test_a_result_measured_over_no_time_is_an_error():
    with pytest.raises(ValueError, match="no time"):
        parse_iperf3_json(_iperf3_output("tcp", seconds=0), _job("guest-to-host"))


BUSYBOX_PING = """\
PING 10.0.3.2 (10.0.3.2): 56 data bytes

--- 10.0.3.2 ping statistics ---
500 packets transmitted, 500 packets received, 0% packet loss
round-trip min/avg/max = 0.181/0.402/2.123 ms
"""


def test_the_round_trip_is_pings_mean_in_microseconds():
    assert parse_ping_rtt(BUSYBOX_PING) == pytest.approx(402.0)
    iputils = "5 packets transmitted, 5 received, 0% packet loss, time 4005ms\n"
    iputils += "rtt min/avg/max/mdev = 0.050/0.071/0.090/0.014 ms\n"
    assert parse_ping_rtt(iputils) == pytest.approx(71.0)


def test_an_unanswered_request_fails_the_round_trip_rather_than_leaving_the_mean():
    lossy = BUSYBOX_PING.replace("500 packets received", "499 packets received")
    with pytest.raises(ValueError, match="1 of 500 requests unanswered"):
        parse_ping_rtt(lossy)
    with pytest.raises(ValueError, match="no ping summary"):
        parse_ping_rtt("ping: sendto: Network unreachable\n")


ETHTOOL_K = """\
Features for tap0:
rx-checksumming: off [fixed]
tx-checksumming: on
\ttx-checksum-ip-generic: on
tcp-segmentation-offload: off
\ttx-tcp-segmentation: off
generic-segmentation-offload: off
generic-receive-offload: on
large-receive-offload: off [fixed]
"""


def test_ethtool_features_are_read_fixed_or_not():
    features = parse_ethtool_features(ETHTOOL_K)
    assert features["tcp-segmentation-offload"] is False
    assert features["generic-segmentation-offload"] is False
    assert features["generic-receive-offload"] is True
    assert features["tx-tcp-segmentation"] is False  # indented sub-features too
    assert features["large-receive-offload"] is False


def test_the_iperf3_client_asks_for_what_the_job_is():
    tcp = client_command(_job("host-to-guest-4flows"), "10.0.3.1", 5201, seconds=2).split()
    assert tcp[:5] == ["iperf3", "-c", "10.0.3.1", "-p", "5201"]
    assert "--json" in tcp and "--reverse" in tcp
    assert tcp[tcp.index("--parallel") + 1] == "4" and tcp[tcp.index("--time") + 1] == "2"
    assert "--udp" not in tcp and "--bytes" not in tcp
    udp = client_command(_job("udp64-guest-to-host"), "10.0.3.1", 5201, size=1 << 20).split()
    assert "--reverse" not in udp and "--parallel" not in udp
    assert udp[udp.index("--length") + 1] == "64" and udp[udp.index("--bitrate") + 1] == "0"
    assert udp[udp.index("--bytes") + 1] == str(1 << 20) and "--time" not in udp


def test_an_iperf3_job_is_bounded_by_time_or_by_bytes_and_is_no_ping():
    job = _job("guest-to-host")
    for bounds in ({}, {"seconds": 2, "size": 1 << 20}):
        with pytest.raises(ValueError, match="one of them"):
            client_command(job, "10.0.3.1", 5201, **bounds)
    with pytest.raises(ValueError, match="not an iperf3 job"):
        client_command(_job("request-response"), "10.0.3.1", 5201, seconds=2)


def test_the_round_trip_pings_the_guest_from_the_namespace_one_request_at_a_time():
    route = Route("10.0.3.2/24", "10.0.3.1", "10.0.3.1")
    argv = ping_command(route, 500)
    assert argv[1:3] == ["ping", "-A"]  # the next request when the reply is in
    assert argv[argv.index("-c") + 1] == "500" and argv[-1] == "10.0.3.2"


def _jobs_of(setup_name: str, quick: bool = False) -> set[str]:
    setup = _setup(setup_name, net_setups())
    return {job.name for job in jobs_for(setup, quick, have_iperf3=True)}


STREAMS = {
    "guest-to-host",
    "host-to-guest",
    "guest-to-host-4flows",
    "host-to-guest-4flows",
}
EVERY_DRIVER = STREAMS | {"request-response", "udp64-guest-to-host", "udp64-host-to-guest"}
THE_ADVICE = {
    "guest-to-host-tap-gso-off",
    "host-to-guest-tap-gso-off",
    "guest-to-host-4flows-tap-gso-off",
    "host-to-guest-4flows-tap-gso-off",
}
JUMBO = {"guest-to-host-mtu9000", "host-to-guest-mtu9000"}


def test_every_driver_runs_streams_each_way_with_1_and_4_flows_a_round_trip_and_udp():
    for name in (PVF_NET, VIRTIO_NET, E1000):
        assert _jobs_of(name) >= EVERY_DRIVER, name


def test_the_tap_offload_advice_and_mtu_9000_are_measured_for_both_virtio_drivers_only():
    for name in (PVF_NET, VIRTIO_NET):
        assert _jobs_of(name) == EVERY_DRIVER | THE_ADVICE | JUMBO, name
    assert _jobs_of(E1000) == EVERY_DRIVER


def test_the_advice_is_the_same_streams_with_the_host_taps_offloads_off():
    for name in THE_ADVICE:
        job, plain = _job(name), _job(name.removesuffix("-tap-gso-off"))
        assert not job.tap_offloads and plain.tap_offloads
        same = dataclasses.replace(job, name=plain.name, tap_offloads=True, virtio_only=False)
        assert same == plain


def test_a_quick_run_asks_the_advice_of_one_flow_each_way():
    assert _jobs_of(PVF_NET, quick=True) == EVERY_DRIVER | JUMBO | {
        "guest-to-host-tap-gso-off",
        "host-to-guest-tap-gso-off",
    }


def test_user_networking_is_one_stream_each_way_with_or_without_iperf3():
    user = _setup(PVF_NET_USER, net_setups())
    for have_iperf3 in (True, False):
        jobs = jobs_for(user, quick=False, have_iperf3=have_iperf3)
        assert [job.name for job in jobs] == list(NET_DIRECTIONS)


def test_without_iperf3_in_the_guest_only_the_one_flow_streams_run():
    pvf_net = _setup(PVF_NET, net_setups())
    jobs = jobs_for(pvf_net, quick=False, have_iperf3=False)
    assert [job.name for job in jobs] == list(NET_DIRECTIONS)


def test_the_units_and_which_way_is_better():
    assert (_job("guest-to-host").unit, _job("guest-to-host").better) == ("MB/s", "higher")
    assert (_job("udp64-host-to-guest").unit, _job("udp64-host-to-guest").better) == (
        "pps",
        "higher",
    )
    assert (_job("request-response").unit, _job("request-response").better) == ("us", "lower")


def _net_report(figures: dict[str, tuple[float, float]]) -> BenchReport:
    """pvf_net's and virtio_net's figure per job; e1000 half of virtio_net's."""
    report = _empty_report()
    for job in net_jobs(quick=False):
        ours, theirs = figures.get(job.name, (100.0, 100.0))
        for setup, value in ((PVF_NET, ours), (VIRTIO_NET, theirs), (E1000, theirs / 2)):
            report.throughput.append(Throughput("net", setup, job.name, job.unit, [value]))
    return report


def test_every_stream_job_has_a_throughput_goal_against_virtio_net():
    report = _net_report({"host-to-guest-4flows-tap-gso-off": (90.0, 100.0)})
    goals = {g.name: g for g in net_goals(report, net_jobs(quick=False))}
    streams = [j for j in net_jobs(quick=False) if j.kind == "stream"]
    assert len(streams) == len(STREAMS | THE_ADVICE | JUMBO)
    for job in streams:
        goal = goals[f"net {job.name}: MB/s >= {VIRTIO_NET}"]
        assert (goal.limit, goal.better) == (1.0, "higher")
    short = goals[f"net host-to-guest-4flows-tap-gso-off: MB/s >= {VIRTIO_NET}"]
    assert (short.measured, short.verdict, short.gap) == (0.9, "short", "0.10x under (10%)")
    assert "4 flows on one queue pair" in short.basis


def test_the_round_trip_may_be_5_percent_slower_than_virtio_nets():
    for ours, verdict in ((105.0, "met"), (106.0, "short")):
        report = _net_report({"request-response": (ours, 100.0)})
        goal = next(g for g in net_goals(report, net_jobs(quick=True)) if "round trip" in g.name)
        assert (goal.measured, goal.limit, goal.better) == (ours / 100, 1.05, "lower")
        assert goal.verdict == verdict


def test_udp_is_reported_without_a_goal_the_issue_does_not_set():
    goals = net_goals(_net_report({}), net_jobs(quick=False))
    assert not [g for g in goals if "udp64" in g.name]


def test_every_net_figure_is_a_ratio_to_virtio_net_in_the_json_and_the_table():
    report = _net_report({"guest-to-host": (150.0, 100.0)})
    data = to_json(report)
    by_key = {(r["workload"], r["setup"]): r for r in data["ratios"]}
    assert by_key[("guest-to-host", PVF_NET)]["ratio"] == pytest.approx(1.5)
    assert by_key[("guest-to-host", E1000)]["ratio"] == pytest.approx(0.5)
    assert by_key[("guest-to-host", E1000)]["baseline"] == VIRTIO_NET
    assert not [r for r in data["ratios"] if r["setup"] == VIRTIO_NET]
    assert len(data["ratios"]) == 2 * len(net_jobs(quick=False))
    lines = render_table(report).splitlines()
    header = next(line.split() for line in lines if line.startswith("throughput "))
    assert header[-2:] == [f"{PVF_NET}/{VIRTIO_NET}", f"{E1000}/{VIRTIO_NET}"]
    row = next(line.split() for line in lines if line.startswith("guest-to-host "))
    assert row[-2:] == ["1.50", "0.50"]


# --------------------------------------------------------------------------- the link's two ends


class FakeEnd:
    """Both ends of a bench link at once: the guest's shell and the namespace's commands,
    recorded; `ethtool -k` answers with `features`, `ethtool -K` fails with `refuse`."""

    def __init__(self, features: str = ETHTOOL_K, refuse: str = "") -> None:
        self.commands: list[str] = []
        self.features = features
        self.refuse = refuse

    def run(self, command, timeout: float = 60) -> SimpleNamespace | str:
        if isinstance(command, str):  # the guest's shell
            self.commands.append(f"guest: {command}")
            return SimpleNamespace(output="")
        self.commands.append("host: " + " ".join(command))
        if self.refuse and command[:2] == ["ethtool", "-K"]:
            raise SetupError(f"netns ns: {' '.join(command)}: {self.refuse}")
        return self.features if command[:2] == ["ethtool", "-k"] else ""


def _link(end: FakeEnd) -> Link:
    route = Route("10.0.3.2/24", "10.0.3.1", "10.0.3.1", ns=end)
    return Link(end, route, "eth0", "tap0")


def test_the_link_is_changed_only_where_a_job_asks_for_other_than_the_last_left_it():
    end = FakeEnd()
    link = _link(end)
    for name in (
        "guest-to-host",
        "host-to-guest",
        "guest-to-host-mtu9000",
        "host-to-guest-mtu9000",
    ):
        link.prepare(_job(name))
    assert end.commands == [
        "guest: ip link set eth0 mtu 9000",
        "host: ip link set tap0 mtu 9000",
    ]
    end.commands.clear()
    link.prepare(_job("guest-to-host-tap-gso-off"))
    assert end.commands == [
        "guest: ip link set eth0 mtu 1500",
        "host: ip link set tap0 mtu 1500",
        "host: ethtool -K tap0 gso off tso off",
        "host: ethtool -k tap0",
    ]
    end.commands.clear()
    link.prepare(_job("guest-to-host"))
    assert end.commands == ["host: ethtool -K tap0 gso on tso on"]


def test_offloads_that_stay_on_after_ethtool_fail_the_job():
    end = FakeEnd(
        ETHTOOL_K.replace(
            "generic-segmentation-offload: off", "generic-segmentation-offload: on [fixed]"
        )
    )
    link = _link(end)
    with pytest.raises(ValueError, match="tap0: still on after ethtool -K: generic-segmentation"):
        link.prepare(_job("guest-to-host-tap-gso-off"))
    assert link.tap_offloads  # the next job does not take them for off


def test_a_host_command_that_fails_fails_its_job_not_the_run():
    link = _link(FakeEnd(refuse="Operation not supported"))
    # record() reports a ValueError and goes on with the next job; a SetupError would end
    # the whole run.
    with pytest.raises(ValueError, match="ethtool -K tap0 gso off tso off: Operation not"):
        link.prepare(_job("guest-to-host-tap-gso-off"))


def test_a_user_networking_link_has_no_host_end_to_change():
    end = FakeEnd()
    link = Link(end, Route.user_networking(), "eth0", None)
    with pytest.raises(ValueError, match="only a TAP link"):
        link.prepare(_job("guest-to-host-tap-gso-off"))


# --------------------------------------------------------------------------- host programs


def run_command_output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def _tree(arch: str, tmp_path) -> KernelTree:
    target = next(
        t for t in load_targets(Workspace.discover().targets_file).targets if t.arch == arch
    )
    return KernelTree(target, tmp_path, "0.0-test", {}, "headers")


def test_a_host_program_comes_with_its_libraries_and_the_loader(tmp_path):
    files = host_program_files(_tree("amd64", tmp_path), "sh")
    assert files is not None
    assert files["/usr/bin/sh"].is_file()
    assert any("/libc.so" in path for path in files)
    assert any("/ld-linux" in path for path in files)  # the dynamic loader
    assert all(path.startswith("/") and source.is_file() for path, source in files.items())


def test_no_host_program_for_a_guest_of_another_architecture_or_one_the_host_lacks(tmp_path):
    assert host_program_files(_tree("i386", tmp_path), "sh") is None
    assert host_program_files(_tree("amd64", tmp_path), "pvf-no-such-program") is None


# --------------------------------------------------------------------------- the iperf3 server


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is a host tool: invoke setup")
def test_the_iperf3_server_serves_job_after_job_inside_the_namespace_and_goes(tmp_path):
    with netns.namespace() as ns:
        route = Route.tap(ns, "tap0")
        with Iperf3Server(route, tmp_path / "server.log") as server:
            process = server.process
            assert process is not None
            # A rate-limited second each: the server's answers, not a speed, are tested.
            client = ["iperf3", "-c", route.host, "-p", str(server.port), "--json", "-i", "0"]
            for extra in ([], ["--reverse"]):
                output = ns.run([*client, "-t", "1", "-b", "1M", *extra])
                assert parse_iperf3_json(output, _job("guest-to-host")) > 0
        assert process.poll() is not None and server.process is None
    # The address exists in the namespace alone: a server for it cannot start outside.
    outside = Route(route.guest_cidr, route.host, route.host)
    with pytest.raises(ValueError, match=r"^iperf3 server on 10\.0\.3\.1: "):
        Iperf3Server(outside, tmp_path / "outside.log").__enter__()


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is a host tool: invoke setup")
def test_over_user_networking_the_iperf3_server_takes_a_free_port_on_loopback(tmp_path):
    route = Route.user_networking()
    with (
        Iperf3Server(route, tmp_path / "a.log") as first,
        Iperf3Server(route, tmp_path / "b.log") as second,
    ):
        assert first.port != second.port
        client = ["iperf3", "-c", "127.0.0.1", "-p", str(second.port), "--json", "-i", "0"]
        output = run_command_output([*client, "-t", "1", "-b", "1M"])
        assert parse_iperf3_json(output, _job("guest-to-host")) > 0


# --------------------------------------------------------------------------- parts of a run


def test_a_run_can_measure_only_some_parts_always_in_the_order_they_run():
    assert make_plan(True).parts == ("toolchain", "blk", "net")
    assert make_plan(True, ["net", "toolchain", "net"]).parts == ("toolchain", "net")


@pytest.mark.parametrize("parts", [["net", "wifi"], []], ids=["unknown", "none"])
def test_a_part_that_does_not_exist_is_a_one_line_usage_error(parts):
    with pytest.raises(UsageError) as caught:
        make_plan(True, parts)
    assert "\n" not in str(caught.value) and "toolchain, blk, net" in str(caught.value)


def test_only_the_goals_of_the_parts_measured_are_judged():
    report = _report()
    goals = plan_goals(report, make_plan(True, ["net"]))
    assert goals and all(g.name.startswith("net ") for g in goals)
    everything = [g.name for g in plan_goals(report, make_plan(True))]
    assert [g.name for g in goals] == [n for n in everything if n.startswith("net ")]


def test_exits_per_kib_is_judged_apart_from_exits_per_packet():
    # The same 8 MiB: pvf_net in 1,000 bigger packets and 2,000 exits, virtio_net in 4,000
    # packets and 3,000 exits. Per packet pvf_net costs more, per byte less.
    report = _empty_report()
    for setup, packets, exits in ((PVF_NET, 1000, 2000), (VIRTIO_NET, 4000, 3000)):
        for unit, units in (("packet", packets), ("KiB", 8192)):
            sample = CostSample(units, exits, exits, 0)
            report.costs.append(Cost("net", setup, "guest-to-host", unit, [sample]))
    goals = {g.name: g for g in net_goals(report, [])}
    per_packet = goals[f"net guest-to-host: exits/packet <= {VIRTIO_NET}"]
    per_kib = goals[f"net guest-to-host: exits/KiB <= {VIRTIO_NET}"]
    assert (per_packet.measured, per_packet.verdict) == (pytest.approx(2.0 / 0.75), "short")
    assert (per_kib.measured, per_kib.verdict) == (pytest.approx(2 / 3), "met")
    rows = [line.split()[:3] for line in render_table(report).splitlines()]
    assert ["guest-to-host", "per", "KiB"] in rows and ["guest-to-host", "per", "packet"] in rows


def test_a_virtio_device_offers_mtu_9000_only_in_boots_whose_jobs_need_it():
    # pvf_net's maximum MTU is what the device offers; virtio_net's is 64 KiB regardless.
    for name in (PVF_NET, VIRTIO_NET):
        setup = _setup(name, net_setups())
        assert device_mtu(setup, jobs_for(setup, quick=True, have_iperf3=True)) == 9000
        assert device_mtu(setup, jobs_for(setup, quick=True, have_iperf3=False)) is None
    e1000 = _setup(E1000, net_setups())
    assert device_mtu(e1000, net_jobs(quick=True)) is None  # not a virtio device
