"""Network devices: iperf3 and ping between the guest and peers in a private network namespace
with a TAP device (the backend offloads reach), or QEMU's user networking; busybox nc where
the guest cannot run the host's iperf3."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import subprocess
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
from pvfront.bench.iperf import Iperf3Server, client_command, ping_command
from pvfront.bench.parse import (
    parse_ethtool_features,
    parse_iperf3_json,
    parse_ping_rtt,
    uptime_span,
)
from pvfront.bench.plan import (
    NET_COST_UNITS,
    NET_DIRECTIONS,
    NetJob,
    NetSetup,
    Plan,
    net_jobs,
    net_setups,
)
from pvfront.bench.progress import Step, record
from pvfront.bench.results import BenchReport, Cost, Throughput
from pvfront.bench.route import Route
from pvfront.errors import SetupError
from pvfront.guest import Guest
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Nic
from pvfront.workspace import Workspace

NET_CONNECT_TIMEOUT = 60.0


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


JOB_MARGIN_S = 60.0  # iperf3's start, connection and result exchange in a TCG guest
HOST_COMMAND_TIMEOUT_S = 300.0


def in_namespace(ns: netns.NetNamespace, argv: list[str]) -> str:
    """A host-side command of a job; its failure fails the job (and not the whole run)."""
    try:
        return ns.run(argv, timeout=HOST_COMMAND_TIMEOUT_S)
    except SetupError as exc:
        raise ValueError(str(exc)) from None
    except subprocess.TimeoutExpired:
        raise ValueError(f"{' '.join(argv)}: no answer in {HOST_COMMAND_TIMEOUT_S:.0f} s") from None


@dataclass
class Link:
    """One boot's link as the jobs left it: its MTU and the host TAP's segmentation offloads."""

    guest: Guest
    route: Route
    nic: str  # the guest's interface
    tap: str | None  # the host end, in route.ns
    mtu: int = 1500
    tap_offloads: bool = True

    def _host(self, argv: list[str]) -> str:
        if self.route.ns is None or self.tap is None:
            raise ValueError("only a TAP link has a host end to configure")
        return in_namespace(self.route.ns, argv)

    def prepare(self, job: NetJob) -> None:
        """Both ends as the job asks, changed only where the last job left them otherwise."""
        if job.mtu != self.mtu:
            self.guest.run(f"ip link set {self.nic} mtu {job.mtu}")
            self._host(["ip", "link", "set", str(self.tap), "mtu", str(job.mtu)])
            self.mtu = job.mtu
        if job.tap_offloads != self.tap_offloads:
            state = "on" if job.tap_offloads else "off"
            self._host(["ethtool", "-K", str(self.tap), "gso", state, "tso", state])
            if not job.tap_offloads:
                features = parse_ethtool_features(self._host(["ethtool", "-k", str(self.tap)]))
                on = [f for f in SEGMENTATION if features.get(f, True)]
                if on:
                    raise ValueError(f"{self.tap}: still on after ethtool -K: {', '.join(on)}")
            self.tap_offloads = job.tap_offloads


SEGMENTATION = ("tcp-segmentation-offload", "generic-segmentation-offload")


def _iperf3(link: Link, server: Iperf3Server, job: NetJob, **bound: int) -> str:
    """Run the guest's iperf3 client; its JSON, on one line for the console."""
    out = "/tmp/iperf3.json"
    command = client_command(job, link.route.host, server.port, **bound)
    seconds = bound.get("seconds", 0) or BIG_COMMAND_TIMEOUT
    return link.guest.run(
        f"{command} >{out} 2>&1; tr -d '\\n' <{out}; rm -f {out}",
        timeout=seconds + JOB_MARGIN_S,
    ).output


def run_job(link: Link, server: Iperf3Server, job: NetJob, plan: Plan) -> float:
    """One job's figure: MB/s or datagrams/s from iperf3, or the mean round trip in us."""
    link.prepare(job)
    if job.kind == "rr":
        if link.route.ns is None:
            raise ValueError(f"{job.name}: ping needs the bench's namespace")
        return parse_ping_rtt(in_namespace(link.route.ns, ping_command(link.route, plan.rr_count)))
    return parse_iperf3_json(_iperf3(link, server, job, seconds=plan.net_seconds), job)


WARM_UP_S = 1


def _warm_up(link: Link, server: Iperf3Server) -> None:
    job = NetJob("warm-up", "stream")
    parse_iperf3_json(_iperf3(link, server, job, seconds=WARM_UP_S), job)  # it must succeed


def _traced_transfer(link: Link, server: Iperf3Server | None, direction: str, plan: Plan) -> None:
    """plan.net_bytes one way, by the tool the throughput boots use."""
    job = NetJob(direction, "stream", direction)
    link.prepare(job)
    if server is None:
        _transfer(link.guest, link.route, direction, plan.net_bytes)
        return
    parse_iperf3_json(_iperf3(link, server, job, size=plan.net_bytes), job)  # it must succeed


def _add(report: BenchReport, setup: str, workload: str, value: float) -> None:
    found = report.find_throughput("net", setup, workload)
    assert found is not None
    found.samples.append(value)


