"""Boot a target's kernel with modules and devices, and talk to it: the API scenarios use.

    with Guest(ws, tree, in_tree_modules=["virtio_blk"], disks=[Disk(image)]) as g:
        g.run("modprobe virtio_blk")            # raises CommandFailed on a non-zero status
        assert g.run("cat /sys/block/vda/size").output.strip() == "16384"

A guest owns a temporary directory (initramfs, sockets), a QEMU process and a console log
under build/logs/. Leaving the `with` block, an exception, Ctrl-C (SIGINT), SIGTERM or the
interpreter exiting all remove the first two; the log stays and every error names it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeAlias

import pexpect.fdpexpect

from pvfront import initramfs, qemu
from pvfront.console import (
    CommandFailed,
    CommandResult,
    Console,
    ConsoleLog,
    GuestError,
    GuestHang,
    GuestStopped,
    KernelLockup,
    KernelOops,
    KernelPanic,
    KernelTrouble,
    KernelWarning,
    ModuleLoadError,
    PromptMissing,
    QemuCrashed,
)
from pvfront.errors import UsageError
from pvfront.kerneltree import KernelTree
from pvfront.netns import NetNamespace
from pvfront.qemu import Disk, Nic, Qmp, Trace
from pvfront.workspace import Workspace

__all__ = [
    "CommandFailed",
    "CommandResult",
    "Disk",
    "Guest",
    "GuestError",
    "GuestHang",
    "GuestStopped",
    "ImageBoot",
    "KernelLockup",
    "KernelOops",
    "KernelPanic",
    "KernelTrouble",
    "KernelWarning",
    "ModuleLoadError",
    "Nic",
    "PromptMissing",
    "QemuCrashed",
    "Trace",
    "interactive",
    "make_disk",
    "measure_boot",
    "sha256_file",
]

DEFAULT_BOOT_TIMEOUT = 60.0  # a TCG boot takes 3-6 s; loaded CI machines are slower
IMAGE_BOOT_TIMEOUT = 240.0  # a Debian image with systemd: 20-40 s under TCG, more when loaded
DEFAULT_COMMAND_TIMEOUT = 30.0
DEFAULT_MEMORY_MIB = 256
# A built-in in-tree virtio_pci (Debian's 6.12 kernels) takes every virtio function at boot
# unless its initcall is skipped; a modular one loads only when asked.
NO_BUILTIN_VIRTIO_PCI = "initcall_blacklist=virtio_pci_driver_init"
# A kernel built with the sanitizers (the debug target: KASAN, lockdep, kmemleak, ...) boots
# in 15-25 s under TCG where Debian's takes 3-6, and everything in it is as much slower: each
# wait on such a guest is this many times as long. KASAN's shadow (an eighth of RAM) and the
# checkers' tables take memory too (hibernation needs as much free as in use): it gets twice
# the memory.
SANITIZED_PACE = 4.0
SANITIZED_MEMORY_FACTOR = 2
KVM_PROBE_TIMEOUT = 5.0  # a KVM guest that works reaches userspace in about a second
_PROBE_MARKER = "pvfront-kvm-probe-ok"


# --------------------------------------------------------------------------- disks


def make_disk(
    directory: Path, size_mib: int, pattern_seed: int | None = None, name: str | None = None
) -> Path:
    """A raw disk image: zeros (sparse), or bytes drawn from a seeded PRNG so the host knows
    exactly what the guest must read back (compare with sha256_file)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"disk-{size_mib}m-{pattern_seed}.img")
    size = size_mib * 1024 * 1024
    with path.open("wb") as image:
        if pattern_seed is None:
            image.truncate(size)
        else:
            rng = random.Random(pattern_seed)
            for _ in range(size_mib):
                image.write(rng.randbytes(1024 * 1024))
    return path


