"""What the pvfront driver scenarios share: our modules for a target, a guest booted with them,
and the guest-side shell snippets that find our devices.

Not a conftest: each test module declares its own `pvf_modules` fixture through
`modules_for(ws, tree)` (one build call per target and session; it is a no-op when up to date).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import shlex
import socket
import threading
from pathlib import Path

import pytest

from pvfront import commands
from pvfront.guest import Guest, virtio_left_to_pvfront
from pvfront.kerneltree import KernelTree
from pvfront.targets import Target
from pvfront.workspace import Workspace

# insmod order (kmod/README.md): the ring, the bus, the transport, then the two drivers.
MODULE_ORDER = ("pvf_ring", "pvf_virtio", "pvf_pci", "pvf_blk", "pvf_net")
UNLOAD_ORDER = tuple(reversed(MODULE_ORDER))
HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking: the host's 127.0.0.1
GUEST_ADDRESS = "10.0.2.15"
MIB = 1024 * 1024


def modules_for(ws: Workspace, tree: KernelTree, test_hooks: bool = False) -> list[Path]:
    """build/<target>/pvf_*.ko, built if needed, in load order; with test_hooks the build
    with the fault-injection parameters (build/test-hooks/<target>/). Sparse has checked the
    same sources in the shipped build: the test build skips it."""
    results = commands.build(ws, tree.target.id, sparse=not test_hooks, test_hooks=test_hooks)
    assert len(results) == 1 and results[0].ok, [r.summary() for r in results]
    by_name = {m.stem: m for m in results[0].modules}
    missing = [n for n in MODULE_ORDER if n not in by_name]
    assert not missing, f"{tree.target.id}: the build made no {', '.join(missing)}"
    return [by_name[n] for n in MODULE_ORDER]


def require(tree: KernelTree, option: str) -> None:
    """Skip on a kernel built without CONFIG_<option>."""
    if not tree.built_in(f"CONFIG_{option}"):
        pytest.skip(f"{tree.target.id}: the kernel is built without CONFIG_{option}")


def skip_unless_first_of_its_arch(target: Target, selected: list[Target], why: str) -> None:
    """Skip on every selected target but the first of each architecture, for a check whose
    outcome the architecture decides, not the kernel line or flavour; `why` says so."""
    first = next(t for t in selected if t.arch == target.arch)
    if target != first:
        pytest.skip(f"{why}: checked on {first.id} for {target.arch}")


def builtin_virtio_pci(tree: KernelTree) -> bool:
    return tree.built_in("CONFIG_VIRTIO_PCI")


def pvf_guest(
    guest_factory,
    tree: KernelTree,
    modules: list[Path],
    *,
    cmdline: tuple[str, ...] | list[str] = (),
    **options,
) -> Guest:
    """A guest with our modules inside (loaded at boot unless load_modules=False), where no
    built-in in-tree virtio_pci gets to the devices first."""
    options.setdefault("load_modules", True)
    boot = list(virtio_left_to_pvfront(tree))
    return guest_factory(tree, modules=modules, cmdline=[*boot, *cmdline], **options)


# --------------------------------------------------------------------------- guest snippets


def wait_for(condition: str, tenths: int = 100) -> str:
    """Shell: poll a shell condition every 0.1 s (default up to 10 s); the status of the last
    try is the command's status, so g.run() fails if it never held."""
    return (
        f"i=0; until {condition}; do i=$((i+1)); [ $i -ge {tenths} ] && break; "
        f"sleep 0.1; done; {condition}"
    )


def device_of(guest: Guest, driver: str) -> str:
    """The pvf_virtio device bound to a driver (pvf_blk or pvf_net)."""
    listing = guest.run(f"ls /sys/bus/pvf_virtio/drivers/{driver}/ | grep '^pvf[0-9]'")
    return listing.output.split()[0]


def device_attribute(guest: Guest, device: str, name: str) -> str:
    """A pvf_virtio device's sysfs attribute (broken, features, status, ...)."""
    return guest.run(f"cat /sys/bus/pvf_virtio/devices/{device}/{name}").output.strip()


def disk_by_serial(guest: Guest, serial: str) -> str:
    """The pvd* disk whose VIRTIO_BLK_T_GET_ID string is serial (waiting for it to appear)."""
    find = f"grep -lx {shlex.quote(serial)} /sys/block/pvd*/serial 2>/dev/null"
    guest.run(wait_for(f"{find} >/dev/null"))
    paths = guest.run(find).output.split()
    assert len(paths) == 1, f"disks with serial {serial}: {paths}"
    return paths[0].split("/")[3]


def direct_io(guest: Guest, disk: str) -> bool:
    """Whether the guest's dd has iflag=direct (busybox 1.35 on bookworm; bullseye's 1.30 not),
    tried on one of our disks (/dev/null refuses O_DIRECT)."""
    probe = guest.run(f"dd if=/dev/{disk} of=/dev/null bs=4096 count=1 iflag=direct", check=False)
    if "invalid argument 'direct'" in probe.output:
        return False
    assert probe.status == 0, probe.output
    return True


def drop_caches(guest: Guest, *disks: str) -> None:
    """Forget cached blocks so the next buffered read goes to the device."""
    flush = "".join(f"blockdev --flushbufs /dev/{d}; " for d in disks)
    guest.run(f"{flush}sync; echo 3 > /proc/sys/vm/drop_caches")


