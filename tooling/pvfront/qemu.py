"""Run a target's kernel under QEMU: the command line, the process and its QMP socket.

The machine is minimal on purpose (`-nodefaults`, no NIC unless asked, no display) because
every emulated device costs boot time under TCG. Two serial lines keep the kernel console
apart from the shell, so no kernel message can land inside a command's output.
The QEMU process runs in its own session, dies with its parent (PR_SET_PDEATHSIG) and is
killed as a process group on close.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvfront import compression
from pvfront.architectures import Q35, Architecture, QemuMachine
from pvfront.errors import SetupError, UsageError
from pvfront.targets import Target

# Parameters that make a dead guest end the run rather than sit there: a panic reboots at
# once, which -no-reboot turns into QEMU exiting; lockups and hung tasks panic.
PANIC_PARAMS = ("panic=-1", "softlockup_panic=1", "hung_task_panic=1")


def console_params(arch: Architecture) -> tuple[str, ...]:
    """The kernel console on the first serial line. loglevel=5: warnings and worse reach it
    (WARNING:, Unknown symbol are KERN_WARNING, which `quiet` would hide); the rest of the
    boot chatter stays out of the serial line."""
    return (f"console={arch.console_tty},115200", "loglevel=5", "printk.time=1")


_PR_SET_PDEATHSIG = 1


class QemuError(SetupError):
    """QEMU could not start or was asked for something this machine cannot have."""


@dataclass(frozen=True)
class Disk:
    """A disk image attached to the guest."""

    image: Path
    interface: str = "virtio"  # virtio | ahci | ide
    format: str = "raw"  # raw | qcow2 (a throw-away overlay over a cached image)
    modern_only: bool = True  # virtio: disable-legacy=on; False gives a transitional device
    # virtio: the device offers VIRTIO_F_ACCESS_PLATFORM and its DMA goes through the vIOMMU
    # (QEMU's iommu_platform=on, which it accepts on a modern-only device only)
    iommu_platform: bool = False
    # virtio: a page of notify region per queue (QEMU's page-per-vq=on), 4 MiB in all
    page_per_vq: bool = False
    block_size: int | None = None  # logical and physical block size the device reports
    readonly: bool = False
    serial: str | None = None
    blkdebug: Path | None = None  # blkdebug config: inject I/O errors by rule
    hotplug: bool = False  # on a PCIe machine, its own root port: QMP device_del can remove it


@dataclass(frozen=True)
class Nic:
    """A network card on QEMU user networking (guest 10.0.2.15, host 10.0.2.2), or on a TAP
    device of the machine's network namespace (pvfront.netns)."""

    model: str = "virtio"  # virtio | e1000
    modern_only: bool = True
    iommu_platform: bool = False  # virtio: as Disk.iommu_platform
    page_per_vq: bool = False  # virtio: as Disk.page_per_vq
    mtu: int | None = None  # virtio: the MTU the device offers (VIRTIO_NET_F_MTU)
    forwards: tuple[tuple[int, int], ...] = ()  # (host port on 127.0.0.1, guest port), TCP
    mac: str | None = None
    hotplug: bool = False
    tap: str | None = None  # a TAP device in Machine.netns instead of user networking
    # virtio: device properties as QEMU spells them, e.g. host_tso4=off: what it offers
    properties: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trace:
    """QEMU trace events written with the log backend (`-trace events=...,file=...`)."""

    events: Path
    out: Path


@dataclass(frozen=True)
class Machine:
    """Everything that decides the QEMU command line."""

    target: Target
    kernel: Path | None  # None: the firmware boots the first disk (its own boot loader)
    initrd: Path | None
    cmdline: tuple[str, ...] = ()  # kernel parameters besides the harness's own
    memory_mib: int = 256
    smp: int = 1
    accel: str = "tcg"  # tcg | kvm
    tcg_threads: str = "multi"  # multi | single: one host thread per vCPU, or one for all
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    trace: Trace | None = None
    # QEMU's intel-iommu in front of every PCI device (on q35, whatever the target's machine);
    # the guest kernel enables it with intel_iommu=on, a parameter for cmdline.
    viommu: bool = False
    # ACPI S3 offered to the guest (QEMU hides it by default): `echo mem > /sys/power/state`
    # suspends to RAM, QMP system_wakeup resumes.
    s3: bool = False
    netns: str | None = None  # QEMU runs in this network namespace (its NICs' TAP devices)
    extra_args: tuple[str, ...] = ()

    @property
    def qemu_machine(self) -> QemuMachine:
        """The machine type booted: the target's, or q35 where a vIOMMU needs it."""
        if self.viommu:
            return self.target.architecture.machine(Q35.name)
        return self.target.qemu_machine


