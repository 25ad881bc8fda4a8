"""iperf3 across a bench link: its server where the route's peers listen, its client's
command line for the guest, and ping's round trips from the namespace."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from pvfront.bench.plan import NetJob
from pvfront.bench.route import Route
from pvfront.errors import SetupError

IPERF3_PORT = 5201  # in the bench's own namespace nothing else listens
SERVER_START_TIMEOUT = 10.0
CONNECT_TIMEOUT_MS = 10_000
BUSYBOX = "/bin/busybox"  # a host tool already: the guests' shell


def client_command(
    job: NetJob, host: str, port: int, *, seconds: int | None = None, size: int | None = None
) -> str:
    """The guest's iperf3 for a stream or UDP job, bounded by time or by bytes, its JSON on
    stdout; the other end receives what `job.direction` says."""
    if (seconds is None) == (size is None):
        raise ValueError("an iperf3 job is bounded by seconds or by size, one of them")
    if job.kind not in ("stream", "udp"):
        raise ValueError(f"{job.name}: not an iperf3 job ({job.kind})")
    argv = ["iperf3", "-c", host, "-p", str(port), "--json", "--interval", "0"]
    argv += ["--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if job.direction == "host-to-guest":
        argv.append("--reverse")
    if job.flows > 1:
        argv += ["--parallel", str(job.flows)]
    if job.kind == "udp":
        # -b 0: no rate limit, as many datagrams as the path takes.
        argv += ["--udp", "--length", str(job.datagram), "--bitrate", "0"]
    argv += ["--time", str(seconds)] if seconds is not None else ["--bytes", str(size)]
    return " ".join(argv)


def ping_command(route: Route, count: int) -> list[str]:
    """Round trips from the namespace to the guest's kernel, each request sent when the last
    reply arrived (-A): request/response with nothing but the drivers and the stacks in it."""
    return [BUSYBOX, "ping", "-A", "-q", "-c", str(count), "-W", "5", route.guest]


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


class Iperf3Server:
    """An iperf3 server for one guest's jobs, one after another, where the route's peers
    listen (inside its namespace, if it has one); stopped when the `with` block ends."""

    def __init__(self, route: Route, log: Path) -> None:
        self.route = route
        self.log = log
        self.port = IPERF3_PORT
        self.process: subprocess.Popen[str] | None = None

    def _argv(self) -> list[str]:
        return [
            "iperf3",
            "--server",
            "--bind",
            self.route.listen,
            "--port",
            str(self.port),
            "--interval",
            "0",
            # Its reports go to a file: a pipe nobody reads would fill and stop it.
            "--logfile",
            str(self.log),
            "--forceflush",
        ]

    def _listening(self) -> bool:
        argv = ["ss", "-Hltn"]
        try:
            if self.route.ns is not None:
                text = self.route.ns.run(argv)
            else:
                text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        except (SetupError, subprocess.CalledProcessError, OSError):
            return False
        return f"{self.route.listen}:{self.port} " in text

    def _why_not(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return "not listening"

    def __enter__(self) -> Iperf3Server:
        if self.route.ns is None:
            # The host's loopback is shared with everything else on the host.
            try:
                self.port = _free_port(self.route.listen)
            except OSError as exc:
                raise ValueError(f"iperf3 server on {self.route.listen}: {exc}") from None
        argv = self._argv()
        if self.route.ns is not None:
            self.process = self.route.ns.start(argv)  # killed with the namespace, too
        else:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise ValueError(f"iperf3 server on {self.route.listen}: {self._why_not()}")
            time.sleep(0.1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.communicate(timeout=10)
        self.process = None