def sha256_file(path: Path, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as image:
        remaining = length if length is not None else -1
        while remaining != 0:
            chunk = image.read(1 << 20 if remaining < 0 else min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining > 0:
                remaining -= len(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- helpers


def _log_path(ws: Workspace, label: str, target_id: str) -> Path:
    """A new, unique console log: <label>-<target>-<n>.log, safe against parallel workers."""
    ws.log_dir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[:80] or "guest"
    for n in range(1, 100000):
        path = ws.log_dir / f"{safe}-{target_id}-{n}.log"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            continue
    raise UsageError(f"{ws.log_dir}: too many logs named {safe}-{target_id}-*")


def _index_cache(ws: Workspace) -> Path:
    return ws.build_dir / "modindex"


def _boot_kernel(ws: Workspace, tree: KernelTree) -> Path:
    return qemu.boot_kernel(
        tree.vmlinuz,
        tree.config,
        tree.target.architecture,
        ws.build_dir / "kernels",
        f"{tree.target.id}-{tree.release}",
    )


def _kvm_probe(ws: Workspace, tree: KernelTree) -> tuple[bool, str]:
    """Boot the target under KVM to a marker from /init, with a short deadline."""
    with tempfile.TemporaryDirectory(prefix="pvf-kvm-") as tmp:
        image = initramfs.build(
            tree,
            initramfs.ImageSpec(
                init_script=f"#!/bin/sh\n/bin/busybox echo {_PROBE_MARKER}\n"
                "/bin/busybox poweroff -f\n",
                gzip_level=None,
            ),
            Path(tmp) / "probe.cpio",
            _index_cache(ws),
        )
        machine = qemu.Machine(tree.target, _boot_kernel(ws, tree), image.path, accel="kvm")
        argv = qemu.command_line(machine, qemu.Channels(None, None))
        argv[argv.index("mon:stdio")] = "stdio"
        return qemu.run_probe(argv, _PROBE_MARKER.encode(), KVM_PROBE_TIMEOUT)


def _tcg_threads(tree: KernelTree) -> str:
    return qemu.tcg_threads(qemu.qemu_version(tree.target.qemu))


def choose_accel(ws: Workspace, tree: KernelTree) -> str:
    """tcg or kvm for this host, probed once per host boot (PVFRONT_ACCEL overrides)."""
    return qemu.choose_accel(
        lambda: _kvm_probe(ws, tree), tree.target.qemu, ws.build_dir / "accel.json"
    ).accel


# --------------------------------------------------------------------------- the guest


@dataclass(frozen=True)
class ImageBoot:
    """Boot a Debian disk image instead of a generated initramfs.

    Without a kernel the firmware boots the first disk through its own boot loader, as a VM
    does; with one, QEMU loads that kernel and initrd directly (used before the disk has a
    boot loader). The shell is the image's login shell on the second serial line.
    """

    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: tuple[str, ...] = ()


# Console lines that tell how far a Debian image got when no shell came.
_IMAGE_STAGES = (
    (
        "the initramfs (it started but did not hand over to the root filesystem)",
        re.compile(r"Loading, please wait|Begin: "),
    ),
    (
        "systemd (it started but no login shell came on the second serial line)",
        re.compile(r"Welcome to |systemd\[1\]|\[  OK  \]"),
    ),
    ("mounting the root filesystem", re.compile(r"ALERT!|Gave up waiting for root")),
)


def _image_boot_failure(console: Console, timeout: float) -> GuestError:
    """The stage a Debian image's boot stopped at, from what its console printed."""
    stage = "the boot loader or the kernel (no initramfs message)"
    for name, pattern in _IMAGE_STAGES:
        if console.watch.seen(pattern):
            stage = name
    tail = "\n".join(console.watch.lines[-15:])
    return GuestHang(
        f"{console.label}: boot stopped in {stage}: no shell within {timeout:.0f}s",
        log_path=console.log.path,
        excerpt=tail,
    )


class Guest:
    """One booted guest: its QEMU, its console and the commands run in it."""

    def __init__(
        self,
        ws: Workspace,
        tree: KernelTree,
        *,
        modules: Sequence[Path] = (),
        in_tree_modules: Sequence[str] = (),
        files: Mapping[str, bytes | Path] | None = None,
        load_modules: bool = False,
        disks: Sequence[Disk] = (),
        nics: Sequence[Nic] = (),
        memory_mib: int | None = None,
        smp: int = 1,
        cmdline: Sequence[str] = (),
        allow: Sequence[str] = (),
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        trace: Trace | None = None,
        qmp: bool = False,
        label: str = "guest",
        init_script: str | None = None,
        image: Path | None = None,
        accel: str | None = None,
        image_boot: ImageBoot | None = None,
        viommu: bool = False,
        s3: bool = False,
        netns: NetNamespace | None = None,
    ) -> None:
        self.ws = ws
        self.tree = tree
        self.spec = initramfs.ImageSpec(
            modules=list(modules),
            in_tree_modules=list(in_tree_modules),
            files=dict(files or {}),
            init=initramfs.InitOptions(load_modules=load_modules),
            init_script=init_script,
        )
        self.disks = tuple(disks)
        self.nics = tuple(nics)
        sanitized = tree.built_in("CONFIG_KASAN")
        self.pace = SANITIZED_PACE if sanitized else 1.0
        self.memory_mib = memory_mib or DEFAULT_MEMORY_MIB * (
            SANITIZED_MEMORY_FACTOR if sanitized else 1
        )
        self.smp = smp
        self.cmdline = tuple(cmdline)
        self.allow = list(allow)
        self.boot_timeout = boot_timeout
        self.command_timeout = command_timeout
        self.trace = trace
        self.want_qmp = qmp
        self.label = f"{label}@{tree.target.id}"
        self.prebuilt_image = image
        self.accel = accel
        self.image_boot = image_boot
        self.viommu = viommu
        self.s3 = s3
        self.netns = netns
        self.log_path = _log_path(ws, label, tree.target.id)
        self.tmpdir: Path | None = None
        self.image: initramfs.Initramfs | None = None
        self.process: qemu.QemuProcess | None = None
        self.console: Console | None = None
        self._qmp: Qmp | None = None
        self._kernel_drain: qemu.SocketDrain | None = None
        self._old_handlers: dict[signal.Signals, SignalHandler] = {}
        self._log: ConsoleLog | None = None
        self._boot_files: tuple[Path | None, Path | None, tuple[str, ...]] = (None, None, ())
        self.spawned_at = 0.0

    # -- lifecycle

    def __enter__(self) -> Guest:
        try:
            self.start()
        except BaseException:
            self.close(check=False)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(check=exc_type is None)

    def start(self) -> None:
        atexit.register(self.close, check=False)
        self._trap_sigterm()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pvf-"))
        self._log = ConsoleLog(self.log_path)
        self._log.note(f"{self.tree.target.id} {self.tree.release}")
        if self.image_boot is not None:
            boot = self.image_boot
            self._boot_files = (boot.kernel, boot.initrd, (*boot.cmdline, *self.cmdline))
        elif self.prebuilt_image is None:
            self.image = initramfs.build(
                self.tree, self.spec, self.tmpdir / "initramfs.img", _index_cache(self.ws)
            )
            self._boot_files = (self._kernel(), self.image.path, self.cmdline)
        else:
            self._boot_files = (self._kernel(), self.prebuilt_image, self.cmdline)
        self._launch()

    def _kernel(self) -> Path:
        """The kernel file QEMU boots. A guest that sleeps boots the bzImage: a kernel entered
        through PVH (the bare ELF) triple-faults in its S3 wakeup trampoline under QEMU 7.2."""
        if self.s3:
            return self.tree.vmlinuz
        return _boot_kernel(self.ws, self.tree)

    def _launch(self) -> None:
        """Start QEMU on the prepared files, connect the serial lines, wait for the shell."""
        assert self.tmpdir is not None and self._log is not None
        log = self._log
        kernel, initrd, cmdline = self._boot_files
        accel = self.accel or choose_accel(self.ws, self.tree)
        machine = qemu.Machine(
            self.tree.target,
            kernel,
            initrd,
            cmdline=cmdline,
            memory_mib=self.memory_mib,
            smp=self.smp,
            accel=accel,
            tcg_threads=_tcg_threads(self.tree),
            disks=self.disks,
            nics=self.nics,
            trace=self.trace,
            viommu=self.viommu,
            s3=self.s3,
            netns=self.netns.name if self.netns else None,
        )
        console_path, shell_path = self.tmpdir / "console.sock", self.tmpdir / "shell.sock"
        channels = qemu.Channels(
            console_path, shell_path, self.tmpdir / "qmp.sock" if self.want_qmp else None
        )
        for stale in (channels.console, channels.shell, channels.qmp):
            if stale is not None:
                stale.unlink(missing_ok=True)
        argv = qemu.command_line(machine, channels)
        log.note("qemu: " + " ".join(argv))
        self.process = qemu.QemuProcess(argv, self.tmpdir / "qemu.stderr")
        self.spawned_at = time.monotonic()
        self.process.start()
        try:
            # QEMU waits for these connections, in this order, before it runs the guest.
            kernel_sock = qemu.connect_unix(console_path, self.process, 30)
            self._kernel_drain = qemu.SocketDrain(kernel_sock)
            shell_sock = qemu.connect_unix(shell_path, self.process, 30)
        except qemu.QemuError as exc:
            log.note(str(exc))
            raise QemuCrashed(f"{self.label}: {exc}", log_path=self.log_path) from None
        shell = pexpect.fdpexpect.fdspawn(
            shell_sock.detach(), encoding="utf-8", codec_errors="replace", maxread=65536
        )
        self.console = Console(
            shell, self._kernel_drain.fd, log, self.process.poll, label=self.label
        )
        self.console.allow(self.allow)
        if channels.qmp:
            self._qmp = Qmp.connect(channels.qmp, self.process)
        diagnose = _image_boot_failure if self.image_boot is not None else None
        self.console.wait_prompt(self.boot_timeout * self.pace, diagnose)

    def _stop_qemu(self) -> None:
        """Kill QEMU if it still runs, log how it ended, and drop its connections."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.process is not None:
            status = self.process.stop()
            if self._kernel_drain is not None:
                self._kernel_drain.finish()
            if self.console is not None:
                self.console.pump_kernel(0)
                self.console.log.note(f"qemu exited with status {status}")
                stderr = self.process.stderr_text()
                if stderr:
                    self.console.log.note("qemu stderr: " + stderr.replace("\n", " | "))
            self.process = None
        if self.console is not None:
            with contextlib.suppress(OSError):
                self.console.shell.close()
        if self._kernel_drain is not None:
            self._kernel_drain.close()
            self._kernel_drain = None

    def _wait_shutdown(self, command: str, timeout: float) -> None:
        """Type command (a reboot or poweroff) and wait for QEMU to exit by itself.

        The harness runs QEMU with -no-reboot, so a guest's reboot ends the process too;
        kernel trouble while the guest shuts down (a hung task, an oops) is raised.
        """
        console = self._console()
        console.log.note(f"run: {command} (the guest shuts down)")
        console.shell.sendline(command)
        timeout *= self.pace
        deadline = time.monotonic() + timeout
        while self.process is not None and self.process.poll() is None:
            console.check_kernel()
            if time.monotonic() > deadline:
                raise GuestHang(
                    f"{self.label}: `{command}` did not end the guest within {timeout:.0f}s",
                    log_path=self.log_path,
                    excerpt="\n".join(console.watch.lines[-15:]),
                )
            with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
                console.shell.expect([pexpect.EOF], timeout=0.2)
            console.pump_kernel(0.05)
        console.pump_kernel(0.2)
        console.watch.flush()
        console.check_kernel()
        status = self.process.poll() if self.process is not None else 0
        if status:
            raise QemuCrashed(
                f"{self.label}: QEMU exited with status {status} during `{command}`",
                log_path=self.log_path,
            )

    def reboot(self, command: str = "systemctl reboot", timeout: float = 180.0) -> None:
        """Reboot the guest from inside and wait for its shell again, on the same disks."""
        self._wait_shutdown(command, timeout)
        self._stop_qemu()
        assert self._log is not None
        self._log.note("--- reboot ---")
        self._launch()

    def poweroff(self, command: str = "systemctl poweroff", timeout: float = 180.0) -> None:
        """Power the guest off from inside; the guest is closed afterwards."""
        self._wait_shutdown(command, timeout)
        self.close(check=False)

    def close(self, check: bool = True) -> None:
        """Stop QEMU and remove the temporary files; with check, raise kernel trouble seen
        since the last command (an oops at the very end must not pass unnoticed)."""
        atexit.unregister(self.close)
        pending: GuestError | None = None
        if self.console is not None and check and self.process and self.process.poll() is None:
            try:
                self.console.check_kernel()
            except KernelTrouble as exc:
                pending = exc
        self._stop_qemu()
        if self._log is not None:
            self._log.close()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        self._untrap_sigterm()
        if pending is not None:
            raise pending

    def _trap_sigterm(self) -> None:
        self._old_handlers = trap_signals(_TERMINATING, _raise_exit)

    def _untrap_sigterm(self) -> None:
        restore_signals(self._old_handlers, _raise_exit)
        self._old_handlers = {}

    # -- using it

    def _console(self) -> Console:
        if self.console is None:
            raise UsageError(f"{self.label}: the guest is not running")
        return self.console

    def run(
        self,
        command: str,
        timeout: float | None = None,
        *,
        check: bool = True,
        allow: Sequence[str] = (),
    ) -> CommandResult:
        """Run a shell command; CommandFailed on non-zero status (unless check=False).

        allow: kernel messages (regexes) this command is expected to cause. timeout is what
        the command takes on Debian's kernels: a sanitized kernel gets `pace` times as long.
        """
        console = self._console()
        with console.expecting(allow):
            return console.run(command, (timeout or self.command_timeout) * self.pace, check=check)

    def expecting(self, patterns: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Kernel messages matching patterns are expected inside this `with` block."""
        return self._console().expecting(patterns)

    def load_modules(self) -> None:
        """Load the modules under test: their in-tree dependencies, then insmod in order."""
        if self.image is None:
            return
        if self.image.modprobe_first:
            self.run("modprobe -a " + " ".join(self.image.modprobe_first))
        for name in self.image.modules:
            self.run(f"insmod /lib/modules/{self.tree.release}/{initramfs.EXTRA_DIR}/{name}.ko")

    @property
    def kernel_lines(self) -> list[str]:
        return self._console().watch.lines

    def wait_kernel(self, regex: str, timeout: float = 10.0) -> str:
        """The first kernel console line matching regex, waiting for it up to timeout."""
        console = self._console()
        compiled = re.compile(regex)
        timeout *= self.pace
        deadline = time.monotonic() + timeout
        while True:
            console.check_kernel()
            found = console.watch.seen(compiled)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise GuestHang(
                    f"{self.label}: no kernel message /{regex}/ within {timeout:.0f}s",
                    log_path=self.log_path,
                )
            console.pump_kernel(0.1)

    @property
    def qmp(self) -> Qmp:
        if self._qmp is None:
            raise UsageError(f"{self.label}: started without qmp=True")
        return self._qmp

    @property
    def pid(self) -> int:
        if self.process is None:
            raise UsageError(f"{self.label}: the guest is not running")
        return self.process.pid


# Signals that end a run from outside: the CI runner's SIGTERM, a closed terminal's SIGHUP.
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
# What signal.signal() takes and returns: a function, SIG_DFL or SIG_IGN, or None (set from C).
SignalHandler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def trap_signals(
    signums: Sequence[signal.Signals], handler: SignalHandler
) -> dict[signal.Signals, SignalHandler]:
    """Handle each of signums nobody else handles with handler, so that `with` blocks and
    finally clauses clean up; only from the main thread, where Python runs handlers. Returns
    what restore_signals puts back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old: dict[signal.Signals, SignalHandler] = {}
    for signum in signums:
        if signal.getsignal(signum) is signal.SIG_DFL:
            old[signum] = signal.signal(signum, handler)
    return old


def restore_signals(old: dict[signal.Signals, SignalHandler], handler: SignalHandler) -> None:
    """Undo trap_signals where handler is still the one in place."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in old.items():
        if signal.getsignal(signum) is handler:
            signal.signal(signum, previous)


# --------------------------------------------------------------------------- entry points


def interactive(
    ws: Workspace,
    tree: KernelTree,
    *,
    modules: Sequence[Path] = (),
    load: bool = False,
    disks: int = 0,
    net: bool = False,
    in_tree_modules: Sequence[str] = (),
    memory_mib: int = DEFAULT_MEMORY_MIB,
    smp: int = 1,
) -> int:
    """A shell on the guest's serial console, on this terminal; returns QEMU's exit status.

    The same machine the tests boot, with the built modules copied in (loaded at boot with
    load=True), `disks` blank 64 MiB virtio disks and, with net, a virtio NIC on user
    networking. Ctrl-C goes to the guest; Ctrl-A x quits; `exit` powers the guest off.
    """
    spec = initramfs.ImageSpec(
        modules=list(modules),
        in_tree_modules=list(in_tree_modules),
        init=initramfs.InitOptions(shell_on_console=True, load_modules=load),
    )
    with tempfile.TemporaryDirectory(prefix="pvf-") as tmp:
        tmpdir = Path(tmp)
        image = initramfs.build(tree, spec, tmpdir / "initramfs.img", _index_cache(ws))
        machine = qemu.Machine(
            tree.target,
            _boot_kernel(ws, tree),
            image.path,
            memory_mib=memory_mib,
            smp=smp,
            accel=choose_accel(ws, tree),
            tcg_threads=_tcg_threads(tree),
            disks=_blank_disks(tmpdir, disks),
            nics=(Nic(),) if net else (),
        )
        names = ", ".join(image.modules) or "none"
        return _run_interactive(
            machine,
            tmpdir,
            f"booting {tree.target.id} ({tree.release}); "
            f"modules: {names}{' (loaded at boot)' if load else ''}",
        )


def interactive_image(
    ws: Workspace,
    tree: KernelTree,
    disk: Path,
    *,
    disks: int = 0,
    net: bool = False,
    memory_mib: int = 1024,
    smp: int = 2,
) -> int:
    """The Debian image's serial console on this terminal (root logged in), booted through
    its own boot loader from disk, a throw-away overlay the caller owns."""
    with tempfile.TemporaryDirectory(prefix="pvf-") as tmp:
        tmpdir = Path(tmp)
        machine = qemu.Machine(
            tree.target,
            None,
            None,
            memory_mib=memory_mib,
            smp=smp,
            accel=choose_accel(ws, tree),
            tcg_threads=_tcg_threads(tree),
            disks=(Disk(disk, format="qcow2"), *_blank_disks(tmpdir, disks)),
            nics=(Nic(),) if net else (),
        )
        return _run_interactive(
            machine, tmpdir, f"booting the {tree.target.id} image (changes go to {disk})"
        )


def _blank_disks(directory: Path, count: int) -> tuple[Disk, ...]:
    return tuple(Disk(make_disk(directory, 64, name=f"disk{i}.img")) for i in range(count))


def _run_interactive(machine: qemu.Machine, tmpdir: Path, banner: str) -> int:
    old_handlers = trap_signals(_TERMINATING, _raise_exit)
    try:
        argv = qemu.command_line(machine, qemu.Channels(None, None))
        print(f"pvfront: {banner}; Ctrl-A x quits", file=sys.stderr)
        process = qemu.QemuProcess(argv, tmpdir / "qemu.stderr")
        process.start(interactive=True)
        try:
            status = process.popen.wait() if process.popen else 1
        finally:
            process.stop()
        stderr = process.stderr_text()
        if stderr:
            print(stderr, file=sys.stderr)
        return status
    finally:
        restore_signals(old_handlers, _raise_exit)


def measure_boot(ws: Workspace, tree: KernelTree, runs: int = 5) -> list[float]:
    """Seconds from starting QEMU to the result of the first command, once per run.

    The image (busybox and /init only) is built once beforehand, as the tests' images are
    built before QEMU starts; the figure is the guest's boot and the console round trip.
    """
    timings = []
    with tempfile.TemporaryDirectory(prefix="pvf-bench-") as tmp:
        image = initramfs.build(
            tree, initramfs.ImageSpec(), Path(tmp) / "initramfs.img", _index_cache(ws)
        )
        for _ in range(runs):
            with Guest(ws, tree, image=image.path, label="measure-boot") as guest:
                guest.run("true")
                timings.append(time.monotonic() - guest.spawned_at)
    return timings


def virtio_left_to_pvfront(tree: KernelTree) -> tuple[str, ...]:
    """The kernel parameters that leave every virtio device to pvf_pci on this kernel."""
    return (NO_BUILTIN_VIRTIO_PCI,) if tree.built_in("CONFIG_VIRTIO_PCI") else ()