@dataclass(frozen=True)
class Channels:
    """Where the serial lines and QMP go: unix sockets in a run directory, or the terminal."""

    console: Path | None  # kernel console socket; None: the first serial line on stdio, shell too
    shell: Path | None  # shell socket (the second serial line)
    qmp: Path | None = None


def kernel_cmdline(machine: Machine) -> str:
    # Measured under TCG and found to gain nothing, so left out: mitigations=off,
    # init_on_alloc=0, audit=0, apparmor=0, nokaslr, tsc=reliable, quiet, -m 128, qboot
    # instead of SeaBIOS, an uncompressed initramfs. What does gain is booting the bare ELF
    # (boot_kernel): 2.1 s instead of 4.7 s to the first command's result.
    console = console_params(machine.target.architecture)
    return " ".join([*console, *PANIC_PARAMS, "rdinit=/init", *machine.cmdline])


def _device_id(prefix: str, index: int) -> str:
    return f"{prefix}{index}"


def _pci_placement(machine: Machine, hotplug: bool, port_index: int) -> tuple[list[str], str]:
    """Extra devices and the `bus=` option for a PCI device that may need hot-unplug."""
    if not hotplug or not machine.qemu_machine.pcie_root:
        return [], ""  # a PCI root bus (pc's pci.0) is hot-pluggable through ACPI
    port = f"rp{port_index}"
    return (
        ["-device", f"pcie-root-port,id={port},bus=pcie.0,chassis={port_index + 1}"],
        f",bus={port}",
    )


def _virtio_options(device: Disk | Nic) -> str:
    if device.iommu_platform and not device.modern_only:
        raise UsageError("QEMU offers iommu_platform=on on a modern-only virtio device only")
    legacy = "on" if device.modern_only else "off"
    platform = ",iommu_platform=on" if device.iommu_platform else ""
    notify = ",page-per-vq=on" if device.page_per_vq else ""
    return f",disable-legacy={legacy},disable-modern=off{platform}{notify}"


def _virtio_only(device: Disk | Nic, kind: str) -> None:
    """Refuse the virtio-only options on another kind of device."""
    for option in ("iommu_platform", "page_per_vq", "mtu", "properties"):
        if getattr(device, option, None):
            raise UsageError(f"{option} is a virtio option, not one of {kind}")


def _disk_args(machine: Machine, ports: list[int]) -> list[str]:
    args: list[str] = []
    ahci_units = 0
    ide_units = 0
    for index, disk in enumerate(machine.disks):
        drive_id = _device_id("disk", index)
        ro = ",readonly=on" if disk.readonly else ""
        if disk.blkdebug:
            drive = (
                f"if=none,id={drive_id},driver=raw,file.driver=blkdebug,"
                f"file.config={disk.blkdebug},file.image.driver=file,"
                f"file.image.filename={disk.image}{ro}"
            )
        else:
            drive = f"if=none,id={drive_id},format={disk.format},file={disk.image}{ro}"
        args += ["-drive", drive]
        if disk.interface != "virtio":
            _virtio_only(disk, disk.interface)
        properties = f",serial={disk.serial}" if disk.serial else ""
        if disk.block_size:
            size = disk.block_size
            properties += f",logical_block_size={size},physical_block_size={size}"
        if disk.interface == "virtio":
            extra, bus = _pci_placement(machine, disk.hotplug, len(ports))
            if extra:
                ports.append(index)
            args += [
                *extra,
                "-device",
                f"virtio-blk-pci,id=vblk{index},drive={drive_id}{bus}"
                f"{_virtio_options(disk)}{properties}",
            ]
        elif disk.interface == "ahci":
            if machine.qemu_machine.builtin_ahci:
                bus = f"ide.{ahci_units}"  # one port of the machine's own AHCI per disk
            else:
                if ahci_units == 0:
                    args += ["-device", "ahci,id=ahci"]
                bus = f"ahci.{ahci_units}"
            ahci_units += 1
            args += ["-device", f"ide-hd,id=ahcidisk{index},drive={drive_id},bus={bus}{properties}"]
        elif disk.interface == "ide":
            if not machine.qemu_machine.legacy_ide:
                name = machine.qemu_machine.name
                raise UsageError(f"{name} has no legacy IDE controller: use interface='ahci'")
            bus, unit = f"ide.{ide_units // 2}", ide_units % 2
            ide_units += 1
            args += [
                "-device",
                f"ide-hd,id=idedisk{index},drive={drive_id},bus={bus},unit={unit}{properties}",
            ]
        else:
            raise UsageError(f"unknown disk interface '{disk.interface}' (virtio, ahci, ide)")
    return args


