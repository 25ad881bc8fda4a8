"""The whole run on the default target, and the command that prints and keeps it."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pvfront import provision
from pvfront.bench.block import block_steps, fio_files
from pvfront.bench.goals import block_goals, net_goals, toolchain_goals
from pvfront.bench.guests import Images
from pvfront.bench.net import net_steps
from pvfront.bench.plan import PARTS, Plan, fio_jobs, make_plan, net_jobs
from pvfront.bench.programs import host_program_files
from pvfront.bench.progress import Step, run_steps, say
from pvfront.bench.report import render_table, write_json, write_outputs
from pvfront.bench.results import BenchReport, Goal
from pvfront.bench.toolchain import toolchain_steps
from pvfront.errors import EXIT_FAILED, EXIT_OK
from pvfront.guest import choose_accel, restore_signals, trap_signals
from pvfront.kerneltree import KernelTree
from pvfront.targets import load_targets
from pvfront.workspace import Workspace


def _first_line(argv: list[str]) -> str:
    """A tool's first line of output, or nothing when the host lacks it."""
    if shutil.which(argv[0]) is None:
        return ""
    output = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return output.strip().splitlines()[0] if output.strip() else ""


def machine_info(ws: Workspace, tree: KernelTree) -> dict[str, Any]:
    """Where the figures come from: they mean nothing without it."""
    cpu = ""
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else ""
    qemu = subprocess.run(
        [tree.target.qemu, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    fio, iperf3 = (_first_line([tool, "--version"]) for tool in ("fio", "iperf3"))
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
        "iperf3": iperf3,
    }


@dataclass
class Run:
    """A prepared run: the report its steps fill in, and the steps in order."""

    report: BenchReport
    steps: list[Step]


#: Prepares the run of a plan; what it makes for the run lasts until its `with` block ends.
Prepare = Callable[[Workspace, Plan], AbstractContextManager[Run]]


@contextlib.contextmanager
def qemu_run(ws: Workspace, plan: Plan) -> Iterator[Run]:
    """Every measurement on the default target, the guests under QEMU; their images and disk
    live in a temporary directory until the run ends."""
    targets = load_targets(ws.targets_file)
    tree = provision.ensure(ws, [targets.default])[0]
    report = BenchReport(
        timestamp=datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"),
        quick=plan.quick,
        machine=machine_info(ws, tree),
        target=tree.target.id,
        release=tree.release,
        plan=dataclasses.asdict(plan),
    )
    files = fio_files(tree)
    if files is None and "blk" in plan.parts:
        report.notes.append(
            "fio cannot run in this guest: block throughput uses parallel dd (sequential streams)"
        )
    iperf3 = host_program_files(tree, "iperf3")
    if iperf3 is None and "net" in plan.parts:
        report.notes.append(
            "iperf3 cannot run in this guest: the net jobs are one busybox nc stream each way, "
            "about 1 KiB per write"
        )
    if plan.parts != PARTS:
        report.notes.append(f"only {', '.join(plan.parts)} measured (--only)")
    with tempfile.TemporaryDirectory(prefix="pvf-bench-") as tmp:
        work = Path(tmp)
        parts: dict[str, Callable[[], list[Step]]] = {
            "toolchain": lambda: toolchain_steps(ws, tree, report, plan, work),
            "blk": lambda: block_steps(
                ws, tree, report, plan, Images(ws, tree, work, files or {}), work
            ),
            "net": lambda: net_steps(
                ws, tree, report, plan, Images(ws, tree, work, iperf3 or {}), work
            ),
        }
        yield Run(report, [step for part in plan.parts for step in parts[part]()])


def plan_goals(report: BenchReport, plan: Plan) -> list[Goal]:
    """The goals of the parts the plan runs, judged on the report."""
    goals = {
        "toolchain": lambda: toolchain_goals(report.toolchain),
        "blk": lambda: block_goals(report, fio_jobs(plan.quick)),
        "net": lambda: net_goals(report, net_jobs(plan.quick)),
    }
    # The devices' goals first, as the table always showed them.
    return [
        goal for part in ("blk", "net", "toolchain") if part in plan.parts for goal in goals[part]()
    ]


def _conclude(report: BenchReport, plan: Plan, started: float) -> None:
    report.goals = plan_goals(report, plan)
    report.seconds = time.monotonic() - started


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job's time limit, `kill`) ends the run as Ctrl-C does, through every `with`
    block: QEMU is killed and what was measured is kept. Only in the main thread, where Python
    runs handlers, and only when nothing else handles SIGTERM."""
    old = trap_signals((signal.SIGTERM,), _raise_interrupt)
    try:
        yield
    finally:
        restore_signals(old, _raise_interrupt)


def run_bench(
    ws: Workspace, quick: bool, prepare: Prepare = qemu_run, parts: Sequence[str] = PARTS
) -> BenchReport:
    """Every step of the run, then the goals judged on what it measured.

    Interrupted (Ctrl-C, SIGTERM), it writes what was measured so far to the run's JSON file,
    marked incomplete with the steps left, and lets the interrupt end the command (exit 130).
    """
    started = time.monotonic()
    plan = make_plan(quick, parts)
    with _terminate_as_interrupt(), prepare(ws, plan) as run:
        report = run.report
        try:
            run_steps(report, run.steps)
        except KeyboardInterrupt:
            _conclude(report, plan, started)
            path = write_json(ws, report)
            say(
                f"interrupted with {len(report.remaining)} of {len(run.steps)} steps left; "
                f"what was measured is in {path}"
            )
            raise
    _conclude(report, plan, started)
    return report


def bench_command(
    ws: Workspace, quick: bool, prepare: Prepare = qemu_run, parts: Sequence[str] = PARTS
) -> int:
    """`pvfront bench` / `invoke bench`: run, print the table, keep the JSON and chart.

    Exit 0 when every measurement ran (short goals are reported, not failed), 1 when some
    boot or measurement failed, 130 when interrupted (the JSON keeps what was measured).
    """
    report = run_bench(ws, quick, prepare, parts)
    sys.stdout.write(render_table(report))
    outputs = write_outputs(ws, report)
    print(f"json: {outputs.json} (and {outputs.latest.name})")
    print(
        f"chart: {outputs.chart}"
        if outputs.chart
        else "chart: not drawn (pip install matplotlib, or pip install -e '.[bench]')"
    )
    return EXIT_FAILED if report.errors else EXIT_OK
