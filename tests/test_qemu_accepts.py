"""QEMU itself accepts every command line the harness builds, for every target's machine.

The argv comes from `pvfront.qemu.command_line`, as the harness makes it for each kind of boot;
the test adds `-S` (the CPU never starts) and, where the harness asks for none, a QMP socket.
QEMU parses every option and creates every device, chardev, netdev and drive before it would
run the CPU, so a refused option or property shows up here in a fraction of a second, without
booting anything. The test connects the serial lines as the harness does (QEMU waits for them),
says `qmp_capabilities` and `quit`, and QEMU must exit 0 having printed no error.

The kernel is a boot-protocol header with nothing after it: QEMU's loader reads and checks the
header (a file of zeros is refused: "linux kernel too old to load a ram disk"), and the code it
would jump to never runs. The initrd, the disks and the overlay are small files made here.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pvfront import qemu
from pvfront.qemu import Channels, Disk, Machine, Nic, Trace
from pvfront.targets import Target, load_targets
from pvfront.workspace import Workspace


def _machine_kinds() -> dict[str, Target]:
    """One target per distinct QEMU machine among targets.toml's targets: targets whose bare
    machines get the same command line are the same thing to QEMU. Keyed by the targets' ids."""
    kinds: dict[tuple[str, ...], list[Target]] = {}
    for target in load_targets(Workspace.discover().targets_file).targets:
        bare = Machine(target, Path("/k"), Path("/i"))
        key = tuple(qemu.command_line(bare, Channels(Path("/c"), Path("/s"), Path("/q"))))
        kinds.setdefault(key, []).append(target)
    return {"+".join(t.id for t in same): same[0] for same in kinds.values()}


KINDS = _machine_kinds()


def _kernel(path: Path) -> Path:
    """A bzImage header QEMU's x86 loader accepts (boot protocol 2.15, loaded high)."""
    setup_sects = 1
    image = bytearray((setup_sects + 1) * 512 + 4096)
    image[0x1F1] = setup_sects
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)  # protocol version
    image[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", image, 0x238, 2048)  # cmdline_size
    path.write_bytes(bytes(image))
    return path


def _file(path: Path, size: int = 1 << 20) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


Boot = Callable[[Target, Path], tuple[Machine, Channels]]


def _serial(d: Path, qmp: bool = False) -> Channels:
    return Channels(d / "con.sock", d / "sh.sock", d / "qmp.sock" if qmp else None)


def busybox_with_disks_and_nics(target: Target, d: Path) -> tuple[Machine, Channels]:
    """A busybox guest as the qemu-tests start one: every kind of disk and NIC they attach."""
    rules = d / "blkdebug.conf"
    rules.write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "64"\n')
    disks = [
        Disk(_file(d / "pattern.img"), readonly=True, serial="pvf-pattern"),
        Disk(_file(d / "scratch.img"), modern_only=False),
        Disk(_file(d / "doomed.img"), hotplug=True, serial="doomed"),
        Disk(_file(d / "faulty.img"), blkdebug=rules, serial="faulty"),
        Disk(_file(d / "sata.img"), interface="ahci"),
    ]
    if target.qemu_machine.legacy_ide:  # command_line refuses IDE on a machine without it
        disks.append(Disk(_file(d / "ide.img"), interface="ide"))
    nics = (
        Nic(forwards=((_free_port(), 22),), mac="52:54:00:12:34:99"),
        Nic(modern_only=False, hotplug=True),
        Nic(model="e1000"),
    )
    machine = Machine(
        target,
        _kernel(d / "vmlinuz"),
        _file(d / "initrd.img", 4096),
        cmdline=("oops=panic",),
        memory_mib=512,
        smp=2,
        tcg_threads=qemu.tcg_threads(qemu.qemu_version(target.qemu)),
        disks=tuple(disks),
        nics=nics,
    )
    return machine, _serial(d)


def image_through_the_firmware(target: Target, d: Path) -> tuple[Machine, Channels]:
    """A Debian image booted by its own boot loader from a qcow2 overlay: no -kernel."""
    base = _file(d / "image.raw", 8 << 20)
    overlay = d / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)],
        check=True,
    )
    machine = Machine(
        target,
        None,
        None,
        memory_mib=1024,
        smp=2,
        disks=(Disk(overlay, format="qcow2"),),
        nics=(Nic(),),
    )
    return machine, _serial(d)