def _nic_args(machine: Machine, ports: list[int]) -> list[str]:
    if not machine.nics:
        return ["-nic", "none"]  # the machine's default NIC would load an iPXE ROM
    args: list[str] = []
    for index, nic in enumerate(machine.nics):
        netdev = f"net{index}"
        args += ["-netdev", _netdev(machine, nic, netdev)]
        mac = f",mac={nic.mac}" if nic.mac else ""
        extra, bus = _pci_placement(machine, nic.hotplug, len(ports))
        if extra:
            ports.append(index)
        # romfile= keeps SeaBIOS from loading the card's iPXE option ROM.
        if nic.model == "virtio":
            mtu = f",host_mtu={nic.mtu}" if nic.mtu else ""
            properties = "".join(f",{p}" for p in nic.properties)
            device = (
                f"virtio-net-pci,id=vnet{index},netdev={netdev}"
                f"{_virtio_options(nic)}{mtu}{properties}"
            )
        elif nic.model == "e1000":
            _virtio_only(nic, nic.model)
            device = f"e1000,id=e1000n{index},netdev={netdev}"
        else:
            raise UsageError(f"unknown NIC model '{nic.model}' (virtio, e1000)")
        args += [*extra, "-device", f"{device},romfile={bus}{mac}"]
    return args


def _netdev(machine: Machine, nic: Nic, netdev: str) -> str:
    if nic.tap is None:
        return f"user,id={netdev}" + "".join(
            f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in nic.forwards
        )
    if machine.netns is None:
        raise UsageError(f"NIC on {nic.tap}: a TAP NIC needs the machine's network namespace")
    if nic.forwards:
        raise UsageError(f"NIC on {nic.tap}: port forwards are a user-networking option")
    # vnet_hdr: offloaded frames pass as they are; no vhost-net here (KVM's, and absent).
    return f"tap,id={netdev},ifname={nic.tap},script=no,downscript=no,vnet_hdr=on"


def _accel_option(machine: Machine) -> str:
    if machine.accel == "tcg" and machine.smp > 1:
        return f"tcg,thread={machine.tcg_threads}"
    return machine.accel


