"""The QEMU harness on real kernels: scenarios work, and every way a guest dies is named.

Each test is one boot (3-6 s under TCG), so related checks share a guest.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pvf_support import skip_unless_first_of_its_arch
from pvfront.console import INIT_STARTED
from pvfront.depmod import ModuleIndex
from pvfront.errors import EXIT_FAILED, EXIT_KERNEL, EXIT_SETUP
from pvfront.guest import (
    Disk,
    GuestError,
    GuestHang,
    KernelOops,
    KernelPanic,
    KernelWarning,
    ModuleLoadError,
    Nic,
    PromptMissing,
    QemuCrashed,
    make_disk,
    sha256_file,
)

pytestmark = [pytest.mark.qemu, pytest.mark.harness]

REPO = Path(__file__).resolve().parents[1]


def qemu_running(pid: int) -> bool:
    try:
        return b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def assert_reported(error: GuestError, cls: type, exit_code: int, *needles: str) -> None:
    """The error is of its own class and code, names an existing log and shows the excerpt."""
    assert type(error) is cls
    assert error.exit_code == exit_code
    assert error.log_path is not None and error.log_path.is_file()
    assert str(error.log_path) in str(error)
    for needle in needles:
        assert needle in error.excerpt, f"{needle!r} not in excerpt:\n{error.excerpt}"


def test_in_tree_virtio_blk_reads_the_disk(target_tree, guest_factory, disk_dir):
    pattern = make_disk(disk_dir, size_mib=8, pattern_seed=1)
    scratch = make_disk(disk_dir, size_mib=4, name="scratch.img")
    disks = [Disk(pattern, readonly=True, serial="pvf-pattern"), Disk(scratch, modern_only=False)]
    with guest_factory(target_tree, in_tree_modules=["virtio_blk", "virtio_pci"], disks=disks) as g:
        g.run("modprobe virtio_pci && modprobe virtio_blk")
        assert g.run("cat /sys/block/vda/size").output.strip() == str(8 * 2048)
        assert g.run("sha256sum /dev/vda").output.split()[0] == sha256_file(pattern)
        assert g.run("cat /sys/block/vda/ro /sys/block/vda/serial").output.split() == [
            "1",
            "pvf-pattern",
        ]
        # Modern-only virtio-blk has PCI device id 0x1042, a transitional one 0x1001.
        ids = g.run("cat /sys/block/vda/device/../device /sys/block/vdb/device/../device")
        assert ids.output.split() == ["0x1042", "0x1001"]
        g.run("echo pvfront-was-here | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null")

        # Kernel messages printed while a command writes output do not get into it.
        noisy = g.run(
            "for i in $(seq 1 30); do echo line$i; echo pvfront-noise-$i > /dev/kmsg; done"
        )
        assert noisy.output.split() == [f"line{i}" for i in range(1, 31)]
        g.wait_kernel(r"pvfront-noise-30$")
    assert scratch.read_bytes()[:17] == b"pvfront-was-here\n"


def test_kernel_trouble_is_classified_and_expected_trouble_is_not(
    ws, target_tree, trouble_module, guest_factory
):
    insmod = f"insmod /lib/modules/{target_tree.release}/extra/trouble.ko action="
    # Inserted alone, a module that needs another lacks symbols.
    index = ModuleIndex.for_tree(target_tree, ws.build_dir / "modindex")
    dependent = index.needing_others()[0]
    dependent_file = Path(index.paths[dependent]).name.split(".ko")[0] + ".ko"  # decompressed
    with guest_factory(target_tree, modules=[trouble_module], in_tree_modules=[dependent]) as g:
        g.load_modules()  # the modules under test, as scenarios load them: no trouble
        assert g.run("grep -c '^trouble ' /proc/modules").output.strip() == "1"
        g.run("rmmod trouble")

        # A warning the scenario expects passes, and shows up among the kernel lines.
        g.run(insmod + "warn", allow=[r"WARNING: .*trouble"])
        assert any("pvfront trouble: warning on request" in line for line in g.kernel_lines)
        g.run("rmmod trouble")

        with pytest.raises(KernelWarning) as warning:
            g.run(insmod + "warn")
        assert_reported(warning.value, KernelWarning, EXIT_KERNEL, "WARNING:", "Call Trace:")
        g.run("rmmod trouble")

        with pytest.raises(KernelWarning, match="call-trace") as trace:
            g.run(insmod + "dump")
        assert_reported(trace.value, KernelWarning, EXIT_KERNEL, "Call Trace:")
        g.run("rmmod trouble")

        with pytest.raises(ModuleLoadError) as unknown:
            g.run(f"insmod $(find /lib/modules -name {dependent_file})")
        assert_reported(unknown.value, ModuleLoadError, EXIT_FAILED, "Unknown symbol")

        with pytest.raises(KernelOops) as oops:
            g.run(insmod + "oops")
        assert_reported(oops.value, KernelOops, EXIT_KERNEL, "BUG:")

        started = time.monotonic()
        with pytest.raises(GuestHang) as hang:
            g.run("sleep 60", timeout=2)
        assert time.monotonic() - started < 6
        assert_reported(hang.value, GuestHang, EXIT_KERNEL)
        pid = g.pid
    assert not qemu_running(pid)


def test_panic_ends_the_run_at_once(target_tree, trouble_module, guest_factory):
    with guest_factory(target_tree, modules=[trouble_module], load_modules=True) as g:
        assert g.run("grep -c '^trouble ' /proc/modules").output.strip() == "1"  # loaded by /init
        pid = g.pid
        started = time.monotonic()
        with pytest.raises(KernelPanic) as panic:
            g.run("echo c > /proc/sysrq-trigger", timeout=30)
        assert time.monotonic() - started < 10
    assert_reported(panic.value, KernelPanic, EXIT_KERNEL, "Kernel panic - not syncing", "sysrq")
    assert not qemu_running(pid)


def test_missing_prompt_is_reported_after_the_boot_timeout(
    target_tree, guest_factory, selected_targets
):
    # The other targets would each spend the whole timeout on the same wait.
    skip_unless_first_of_its_arch(
        target_tree.target, selected_targets, "the wait is the harness's, not the kernel's"
    )
    broken_init = f"#!/bin/sh\n/bin/busybox echo '{INIT_STARTED}'\nexec /bin/busybox sleep 600\n"
    # Long enough for an i386 kernel to reach /init on a loaded CI machine (about 6 s idle).
    boot_timeout = 25
    guest = guest_factory(target_tree, init_script=broken_init, boot_timeout=boot_timeout)
    started = time.monotonic()
    with pytest.raises(PromptMissing) as missing, guest:
        pass
    assert time.monotonic() - started < boot_timeout + 10
    assert_reported(missing.value, PromptMissing, EXIT_SETUP, INIT_STARTED)
    assert guest.process is None and guest.tmpdir is None


def test_qemu_dying_is_a_qemu_crash(target_tree, guest_factory):
    with guest_factory(target_tree) as g:
        pid = g.pid
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        started = time.monotonic()
        with pytest.raises(QemuCrashed) as crash:
            g.run("sleep 30", timeout=20)
        assert time.monotonic() - started < 5
    assert_reported(crash.value, QemuCrashed, EXIT_SETUP)
    assert "status -9" in str(crash.value)


# The child starts with the signal dispositions of a terminal session's process, whatever
# this test run inherited: under nohup SIGHUP is ignored, and pvfront rightly keeps an
# ignored signal ignored (a nohup'd run must survive the hangup).
_INTERRUPTED_BOOT = textwrap.dedent("""
    import signal
    import sys
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pvfront.guest import Guest
    from pvfront.provision import ensure
    from pvfront.targets import load_targets
    from pvfront.workspace import Workspace
    ws = Workspace.discover()
    tree = ensure(ws, [load_targets(ws.targets_file).get(sys.argv[1])])[0]
    with Guest(ws, tree, label="interrupted") as guest:
        print("READY", guest.pid, guest.tmpdir, flush=True)
        guest.run("sleep 120", timeout=300)