def read_sha256(
    guest: Guest, device: str, offset: int, length: int, *, direct: bool, block: int | None = None
) -> str:
    """SHA-256 of length bytes at offset, read in dd blocks of `block` bytes (default: the
    whole length in one read() call). Offsets and lengths are multiples of 512 for O_DIRECT."""
    block = block or length
    assert length % block == 0
    flags = "skip_bytes,direct" if direct else "skip_bytes"
    out = guest.run(
        f"dd if=/dev/{device} bs={block} skip={offset} count={length // block} "
        f"iflag={flags} 2>/dev/null | sha256sum",
        timeout=60,
    ).output
    return out.split()[0]


def host_sha256(path: Path, offset: int, length: int) -> str:
    with path.open("rb") as image:
        image.seek(offset)
        return hashlib.sha256(image.read(length)).hexdigest()


KMEMLEAK = "/sys/kernel/debug/kmemleak"
# kmemleak reports an object only once it is older than this (mm/kmemleak.c: jiffies_min_age).
KMEMLEAK_MIN_AGE_S = 5


def kmemleak_forget_until_now(guest: Guest) -> None:
    """Report what is unreferenced now (boot's own) once, then forget it."""
    guest.run("mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug")
    guest.run(f"echo scan > {KMEMLEAK}; echo clear > {KMEMLEAK}", timeout=120)


def kmemleak_report(guest: Guest) -> str:
    """What kmemleak finds unreferenced since kmemleak_forget_until_now(): two scans after
    the minimum age, as Documentation/dev-tools/kmemleak.rst advises (a pointer held only in
    a register during the first is seen by the second)."""
    guest.run(f"sleep {KMEMLEAK_MIN_AGE_S + 1}")
    guest.run(f"echo scan > {KMEMLEAK}; echo scan > {KMEMLEAK}", timeout=180)
    return guest.run(f"cat {KMEMLEAK}").output


def interrupts(guest: Guest, pattern: str) -> dict[str, int]:
    """Total count per /proc/interrupts line whose name matches pattern (e.g. 'pvf.*-req')."""
    rows = guest.run(f"grep -E {shlex.quote(pattern)} /proc/interrupts || true").output
    cpus = len(guest.run("head -1 /proc/interrupts").output.split())
    counts = {}
    for row in rows.splitlines():
        fields = row.split()
        if len(fields) > cpus:
            counts[fields[-1]] = sum(int(f) for f in fields[1 : 1 + cpus] if f.isdigit())
    return counts


def meminfo(guest: Guest) -> dict[str, int]:
    """/proc/meminfo in KiB."""
    values = {}
    for row in guest.run("cat /proc/meminfo").output.splitlines():
        name, _, rest = row.partition(":")
        if rest.split():
            values[name.strip()] = int(rest.split()[0])
    return values


def per_cpu_free_kib(guest: Guest) -> int:
    """Free pages parked on the per-CPU page lists (/proc/zoneinfo `count:`, 4 KiB pages on
    x86), which MemFree and MemAvailable leave out: they come and go by MiBs."""
    counts = guest.run("grep -E '^ +count: ' /proc/zoneinfo").output.split()
    return 4 * sum(int(c) for c in counts if c.isdigit())


# --------------------------------------------------------------------------- host services


class HostServer:
    """HTTP on the host's 127.0.0.1 (the guest's 10.0.2.2), in a thread: GET /<name> serves
    the bytes given, any PUT or POST body is kept (sha256 of each in `received`, in order)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.received: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                digest = hashlib.sha256(self.rfile.read(length)).hexdigest()
                server.received.append(digest)
                answer = digest.encode() + b"\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PUT

            def log_message(self, format: str, *args) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a guest whose NIC goes away mid-transfer breaks connections

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://{HOST_FROM_GUEST}:{self.port}/{name}"

    def __enter__(self) -> HostServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class TcpSink:
    """A TCP listener on the host's 127.0.0.1: each connection is read to its end, answered
    with the SHA-256 of what came, and closed (for `nc 10.0.2.2 PORT < file` in the guest)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(60)
                digest = hashlib.sha256()
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        digest.update(chunk)
                    self.received.append(digest.hexdigest())
                    conn.sendall(digest.hexdigest().encode() + b"\n")

    def __enter__(self) -> TcpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def bring_up(guest: Guest, iface: str = "pvnet0") -> None:
    """Address the interface on QEMU's user network and wait for its carrier."""
    guest.run(f"ip addr add {GUEST_ADDRESS}/24 dev {iface} && ip link set {iface} up")
    guest.run(wait_for(f"[ $(cat /sys/class/net/{iface}/carrier) = 1 ]"))


def transfer_both_ways(
    guest: Guest, http: HostServer, sink: TcpSink, download: bytes, upload: Path
) -> None:
    """The guest fetches http's download.bin and sends /data/upload.bin (a copy of upload) to
    the sink, which answers with its SHA-256: both arrive intact, and so does the answer."""
    guest.run(f"wget -q -O /tmp/download.bin {http.url('download.bin')}", timeout=120)
    fetched = guest.run("sha256sum /tmp/download.bin").output.split()[0]
    assert fetched == hashlib.sha256(download).hexdigest()
    answer = guest.run(f"nc {HOST_FROM_GUEST} {sink.port} < /data/upload.bin", timeout=120)
    sent = hashlib.sha256(upload.read_bytes()).hexdigest()
    assert sink.received == [sent]
    assert answer.output.split() == [sent]  # and the reply came back the other way