def command_line(machine: Machine, channels: Channels) -> list[str]:
    """The full QEMU argv for machine with its serial lines and QMP on channels."""
    if machine.accel not in ("tcg", "kvm"):
        raise UsageError(f"unknown accelerator '{machine.accel}' (tcg, kvm)")
    if machine.tcg_threads not in ("multi", "single"):
        raise UsageError(f"unknown TCG thread mode '{machine.tcg_threads}' (multi, single)")
    shell_on_console = channels.console is None
    args = [
        machine.target.qemu,
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-machine",
        machine.qemu_machine.name,
        "-accel",
        _accel_option(machine),
        "-cpu",
        "host" if machine.accel == "kvm" else machine.target.architecture.tcg_cpu,
        "-m",
        str(machine.memory_mib),
        "-smp",
        str(machine.smp),
        "-display",
        "none",
    ]
    if machine.kernel is not None:
        args += ["-kernel", str(machine.kernel), "-append", kernel_cmdline(machine)]
        if machine.initrd is not None:
            args += ["-initrd", str(machine.initrd)]
    if shell_on_console:
        # The interactive console: Ctrl-C goes to the guest, Ctrl-A x quits QEMU.
        args += ["-serial", "mon:stdio"]
    else:
        assert channels.shell is not None
        for name, path in (("con", channels.console), ("sh", channels.shell)):
            args += [
                "-chardev",
                f"socket,id={name},path={path},server=on,wait=on",
                "-serial",
                f"chardev:{name}",
            ]
    if channels.qmp:
        args += ["-qmp", f"unix:{channels.qmp},server=on,wait=off"]
    if machine.s3:
        args += ["-global", f"{machine.qemu_machine.acpi_pm_device}.disable_s3=0"]
    if machine.viommu:
        # Before every PCI device: QEMU puts a device behind the IOMMU only if it exists
        # when the device is created.
        args += ["-device", "intel-iommu"]
    ports: list[int] = []
    args += _disk_args(machine, ports)
    args += _nic_args(machine, ports)
    if machine.trace:
        args += ["-trace", f"events={machine.trace.events},file={machine.trace.out}"]
    inside = ["ip", "netns", "exec", machine.netns] if machine.netns else []
    return [*inside, *args, *machine.extra_args]


# --------------------------------------------------------------------------- the kernel image

#: The payload formats the kernel can be built with that pvfront reads, by magic number.
_PAYLOAD_MAGIC = compression.MAGIC
#: The kernel build appends the uncompressed size (4 bytes) after the stream; the zstd and
#: lz4 commands refuse data after the stream, the stdlib decompressors ignore it.
_SIZE_APPENDED = ("zstd", "lz4")


def _decompress_payload(payload: bytes) -> bytes:
    """A bzImage payload decompressed; b"" when its format is unknown.

    A corrupt or truncated payload raises compression.DecompressError (an OSError)."""
    kind = compression.sniff(payload)
    if kind is None:
        return b""
    return compression.decompress(kind, payload[:-4] if kind in _SIZE_APPENDED else payload)


def extract_vmlinux(bzimage: Path) -> bytes:
    """The uncompressed ELF kernel inside a bzImage, or b"" if it cannot be had."""
    data = bzimage.read_bytes()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return b""
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", data, 0x248)
    try:
        elf = _decompress_payload(data[start + offset : start + offset + length])
    except compression.DecompressError:
        return b""
    return elf if elf[:4] == b"\x7fELF" else b""


def boot_kernel(kernel: Path, config: Path, arch: Architecture, cache_dir: Path, name: str) -> Path:
    """The kernel file QEMU boots fastest: the bare ELF through PVH when the kernel supports it.

    Under TCG, decompressing Debian's xz bzImage takes about two seconds of a five-second
    boot; a kernel with CONFIG_PVH=y of an architecture that boots that way boots from its
    uncompressed ELF instead, which is extracted once and cached. Anything else boots the
    bzImage as it is.
    """
    pvh = re.search(r"^CONFIG_PVH=y$", config.read_text(), re.M)
    if not arch.boots_bare_vmlinux or not pvh:
        return kernel
    cached = cache_dir / f"{name}.vmlinux"
    if cached.exists() and cached.stat().st_mtime >= kernel.stat().st_mtime:
        return cached
    elf = extract_vmlinux(kernel)
    if not elf:
        return kernel
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(elf)
    tmp.replace(cached)
    return cached


