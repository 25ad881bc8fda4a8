"""Network devices: TCP between a host peer on the loopback and the guest's busybox nc."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pvfront import initramfs
from pvfront.bench.guests import (
    BIG_COMMAND_TIMEOUT,
    Images,
    TraceWindow,
    bench_guest,
    cost_sample,
    read_interrupts,
    wait_for,
)
from pvfront.bench.parse import uptime_span
from pvfront.bench.plan import NET_DIRECTIONS, NetSetup, Plan, net_setups
from pvfront.bench.progress import Step, record
from pvfront.bench.results import BenchReport, Cost, CostSample, Throughput
from pvfront.guest import Guest
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Nic
from pvfront.workspace import Workspace

NET_CONNECT_TIMEOUT = 60.0
# Only addresses inside QEMU's user network: the host's loopback is 10.0.2.2 there.
GUEST_ADDRESS = "10.0.2.15/24"
HOST_FROM_GUEST = "10.0.2.2"


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
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Nobody waits for the guest now: wake a pending accept (shutting a listening
            # socket down does) and leave a transfer under way to the daemon thread's timeout.
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
        else:
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
    wait_for(guest, "ls /sys/class/net | grep -qv '^lo$'")
    names = [n for n in guest.run("ls /sys/class/net").output.split() if n != "lo"]
    name = names[0]
    guest.run(
        f"ip link set {name} up && ip addr add {GUEST_ADDRESS} dev {name} && "
        f"ip route add default via {HOST_FROM_GUEST}"
    )
    wait_for(guest, f"grep -q 1 /sys/class/net/{name}/carrier")
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
    with bench_guest(
        ws, tree, image, setup.in_tree, trace_dir, label, nics=[Nic(model=setup.model)]
    ) as guest:
        nic = _configure_nic(guest)
        for direction in NET_DIRECTIONS:
            if trace_dir is None:
                results[direction] = _transfer(guest, direction, plan.net_bytes)
                continue
            before_irq = read_interrupts(guest)
            before = _packets(guest, nic)
            with TraceWindow(guest) as window:
                _transfer(guest, direction, plan.net_bytes)
            packets = _packets(guest, nic) - before
            results[direction] = cost_sample(
                packets,
                window.counts,
                before_irq,
                read_interrupts(guest),
                setup.regions,
                setup.irqs,
            )
    return results


def net_steps(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, images: Images, work: Path
) -> list[Step]:
    """Network devices: in each boot both directions, untraced for MB/s or traced for costs."""
    setups = net_setups()
    for setup in setups:
        for direction in NET_DIRECTIONS:
            report.throughput.append(Throughput("net", setup.name, direction, "MB/s"))
            report.costs.append(Cost("net", setup.name, direction, "packet"))

    def measure(setup: NetSetup, image: initramfs.Initramfs, traced: bool) -> None:
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

    def step(setup: NetSetup, rep: int, traced: bool) -> Step:
        kind = "traced" if traced else "throughput"
        name = f"net {setup.name} {kind} boot {rep + 1}"

        def boot() -> None:
            # The net images carry no fio: nothing in them needs it.
            image = images.get(f"net-{setup.name}", setup.ours, setup.in_tree)
            record(report, name, lambda: measure(setup, image, traced))

        return Step(name, f"net {setup.name} run {rep + 1}/{plan.reps}: {kind}", boot)

    return [
        step(setup, rep, traced)
        for rep in range(plan.reps)
        for setup in setups
        for traced in (False, True)
    ]
