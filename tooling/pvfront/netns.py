"""A private network namespace with TAP devices: a real network backend for guests.

QEMU's user networking copies every packet through slirp and offers the guest no checksum or
segmentation offloads, so it measures slirp and hides what a driver does with them. A TAP
device whose QEMU side has virtio-net headers (`vnet_hdr`, the default) passes offloaded
frames through as they are. The namespace keeps all of it off the host's own network: QEMU
runs inside it (`ip netns exec`), and so does every peer a test starts there.

Each TAP device `tapN` has the host address 10.0.(3+N).1/24 in the namespace; its guest
takes .2. The namespace, its devices and its peers are gone when the context ends, however it
ends; a namespace left by a process that was killed is removed by the next one made.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvfront.errors import SetupError

_PREFIX = "pvfront-"
_NETNS_DIR = Path("/run/netns")
_PREFIX_LENGTH = 24  # each TAP device is its own /24
_CLONE_NEWNET = 0x40000000  # <linux/sched.h>: setns() joins a network namespace


@dataclass
class NetNamespace:
    name: str
    taps: tuple[str, ...]
    _peers: list[subprocess.Popen[str]] = field(default_factory=list)

    def _subnet(self, tap: str) -> str:
        return f"10.0.{3 + self.taps.index(tap)}"

    def host_address(self, tap: str) -> str:
        return f"{self._subnet(tap)}.1"

    def guest_address(self, tap: str) -> str:
        return f"{self._subnet(tap)}.2"

    def guest_cidr(self, tap: str) -> str:
        """The guest's address with its prefix, for `ip address add` in the guest."""
        return f"{self.guest_address(tap)}/{_PREFIX_LENGTH}"

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], timeout: float = 60) -> str:
        """Run argv inside the namespace; its output, or a SetupError naming it."""
        proc = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()
            raise SetupError(f"netns {self.name}: {' '.join(argv)}: {lines[-1]}")
        return proc.stdout

    def start(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """A peer process inside the namespace, its output piped as text; killed when the
        namespace goes."""
        process = subprocess.Popen(
            self.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._peers.append(process)
        return process

    def statistics(self, tap: str) -> dict[str, int]:
        """The TAP device's counters as the namespace's kernel keeps them (rx is what the
        guest sent)."""
        text = self.run(["sh", "-c", f"cd /sys/class/net/{tap}/statistics && grep . *"])
        counters = (line.split(":", 1) for line in text.splitlines())
        return {name: int(value) for name, value in counters}

    def enter_from_this_thread(self) -> None:
        """Move the calling thread, and only it, into the namespace: the sockets it makes
        afterwards live there. For a thread that ends with its work (it cannot come back)."""
        libc = ctypes.CDLL(None, use_errno=True)
        with (_NETNS_DIR / self.name).open() as handle:
            if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                error = os.strerror(ctypes.get_errno())
                raise SetupError(f"netns {self.name}: cannot enter it: {error}")

    def _stop_peers(self) -> None:
        for process in self._peers:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def _ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        message = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise SetupError(f"ip {' '.join(argv)}: {message} (network namespaces need root)")


def _remove_orphans() -> None:
    """Namespaces this module made in processes that no longer exist."""
    if not _NETNS_DIR.is_dir():
        return
    for entry in _NETNS_DIR.iterdir():
        found = re.fullmatch(rf"{_PREFIX}(\d+)-[0-9a-f]+", entry.name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            subprocess.run(["ip", "netns", "delete", entry.name], capture_output=True)


@contextlib.contextmanager
def namespace(taps: Sequence[str] = ("tap0",)) -> Iterator[NetNamespace]:
    """A new namespace with these TAP devices up and addressed, for one guest's NICs."""
    _remove_orphans()
    ns = NetNamespace(f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}", tuple(taps))
    _ip("netns", "add", ns.name)
    try:
        inside = ("-n", ns.name)
        _ip(*inside, "link", "set", "lo", "up")
        for tap in ns.taps:
            _ip(*inside, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip(*inside, "address", "add", f"{ns.host_address(tap)}/{_PREFIX_LENGTH}", "dev", tap)
            _ip(*inside, "link", "set", tap, "up")
        yield ns
    finally:
        ns._stop_peers()
        subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)
