"""Block devices: fio (or parallel dd) in untraced boots for throughput, traced for costs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvfront import initramfs
from pvfront.bench.guests import (
    BIG_COMMAND_TIMEOUT,
    Images,
    TraceWindow,
    bench_guest,
    cost_sample,
    read_interrupts,
    tree_for,
    wait_for,
)
from pvfront.bench.parse import fio_figure, parse_block_stat, parse_fio_json, uptime_span
from pvfront.bench.plan import BlockSetup, FioJob, Plan, block_setups, fio_jobs
from pvfront.bench.programs import host_program_files
from pvfront.bench.progress import Step, record
from pvfront.bench.results import BenchReport, Cost, CostSample, Throughput
from pvfront.guest import Guest, make_disk
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Disk
from pvfront.workspace import Workspace


def fio_files(tree: KernelTree) -> dict[str, Path] | None:
    """The host's fio and every library it loads, for the guest; None where they cannot run."""
    return host_program_files(tree, "fio")


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


@contextlib.contextmanager
def _disk_guest(
    ws: Workspace,
    tree: KernelTree,
    setup: BlockSetup,
    image: initramfs.Initramfs,
    disk: Path,
    trace_dir: Path | None,
    label: str,
) -> Iterator[Guest]:
    """A bench guest on the machine the setup needs, once the setup's disk has appeared."""
    with bench_guest(
        ws,
        tree_for(tree, setup.legacy_ide),
        image,
        setup.in_tree,
        trace_dir,
        label,
        disks=[Disk(disk, interface=setup.interface)],
    ) as guest:
        wait_for(guest, f"[ -b /dev/{setup.device} ]")
        yield guest


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
    with _disk_guest(ws, tree, setup, image, disk, None, f"blk-{setup.name}") as guest:
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
    label = f"blk-{setup.name}-traced"
    with _disk_guest(ws, tree, setup, image, disk, trace_dir, label) as guest:
        stat = f"cat /sys/block/{setup.device}/stat"
        for job in jobs:
            if not have_fio and job.extra:
                continue  # batching needs fio's io_submit; dd cannot ask for it
            before_irq = read_interrupts(guest)
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
                requests,
                window.counts,
                before_irq,
                read_interrupts(guest),
                setup.regions,
                setup.irqs,
            )
    return samples


@dataclass
class BenchDisk:
    """The raw image every block boot uses: made for the first of them (not while the toolchain
    is timed), removed after the last (the net boots need no disk)."""

    directory: Path
    mib: int
    path: Path | None = None

    def get(self) -> Path:
        if self.path is None:
            self.path = make_disk(self.directory, self.mib, pattern_seed=1, name="bench-disk.img")
        return self.path

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


def block_steps(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, images: Images, work: Path
) -> list[Step]:
    """Block devices: untraced boots for throughput, traced boots for costs, alternating."""
    setups = block_setups(plan.quick)
    jobs = fio_jobs(plan.quick)
    have_fio = bool(images.files)
    disk = BenchDisk(work, plan.disk_mib)
    for setup in setups:
        for job in jobs:
            if job.throughput:
                report.throughput.append(Throughput("blk", setup.name, job.name, job.unit))
            report.costs.append(Cost("blk", setup.name, job.name, "request"))

    def throughput(setup: BlockSetup, image: initramfs.Initramfs, disk_path: Path) -> None:
        figures = block_throughput_boot(ws, tree, setup, image, disk_path, jobs, plan, have_fio)
        for name, value in figures.items():
            found = report.find_throughput("blk", setup.name, name)
            assert found is not None
            found.samples.append(value)

    def costs(setup: BlockSetup, image: initramfs.Initramfs, disk_path: Path) -> None:
        samples = block_cost_boot(ws, tree, setup, image, disk_path, jobs, work, have_fio)
        for name, sample in samples.items():
            found = report.find_cost("blk", setup.name, name)
            assert found is not None
            found.samples.append(sample)

    def step(setup: BlockSetup, rep: int, traced: bool, last: bool) -> Step:
        kind = "traced" if traced else "throughput"
        name = f"blk {setup.name} {kind} boot {rep + 1}"
        measure = costs if traced else throughput

        def boot() -> None:
            image = images.get(f"blk-{setup.name}", setup.ours, setup.in_tree)
            disk_path = disk.get()
            record(report, name, lambda: measure(setup, image, disk_path))
            if last:
                disk.remove()

        return Step(name, f"blk {setup.name} run {rep + 1}/{plan.reps}: {kind}", boot)

    order = [
        (rep, setup, traced)
        for rep in range(plan.reps)
        for setup in setups
        for traced in (False, True)
    ]
    return [
        step(setup, rep, traced, last=index == len(order) - 1)
        for index, (rep, setup, traced) in enumerate(order)
    ]