def device_mtu(setup: NetSetup, jobs: list[NetJob]) -> int | None:
    """The MTU a virtio device offers (VIRTIO_NET_F_MTU) when a job needs more than 1500.

    pvf_net takes the device's MTU as its maximum (1500 when none is offered), where the
    in-tree virtio_net allows up to 64 KiB without it; offering it to both keeps the jumbo
    jobs the same question for both. The drivers start at it: each job sets its own MTU.
    """
    biggest = max((job.mtu for job in jobs), default=1500)
    return biggest if setup.model == "virtio" and biggest > 1500 else None


def net_boot(
    ws: Workspace,
    tree: KernelTree,
    setup: NetSetup,
    image: initramfs.Initramfs,
    plan: Plan,
    trace_dir: Path | None,
    report: BenchReport,
    name: str,
    jobs: list[NetJob],
    have_iperf3: bool,
) -> None:
    """One boot: every job untraced (a failing job is reported, the others still run), or
    a transfer each way traced for costs. Figures go to the report's rows."""
    label = f"net-{setup.name}" + ("-traced" if trace_dir else "")
    with contextlib.ExitStack() as stack:
        if setup.backend == "tap":
            ns = stack.enter_context(netns.namespace())
            tap: str | None = ns.taps[0]
            route, nic = Route.tap(ns, ns.taps[0]), Nic(model=setup.model, tap=ns.taps[0])
            nic = dataclasses.replace(nic, mtu=device_mtu(setup, jobs))
        else:
            ns, tap, route, nic = None, None, Route.user_networking(), Nic(model=setup.model)
        guest = stack.enter_context(
            bench_guest(ws, tree, image, setup.in_tree, trace_dir, label, nics=[nic], netns=ns)
        )
        name_in_guest = _configure_nic(guest, route)
        mtu = int(guest.run(f"cat /sys/class/net/{name_in_guest}/mtu").output.split()[0])
        link = Link(guest, route, name_in_guest, tap, mtu=mtu)
        server = None
        if have_iperf3:
            log = (trace_dir or image.path.parent) / f"iperf3-{label}.log"
            server = stack.enter_context(Iperf3Server(route, log))
        if trace_dir is None:
            if server is not None:
                # Untimed: the first iperf3 of a boot runs on a cold TCG translation cache
                # (in the first runs the first job, guest-to-host, made 74 MB/s where the
                # same stream later in the boot made 136).
                record(report, f"{name}: warm-up", lambda: _warm_up(link, server))
            for job in jobs:

                def measure(job: NetJob = job) -> None:
                    if server is None:  # busybox nc: one flow each way
                        figure = _transfer(guest, route, job.direction, plan.net_bytes)
                    else:
                        figure = run_job(link, server, job, plan)
                    _add(report, setup.name, job.name, figure)

                record(report, f"{name}: {job.name}", measure)
            return
        for direction in NET_DIRECTIONS:
            before_irq = read_interrupts(guest)
            before = _packets(guest, link.nic)
            with TraceWindow(guest) as window:
                _traced_transfer(link, server, direction, plan)
            packets = _packets(guest, link.nic) - before
            after_irq = read_interrupts(guest)
            units = {"packet": packets, "KiB": plan.net_bytes // 1024}
            for unit in NET_COST_UNITS:
                cost = report.find_cost("net", setup.name, direction, unit)
                assert cost is not None
                cost.samples.append(
                    cost_sample(
                        units[unit],
                        window.counts,
                        before_irq,
                        after_irq,
                        setup.regions,
                        setup.irqs,
                    )
                )


def jobs_for(setup: NetSetup, quick: bool, have_iperf3: bool) -> list[NetJob]:
    """The jobs a setup runs: all that apply with iperf3, the one-flow streams without."""
    jobs = [job for job in net_jobs(quick) if job.applies_to(setup)]
    if have_iperf3:
        return jobs
    return [job for job in jobs if job.name in NET_DIRECTIONS]


def net_steps(
    ws: Workspace, tree: KernelTree, report: BenchReport, plan: Plan, images: Images, work: Path
) -> list[Step]:
    """Network devices: in each boot every job untraced, or a transfer each way traced."""
    setups = net_setups()
    have_iperf3 = bool(images.files)
    jobs = {s.name: jobs_for(s, plan.quick, have_iperf3) for s in setups}
    for setup in setups:
        for job in jobs[setup.name]:
            report.throughput.append(Throughput("net", setup.name, job.name, job.unit))
        for direction in NET_DIRECTIONS:
            for unit in NET_COST_UNITS:
                report.costs.append(Cost("net", setup.name, direction, unit))

    def step(setup: NetSetup, rep: int, traced: bool) -> Step:
        kind = "traced" if traced else "throughput"
        name = f"net {setup.name} {kind} boot {rep + 1}"

        def boot() -> None:
            image = images.get(f"net-{setup.name}", setup.ours, setup.in_tree)
            record(
                report,
                name,
                lambda: net_boot(
                    ws,
                    tree,
                    setup,
                    image,
                    plan,
                    work if traced else None,
                    report,
                    name,
                    jobs[setup.name],
                    have_iperf3,
                ),
            )

        return Step(name, f"net {setup.name} run {rep + 1}/{plan.reps}: {kind}", boot)

    return [
        step(setup, rep, traced)
        for rep in range(plan.reps)
        for setup in setups
        for traced in (False, True)
    ]