def traced_with_qmp(target: Target, d: Path) -> tuple[Machine, Channels]:
    """A bench guest: trace events to a file, QMP to switch them, a baseline AHCI disk."""
    events = d / "events"
    events.write_text("")  # the bench starts with no event on, QMP turns them on later
    machine = Machine(
        target,
        _kernel(d / "vmlinuz"),
        _file(d / "initrd.img", 4096),
        memory_mib=512,
        trace=Trace(events, d / "out.trace"),
        disks=(Disk(_file(d / "bench.img"), interface="ahci"),),
        nics=(Nic(model="e1000"),),
    )
    return machine, _serial(d, qmp=True)


def qmp_for_hot_unplug(target: Target, d: Path) -> tuple[Machine, Channels]:
    """A fault test's guest: a hot-pluggable disk and NIC that QMP removes."""
    machine = Machine(
        target,
        _kernel(d / "vmlinuz"),
        _file(d / "initrd.img", 4096),
        disks=(Disk(_file(d / "doomed.img"), hotplug=True), Disk(_file(d / "stays.img"))),
        nics=(Nic(hotplug=True),),
    )
    return machine, _serial(d, qmp=True)


def behind_a_viommu(target: Target, d: Path) -> tuple[Machine, Channels]:
    """The DMA tests' guest: intel-iommu first, then virtio devices with and without
    iommu_platform, on q35 whatever the target's own machine."""
    machine = Machine(
        target,
        _kernel(d / "vmlinuz"),
        _file(d / "initrd.img", 4096),
        cmdline=("intel_iommu=on",),
        viommu=True,
        disks=(Disk(_file(d / "a.img"), iommu_platform=True), Disk(_file(d / "b.img"))),
        nics=(Nic(iommu_platform=True), Nic()),
    )
    return machine, _serial(d)


def with_s3(target: Target, d: Path) -> tuple[Machine, Channels]:
    """The PM tests' guest: S3 offered by the machine's ACPI PM device, QMP to wake it."""
    machine = Machine(
        target, _kernel(d / "vmlinuz"), _file(d / "initrd.img", 4096), s3=True, nics=(Nic(),)
    )
    return machine, _serial(d, qmp=True)


def interactive_console(target: Target, d: Path) -> tuple[Machine, Channels]:
    """`pvfront boot`: the guest's console on the terminal (here on /dev/null)."""
    machine = Machine(target, _kernel(d / "vmlinuz"), _file(d / "initrd.img", 4096), nics=(Nic(),))
    return machine, Channels(None, None)


BOOTS: dict[str, Boot] = {
    "busybox": busybox_with_disks_and_nics,
    "image": image_through_the_firmware,
    "traced": traced_with_qmp,
    "qmp": qmp_for_hot_unplug,
    "viommu": behind_a_viommu,
    "s3": with_s3,
    "interactive": interactive_console,
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="pvf-qa-") as tmp:
        yield Path(tmp)


@pytest.mark.parametrize("boot", BOOTS)
@pytest.mark.parametrize("kind", KINDS)
def test_qemu_accepts_the_command_line_and_quits_cleanly(kind, boot, short_dir):
    target = KINDS[kind]
    if shutil.which(target.qemu) is None or shutil.which("qemu-img") is None:
        pytest.skip(f"needs {target.qemu} and qemu-img (invoke setup)")
    machine, channels = BOOTS[boot](target, short_dir)
    argv = qemu.command_line(machine, channels)
    qmp = channels.qmp or short_dir / "test-qmp.sock"
    if channels.qmp is None:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    argv.append("-S")
    process = qemu.QemuProcess(argv, short_dir / "qemu.stderr")
    status, failure = None, None
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(process.stop)  # whatever happens, no QEMU outlives the test
        try:
            process.start()
            # QEMU waits for the serial lines, in this order, as the harness connects them.
            for line in (channels.console, channels.shell):
                if line is not None:
                    cleanup.enter_context(qemu.connect_unix(line, process, 10))
            client = qemu.Qmp.connect(qmp, process, timeout=10)  # greeting, qmp_capabilities
            cleanup.callback(client.close)
            client.execute("quit")
            assert process.popen is not None
            status = process.popen.wait(10)
        except (OSError, subprocess.TimeoutExpired, qemu.QemuError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
    errors = [
        line
        for line in process.stderr_text().splitlines()
        if "info: QEMU waiting for connection on" not in line
    ]
    said = "; ".join(errors) or failure or f"exit status {status}"
    assert status == 0 and not errors and failure is None, (
        f"QEMU refused the command line: {said}\n{' '.join(argv)}"
    )
