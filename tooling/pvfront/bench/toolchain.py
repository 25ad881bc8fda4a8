"""The toolchain's speed: the symbol check against depmod, boots and `invoke setup build`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from pvfront import image
from pvfront.bench.plan import Plan
from pvfront.bench.progress import Step, measured
from pvfront.bench.results import BenchReport
from pvfront.guest import measure_boot
from pvfront.kerneltree import KernelTree
from pvfront.treecheck import check_tree
from pvfront.workspace import Workspace


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


def bench_tree(modules_dir: Path, symvers: Path, cache_dir: Path, *, jobs: int = 2) -> dict:
    """Wall times of a full-tree check, cold (cache emptied) then warm, for the benchmark."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    figures = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        report = check_tree(modules_dir, symvers, cache_dir=cache_dir, jobs=jobs)
        figures[label] = time.perf_counter() - start
        figures[f"{label}_parsed"] = report.parsed
    figures["modules"] = len(report.verdicts)
    return figures


def toolchain_steps(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, work: Path
) -> list[Step]:
    tools = report.toolchain

    def symbols() -> None:
        figures = bench_tree(tree.modules_dir, tree.symvers, work / "symcache", jobs=2)
        tools.symcheck_cold_s = figures["cold"]
        tools.symcheck_warm_s = figures["warm"]
        tools.symcheck_modules = figures["modules"]
        tools.depmod_s = time_depmod(tree, plan.depmod_runs)

    def boot() -> None:
        tools.boot_s = measure_boot(ws, tree, plan.boot_runs)

    def setup_build() -> None:
        tools.setup_build_s = time_setup_build(ws, plan.build_runs)

    def image_boot() -> None:
        tools.image_boots = image.measure_boot(ws, tree, plan.image_boot_runs)

    return [
        measured(report, "invoke setup build", "toolchain: invoke setup build", setup_build),
        measured(report, "symcheck", "toolchain: symbol check vs depmod", symbols),
        measured(report, "measure_boot", "toolchain: boot to first command", boot),
        measured(
            report,
            "image.measure_boot",
            "toolchain: Debian guest to login shell (the image is made first if it must be)",
            image_boot,
        ),
    ]