# --------------------------------------------------------------------------- the process


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the process that started it dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class QemuProcess:
    """A running QEMU, in its own session; `stop()` kills the whole process group."""

    argv: list[str]
    stderr_path: Path
    popen: subprocess.Popen | None = None

    def start(self, *, interactive: bool = False) -> None:
        stderr = self.stderr_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=None if interactive else subprocess.DEVNULL,
                stdout=None if interactive else subprocess.DEVNULL,
                stderr=stderr,
                # Interactive QEMU must stay in the terminal's session to own the tty.
                start_new_session=not interactive,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            raise QemuError(f"{self.argv[0]} is not installed (run: pvfront setup)") from None
        finally:
            stderr.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def poll(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace").strip()
        except OSError:
            return ""

    def stop(self, grace: float = 0.0) -> int | None:
        """Kill QEMU (and anything it started) and reap it; returns its exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None and grace > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        return self.popen.wait()


def connect_unix(path: Path, process: QemuProcess, timeout: float) -> socket.socket:
    """Connect to a socket QEMU listens on, as soon as it exists; fail if QEMU dies first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise QemuError(
                f"QEMU exited with status {process.poll()} before the guest "
                f"started: {process.stderr_text() or '(no message)'}"
            )
        if path.exists():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
        if time.monotonic() > deadline:
            raise QemuError(f"QEMU did not open {path.name} within {timeout:.0f}s")
        time.sleep(0.005)


class SocketDrain:
    """Empties a socket QEMU writes to into a pipe as fast as the bytes arrive.

    QEMU's UART writes the chardev one byte per send(), and a unix stream socket charges
    each of those as a whole buffer: about 280 unread bytes fill it. Then the emulated THR
    stays busy, the kernel's console write gives up waiting and the FIFO drops characters
    (a "Call Trace:" line went missing that way on 7.2). The pipe takes the bytes whole, up
    to its 1 MiB, so a reader that looks every 100 ms loses nothing.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.fd, self._write_fd = os.pipe()
        with contextlib.suppress(OSError):  # pipe-max-size may be lower
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._thread = threading.Thread(target=self._copy, name="pvfront-drain", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        try:
            while chunk := self._sock.recv(65536):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._write_fd, view) :]
        except OSError:
            pass  # the socket was shut down, or the reader closed the pipe
        finally:
            os.close(self._write_fd)  # the reader sees end of file

    def finish(self, timeout: float = 2.0) -> None:
        """Wait until what QEMU sent before it exited is in the pipe."""
        self._thread.join(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        os.close(self.fd)  # a copy blocked on a full pipe fails and ends
        self._thread.join()
        self._sock.close()


# --------------------------------------------------------------------------- QMP


class QmpError(SetupError):
    """QMP refused a command or the connection broke."""


class QmpTimeout(QmpError):
    """QEMU's monitor said nothing within the time allowed."""


@dataclass
class Qmp:
    """A minimal QMP client over QEMU's unix socket: JSON lines, events kept aside."""

    sock: socket.socket
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""

    @classmethod
    def connect(cls, path: Path, process: QemuProcess, timeout: float = 10.0) -> Qmp:
        client = cls(connect_unix(path, process, timeout))
        client.sock.settimeout(timeout)
        greeting = client._read()
        if "QMP" not in greeting:
            raise QmpError(f"no QMP greeting on {path}: {greeting}")
        client.execute("qmp_capabilities")
        return client

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise QmpTimeout("QMP did not answer in time") from None
            if not chunk:
                raise QmpError("QMP connection closed (QEMU exited?)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"QMP sent something other than a JSON object: {line[:200]!r}")
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its `return` value; errors raise QmpError."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"QMP connection closed (QEMU exited?): {exc.strerror}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('class')}: {error.get('desc')}")
            return reply.get("return")

    def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first event called name, waiting up to timeout for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    self.events.remove(event)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError(f"no QMP event {name} within {timeout:.0f}s")
            self.sock.settimeout(remaining)
            try:
                reply = self._read()
            except QmpTimeout:
                raise QmpTimeout(f"no QMP event {name} within {timeout:.0f}s") from None
            if "event" in reply:
                self.events.append(reply)

    # The fault-injection commands scenarios use.
    def set_link(self, nic_id: str, up: bool) -> None:
        self.execute("set_link", name=nic_id, up=up)

    # PCIe hot-unplug waits for the guest: pciehp alone takes 5 s (the attention button's
    # grace period) before it releases the device, longer on a loaded host.
    def device_del(self, device_id: str, *, wait: float | None = 30.0) -> None:
        self.execute("device_del", id=device_id)
        if wait:
            self.wait_event("DEVICE_DELETED", wait)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --------------------------------------------------------------------------- KVM or TCG

# QEMU before 8.1 could translate guest code into a block while another vCPU's thread was
# rewriting that code (fixed upstream by "accel/tcg: Always lock pages before translation").
# Linux rewrites its own code at run time: a static key is patched through an int3
# (text_poke_bp in arch/x86/kernel/alternative.c), and a vCPU that runs a block translated in
# that window hits an int3 the kernel no longer expects: "Oops: int3" in early boot. It is
# rare (one CI run's first boot of the trixie image; 0 of 100 busybox boots here) and
# Debian 12 ships QEMU 7.2. With such a QEMU all vCPUs share one TCG thread; the guest still
# has every CPU.
MTTCG_RACE_FIXED_IN = (8, 1)


def qemu_version(binary: str) -> tuple[int, int] | None:
    """`binary`'s (major, minor) from `--version`; None when it does not run or say."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"version (\d+)\.(\d+)", out)
    return (int(found[1]), int(found[2])) if found else None


def tcg_threads(version: tuple[int, int] | None) -> str:
    """The TCG thread mode that runs a multi-vCPU guest safely on a QEMU of `version`."""
    return "multi" if version is not None and version >= MTTCG_RACE_FIXED_IN else "single"


@dataclass(frozen=True)
class AccelChoice:
    accel: str
    reason: str


def _host_key(qemu: str) -> str:
    """What a cached KVM verdict depends on: this boot of the host and the QEMU binary."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    try:
        binary = os.stat(
            subprocess.run(
                ["which", qemu], capture_output=True, text=True, check=False
            ).stdout.strip()
            or qemu
        )
        stamp = f"{binary.st_size}-{binary.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return hashlib.sha256(f"{boot_id}|{qemu}|{stamp}".encode()).hexdigest()[:16]


def choose_accel(probe: Callable[[], tuple[bool, str]], qemu: str, cache_file: Path) -> AccelChoice:
    """KVM when `probe()` proves a guest boots with it, else TCG; the verdict is cached on disk.

    PVFRONT_ACCEL=tcg|kvm overrides. `probe` must return within a few seconds (a hanging KVM
    guest must not stall every run); it is called only without a cached verdict for this host
    boot and QEMU binary.
    """
    forced = os.environ.get("PVFRONT_ACCEL")
    if forced:
        if forced not in ("tcg", "kvm"):
            raise UsageError(f"PVFRONT_ACCEL={forced}: expected tcg or kvm")
        return AccelChoice(forced, "PVFRONT_ACCEL")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "no usable /dev/kvm")
    key = _host_key(qemu)
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(cache_file.read_text())[key]
        return AccelChoice(cached["accel"], cached["reason"] + " (cached)")
    ok, detail = probe()
    choice = (
        AccelChoice("kvm", f"KVM probe booted: {detail}")
        if ok
        else AccelChoice("tcg", f"KVM probe failed: {detail}")
    )
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        data[key] = {"accel": choice.accel, "reason": choice.reason}
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(cache_file)
    return choice


def run_probe(argv: Sequence[str], marker: bytes, timeout: float) -> tuple[bool, str]:
    """Run a short QEMU whose serial goes to stdout; True when marker shows up in time."""
    process = QemuProcess(list(argv), Path(os.devnull))
    try:
        process.popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError:
        return False, f"{argv[0]} not found"
    started = time.monotonic()
    seen = b""
    try:
        assert process.popen.stdout is not None
        os.set_blocking(process.popen.stdout.fileno(), False)
        while time.monotonic() - started < timeout:
            with contextlib.suppress(BlockingIOError):
                chunk = process.popen.stdout.read()
                if chunk:
                    seen += chunk
            if marker in seen:
                return True, f"userspace after {time.monotonic() - started:.1f}s"
            if process.popen.poll() is not None:
                return False, f"QEMU exited with status {process.popen.returncode}"
            time.sleep(0.05)
        return False, f"no userspace within {timeout:.0f}s"
    finally:
        process.stop()
        if process.popen.stdout:
            process.popen.stdout.close()
