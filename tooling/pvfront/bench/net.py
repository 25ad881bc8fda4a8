"""Network devices: TCP between the guest's busybox nc and a host peer, through a TAP device
in a private network namespace (the backend offloads reach) or QEMU's user networking."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pvfront import initramfs, netns
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
from pvfront.errors import SetupError
from pvfront.guest import Guest
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Nic
from pvfront.workspace import Workspace

NET_CONNECT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Route:
    """Where the guest's NIC sits and how it reaches the bench's peer."""

    guest_cidr: str  # the guest's address on its NIC
    host: str  # the peer's address, as the guest sees it
    listen: str  # the address the peer listens on, in ns if any
    ns: netns.NetNamespace | None = None

    @classmethod
    def user_networking(cls) -> Route:
        # QEMU's user network takes 10.0.2.2 to the host's loopback.
        return cls("10.0.2.15/24", "10.0.2.2", "127.0.0.1")

    @classmethod
    def tap(cls, ns: netns.NetNamespace, tap: str) -> Route:
        host = ns.host_address(tap)
        return cls(ns.guest_cidr(tap), host, host, ns)


@dataclass
class PeerResult:
    bytes: int = 0
    error: str = ""


class HostPeer:
    """A TCP sink or source for one connection from the guest, listening at the route's
    address (its thread joins the route's namespace first, if there is one)."""

    def __init__(self, mode: str, size: int, timeout: float, route: Route | None = None) -> None:
        if mode not in ("sink", "source"):
            raise ValueError(f"mode must be sink or source, not {mode!r}")
        self.mode = mode
        self.size = size
        self.timeout = timeout
        self.route = route or Route.user_networking()
        self.result = PeerResult()
        self.server: socket.socket | None = None
        self.port = 0
        self.listening = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> HostPeer:
        self.thread.start()
        self.listening.wait(self.timeout)
        if self.server is None:
            raise ValueError(f"host side: {self.result.error or 'not listening'}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.server is not None
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Nobody waits for the guest now: wake a pending accept (shutting a listening
            # socket down does) and leave a transfer under way to the daemon thread's timeout.
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
        else:
            self.thread.join(self.timeout)
        self.server.close()

    def _listen(self) -> None:
        try:
            if self.route.ns is not None:
                self.route.ns.enter_from_this_thread()
            server = socket.create_server((self.route.listen, 0))
            server.settimeout(self.timeout)
            self.port = server.getsockname()[1]
            self.server = server
        except (OSError, SetupError) as exc:
            self.result.error = f"cannot listen on {self.route.listen}: {exc}"
        finally:
            self.listening.set()

    def _serve(self) -> None:
        self._listen()
        if self.server is None:
            return
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


def _net_command(direction: str, size: int, host: str, port: int) -> str:
    """The guest side of a transfer, timed with /proc/uptime around it."""
    if direction == "guest-to-host":
        blocks = size // (1 << 16)
        transfer = f"dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {host} {port}"
    else:
        transfer = f'n=$(nc {host} {port} </dev/null | wc -c); echo "bytes $n"'
    return (
        f"a=$(cut -d' ' -f1 /proc/uptime); {transfer}; "
        f"b=$(cut -d' ' -f1 /proc/uptime); echo \"@@ $a $b\""
    )


def _transfer(guest: Guest, route: Route, direction: str, size: int) -> float:
    """Move size bytes over the guest's NIC in one direction; MB/s as the guest timed it."""
    mode = "sink" if direction == "guest-to-host" else "source"
    with HostPeer(mode, size, NET_CONNECT_TIMEOUT, route) as peer:
        output = guest.run(
            _net_command(direction, size, route.host, peer.port), timeout=BIG_COMMAND_TIMEOUT
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


def _configure_nic(guest: Guest, route: Route) -> str:
    """Bring the guest's one NIC up on the route's network; its name."""
    wait_for(guest, "ls /sys/class/net | grep -qv '^lo$'")
    names = [n for n in guest.run("ls /sys/class/net").output.split() if n != "lo"]
    name = names[0]
    guest.run(f"ip link set {name} up && ip addr add {route.guest_cidr} dev {name}")
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
    with contextlib.ExitStack() as stack:
        if setup.backend == "tap":
            ns = stack.enter_context(netns.namespace())
            route, nic = Route.tap(ns, ns.taps[0]), Nic(model=setup.model, tap=ns.taps[0])
        else:
            ns, route, nic = None, Route.user_networking(), Nic(model=setup.model)
        guest = stack.enter_context(
            bench_guest(ws, tree, image, setup.in_tree, trace_dir, label, nics=[nic], netns=ns)
        )
        name = _configure_nic(guest, route)
        for direction in NET_DIRECTIONS:
            if trace_dir is None:
                results[direction] = _transfer(guest, route, direction, plan.net_bytes)
                continue
            before_irq = read_interrupts(guest)
            before = _packets(guest, name)
            with TraceWindow(guest) as window:
                _transfer(guest, route, direction, plan.net_bytes)
            packets = _packets(guest, name) - before
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
