"""Booting a bench guest: images built once per setup, traced windows, the cost of a window."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pvfront import initramfs
from pvfront.bench.parse import (
    NOTIFY_EVENT,
    TRACE_EVENTS,
    TraceCounts,
    interrupt_rows,
    parse_interrupts,
    parse_trace,
)
from pvfront.bench.results import CostSample
from pvfront.errors import UsageError
from pvfront.guest import Guest, virtio_left_to_pvfront
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Trace
from pvfront.workspace import Workspace

GUEST_MEMORY_MIB = 512  # fio's shared libraries make the initramfs about 90 MB
BIG_COMMAND_TIMEOUT = 300.0


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


def tree_for(tree: KernelTree, legacy_ide: bool) -> KernelTree:
    """The tree booted on a machine the setup needs, when the target's own lacks it."""
    if not legacy_ide or tree.target.qemu_machine.legacy_ide:
        return tree
    machines = tree.target.architecture.machines
    machine = next((m.name for m in machines if m.legacy_ide), None)
    if machine is None:
        raise UsageError(f"{tree.target.id}: no QEMU machine of {tree.target.arch} has legacy IDE")
    return dataclasses.replace(tree, target=dataclasses.replace(tree.target, machine=machine))


@contextlib.contextmanager
def bench_guest(
    ws: Workspace,
    tree: KernelTree,
    image: initramfs.Initramfs,
    in_tree: Sequence[str],
    trace_dir: Path | None,
    label: str,
    **devices: Any,
) -> Iterator[Guest]:
    """A booted guest with the setup's drivers loaded; traced guests get QMP and a trace file.
    Without in-tree drivers to load the setup is pvfront's, which gets every virtio device."""
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
        cmdline=() if in_tree else virtio_left_to_pvfront(tree),
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
        if exc_type is not None:
            return  # nothing to count, and QMP must not hide what ended the window
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


def read_interrupts(guest: Guest) -> dict[str, tuple[int, str]]:
    return parse_interrupts(guest.run("cat /proc/interrupts").output)


def wait_for(guest: Guest, test: str, seconds: int = 30) -> None:
    """Poll a shell test until it holds; CommandFailed after `seconds`."""
    # A subshell: `exit` must not end the guest's shell.
    guest.run(
        f"(i=0; while ! {test}; do i=$((i+1)); [ $i -gt {seconds * 10} ] && exit 1; "
        f"sleep 0.1; done)",
        timeout=seconds + 10,
    )
