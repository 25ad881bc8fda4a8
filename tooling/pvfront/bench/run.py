"""The whole run on the default target, and the command that prints and keeps it."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pvfront import provision
from pvfront.bench.block import bench_block, fio_files
from pvfront.bench.goals import block_goals, net_goals, toolchain_goals
from pvfront.bench.guests import Images
from pvfront.bench.net import bench_net
from pvfront.bench.plan import fio_jobs, make_plan
from pvfront.bench.report import render_table, write_outputs
from pvfront.bench.results import BenchReport
from pvfront.bench.toolchain import bench_toolchain
from pvfront.errors import EXIT_FAILED, EXIT_OK
from pvfront.guest import choose_accel
from pvfront.kerneltree import KernelTree
from pvfront.targets import load_targets
from pvfront.workspace import Workspace


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