""")


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_interrupted_run_leaves_nothing_behind(target, target_tree, signum):
    env = dict(os.environ, PYTHONPATH=str(REPO / "tooling"))
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_BOOT, target.id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], 90)
        assert ready, "the guest did not boot"
        _, pid, tmpdir = child.stdout.readline().split()
        assert qemu_running(int(pid)) and Path(tmpdir).is_dir()
        child.send_signal(signum)
        child.wait(20)
    finally:
        child.kill()
        child.wait()
    assert child.returncode != 0
    assert not qemu_running(int(pid))
    assert not Path(tmpdir).exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp has them) listening on port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hexport = local.split(":")
            if int(hexport, 16) == port and state == "0A":
                found.add(address)
    return found


def _fetch(port: int, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            data = conn.recv(100)
            if data:
                return data
        time.sleep(0.3)
    return b""


def test_network_fault_injection_and_baseline_devices(ws, target_tree, guest_factory, disk_dir):
    wanted = ["virtio_pci", "virtio_blk", "virtio_net", "ahci", "sd_mod", "e1000"]
    index = ModuleIndex.for_tree(target_tree, ws.build_dir / "modindex")
    absent = [m for m in wanted if m not in index.paths and m not in index.builtin]
    if absent:
        pytest.skip(f"{target_tree.target.id} lacks {', '.join(absent)}")
    port = _free_port()
    hot = make_disk(disk_dir, 4, pattern_seed=2)
    faulty = make_disk(disk_dir, 4, pattern_seed=3)
    rules = disk_dir / "blkdebug.conf"
    # Every read touching sector 64 fails with EIO.
    rules.write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "64"\n')
    sata = make_disk(disk_dir, 4, pattern_seed=4)
    disks = [
        Disk(hot, hotplug=True, serial="hot"),
        Disk(faulty, blkdebug=rules, serial="faulty"),
        Disk(sata, interface="ahci"),
    ]
    nics = [Nic(forwards=((port, 7777),)), Nic(model="e1000")]
    by_serial = "basename $(dirname $(grep -l '^{}$' /sys/block/vd*/serial))"
    find_if = (
        "for n in /sys/class/net/eth*; do [ $(basename $(readlink $n/device/driver)) = "
        "{} ] && basename $n; done; true"
    )
    with guest_factory(target_tree, in_tree_modules=wanted, disks=disks, nics=nics, qmp=True) as g:
        g.run("modprobe -a " + " ".join(wanted))
        g.run(
            "for i in $(seq 100); do [ -b /dev/sda ] && [ -b /dev/vdb ] && break; sleep 0.1;"
            " done; [ -b /dev/sda ]"
        )
        assert g.run("sha256sum /dev/sda").output.split()[0] == sha256_file(sata)
        assert g.run(find_if.format("e1000")).output.strip().startswith("eth")

        bad = g.run(by_serial.format("faulty")).output.strip()
        # No readahead, so reading 16 KiB reads only those (busybox 1.30 lacks --setra).
        g.run(f"echo 0 > /sys/block/{bad}/queue/read_ahead_kb")
        assert g.run(f"head -c 16384 /dev/{bad} | wc -c").output.strip() == "16384"
        failed = g.run(f"cat /dev/{bad} > /dev/null", check=False)
        assert failed.status != 0
        assert "Input/output error" in failed.output or "I/O error" in failed.output

        iface = g.run(find_if.format("virtio_net")).output.strip()
        g.run(f"ip addr add 10.0.2.15/24 dev {iface} && ip link set {iface} up")
        g.run("(echo pvfront-hello | nc -l -p 7777 >/dev/null 2>&1 &)")
        assert _listeners(port) == {"0100007F"}  # 127.0.0.1 only
        assert _fetch(port) == b"pvfront-hello\n"

        carrier = f"cat /sys/class/net/{iface}/carrier"
        g.qmp.set_link("vnet0", False)
        g.run(f"for i in $(seq 50); do [ $({carrier}) = 0 ] && break; sleep 0.1; done")
        assert g.run(carrier).output.strip() == "0"
        g.qmp.set_link("vnet0", True)
        g.run(f"for i in $(seq 50); do [ $({carrier}) = 1 ] && break; sleep 0.1; done")
        assert g.run(carrier).output.strip() == "1"

        hot_name = g.run(by_serial.format("hot")).output.strip()
        g.qmp.device_del("vblk0")
        g.run(f"for i in $(seq 50); do [ -e /sys/block/{hot_name} ] || break; sleep 0.1; done")
        assert hot_name not in g.run("ls /sys/block").output.split()
