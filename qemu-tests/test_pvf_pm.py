"""System sleep and shutdown with pvfront's drivers bound and busy (issue 13 item 2).

Suspend to RAM (S3). A guest with a pvf disk and a pvf NIC is suspended with
`echo mem > /sys/power/state` (QEMU offers S3 only when asked: Guest(s3=True)) and woken with
QMP `system_wakeup`, twice. QEMU resets the machine on wakeup, virtio devices included, so the
drivers must have stopped their devices and must rebuild their queues on resume
(kmod/README.md, "Power management"). A reader loop checksums the head of the disk before,
across and after each sleep; afterwards the disk still reads the host's pattern and the data
written before the sleep, and a write made after it reaches the host's image; the NIC carries
a download and an upload with matching checksums before and after.

Shutdown. `reboot -f` with a read loop running must leave each virtio device reset: QEMU's
`virtio_set_status` trace records every status the guest writes, and the last one must be 0.
A device left at DRIVER_OK could keep writing into memory that the next kernel (kexec) owns.

Hibernation (S4). The guest swaps to a second pvf disk and hibernates with
`echo disk > /sys/power/state` (/sys/power/disk: shutdown); the image is written through
pvf_blk between the freeze and poweroff callbacks, and QEMU exits when the guest powers off.
A fresh boot of the same kernel and initramfs loads the modules and is told to resume from
that disk (`echo MAJ:MIN > /sys/power/resume`, what an initramfs does with `resume=`); the
image kernel's drivers then get devices the boot kernel had set up and frozen, and must
rebuild their queues: the file only the image's memory had is back, the reader loop goes on
with intact reads, the disk takes new writes and the NIC carries traffic both ways. It runs on
the first selected target of each architecture (`--target T` runs it on T).
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
from pathlib import Path

import pytest

from pvf_support import (
    MIB,
    HostServer,
    TcpSink,
    bring_up,
    direct_io,
    disk_by_serial,
    drop_caches,
    host_sha256,
    modules_for,
    pvf_guest,
    read_sha256,
    require,
    skip_unless_first_of_its_arch,
    transfer_both_ways,
    wait_for,
)
from pvfront.guest import Disk, Guest, Nic, Trace, make_disk

pytestmark = pytest.mark.qemu

CYCLES = 2
HEAD = 4 * MIB  # what the reader loop checksums
WRITTEN_BEFORE = 8 * MIB  # offset of the data written before the first sleep
WRITTEN_AFTER = 12 * MIB  # offset of the data written after each sleep (one MiB apart)
RESUME_TIMEOUT = 120  # seconds from system_wakeup to user space running again
IO_TIMEOUT = 60  # a command doing I/O on a device that did not come back hangs: fail in time


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


# QEMU 7.2's q35 loses the ICH9 LPC bridge's PMBASE and ACPI enable bit (config bytes
# 0x40-0x47) in the machine reset that wakes it, and neither SeaBIOS's resume path nor Linux
# writes them back (Linux restores only the standard header of a function without a
# driver): the first S3 works, the second writes to a PM1 control port no longer decoded and
# never sleeps. The guest puts them back after each wakeup, as the firmware does at boot.
# pc's PIIX4 keeps them.
ICH9_LPC_CONFIG = "/sys/bus/pci/devices/0000:00:1f.0/config"


def suspend_and_wake(g: Guest) -> None:
    """Suspend to RAM, wake the guest with QMP and wait until its user space runs again.

    The guest reports the end of the sleep on the kernel console, not through the shell: the
    shell's serial line drops what arrives while the UART is still resuming."""
    token = secrets.token_hex(4)
    lpc = f"dd if={ICH9_LPC_CONFIG} of=/tmp/lpc.cfg bs=1 skip=64 count=8 2>/dev/null"
    g.run(f"[ -e /tmp/lpc.cfg ] || [ ! -e {ICH9_LPC_CONFIG} ] || {lpc}")
    # The sleep lets this command's own output out before user space freezes; the double
    # parentheses make the job a subshell's, so the shell prints no "Done" notice later.
    g.run(f'( (sleep 1; echo mem > /sys/power/state; echo "<3>pvf-pm: {token} $?" > /dev/kmsg) & )')
    g.qmp.wait_event("SUSPEND", timeout=60)
    g.qmp.execute("system_wakeup")
    g.qmp.wait_event("WAKEUP", timeout=30)
    line = g.wait_kernel(rf"pvf-pm: {token} \d+", timeout=RESUME_TIMEOUT)
    assert line.rstrip().endswith(f"{token} 0"), f"echo mem > /sys/power/state failed: {line}"
    restore = f"dd if=/tmp/lpc.cfg of={ICH9_LPC_CONFIG} bs=1 seek=64 count=8 conv=notrunc"
    g.run(f"[ ! -e /tmp/lpc.cfg ] || {restore} 2>/dev/null")


def start_reader(g: Guest, disk: str) -> None:
    """A loop that reads the disk's head from the device (the page cache dropped first) and
    appends its SHA-256 to /tmp/reads."""
    g.run(
        f"(while :; do blockdev --flushbufs /dev/{disk}; "
        f"dd if=/dev/{disk} bs={MIB} count={HEAD // MIB} 2>/dev/null | sha256sum "
        ">> /tmp/reads; done) >/dev/null 2>&1 & echo $! > /tmp/reader.pid"
    )


def reads(g: Guest) -> list[str]:
    return [line.split()[0] for line in g.run("cat /tmp/reads").output.splitlines() if line]


def wait_for_reads(g: Guest, count: int) -> None:
    """Until the reader loop has logged more than count checksums."""
    g.run(
        wait_for(f"[ $(wc -l < /tmp/reads) -gt {count} ]", tenths=IO_TIMEOUT * 10),
        timeout=IO_TIMEOUT + 10,
    )


def write_at(g: Guest, disk: str, source: str, offset: int) -> None:
    g.run(
        f"dd if={source} of=/dev/{disk} bs=65536 seek={offset // 65536} conv=fsync 2>/dev/null",
        timeout=IO_TIMEOUT,
    )


def test_suspend_to_ram_and_wake_keeps_disk_and_nic_working(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    require(target_tree, "SUSPEND")
    image = make_disk(disk_dir, 16, pattern_seed=61)
    download = random.Random(62).randbytes(MIB + 29)
    upload = disk_dir / "upload.bin"
    upload.write_bytes(random.Random(63).randbytes(MIB // 2 + 7))
    blobs = {f"/data/blob{i}.bin": random.Random(64 + i).randbytes(256 * 1024) for i in range(3)}
    with (
        HostServer({"download.bin": download}) as http,
        TcpSink() as sink,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            disks=[Disk(image, serial="pm")],
            nics=[Nic()],
            files={"/data/upload.bin": upload, **blobs},
            qmp=True,
            s3=True,
        ) as g,
    ):
        state = g.run("cat /sys/power/state").output.split()
        assert "mem" in state, f"the guest offers no S3: /sys/power/state is {state}"
        disk = disk_by_serial(g, "pm")
        direct = direct_io(g, disk)
        head = host_sha256(image, 0, HEAD)
        bring_up(g)
        transfer_both_ways(g, http, sink, download, upload)
        write_at(g, disk, "/data/blob0.bin", WRITTEN_BEFORE)
        start_reader(g, disk)
        wait_for_reads(g, 0)

        for cycle in range(1, CYCLES + 1):
            before = len(reads(g))
            suspend_and_wake(g)
            # The reader goes on: three more full reads after the wakeup, all intact.
            wait_for_reads(g, before + 3)
            assert set(reads(g)) == {head}, f"cycle {cycle}: the disk's head read back wrong"

            drop_caches(g, disk)
            blob0 = blobs["/data/blob0.bin"]
            got = read_sha256(g, disk, WRITTEN_BEFORE, len(blob0), direct=direct)
            assert got == host_sha256(image, WRITTEN_BEFORE, len(blob0)), f"cycle {cycle}"
            offset = WRITTEN_AFTER + (cycle - 1) * MIB
            write_at(g, disk, f"/data/blob{cycle}.bin", offset)
            blob = blobs[f"/data/blob{cycle}.bin"]
            assert host_sha256(image, offset, len(blob)) == hashlib.sha256(blob).hexdigest(), (
                f"cycle {cycle}: a write after the wakeup did not reach the host's image"
            )

            g.run(wait_for("[ $(cat /sys/class/net/pvnet0/carrier) = 1 ]"))
            sink.received.clear()
            transfer_both_ways(g, http, sink, download, upload)

        g.run("kill $(cat /tmp/reader.pid); wait; true")


_STATUS = re.compile(r"virtio_set_status vdev (0x[0-9a-f]+) val (\d+)")


def last_statuses(trace: Path) -> dict[str, int]:
    """The last status QEMU's trace saw set on each virtio device (by its address)."""
    last: dict[str, int] = {}
    for match in _STATUS.finditer(trace.read_text(errors="replace")):
        last[match.group(1)] = int(match.group(2))
    return last


def test_reboot_with_io_running_leaves_every_device_reset(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    image = make_disk(disk_dir, 16, pattern_seed=65)
    events = disk_dir / "events"
    events.write_text("virtio_set_status\n")
    out = disk_dir / "trace.log"
    with pvf_guest(
        guest_factory,
        target_tree,
        pvf_modules,
        disks=[Disk(image, serial="pm")],
        nics=[Nic()],
        trace=Trace(events, out),
    ) as g:
        disk = disk_by_serial(g, "pm")
        bring_up(g)
        start_reader(g, disk)
        wait_for_reads(g, 1)
        running = last_statuses(out)
        assert sorted(running.values()) == [15, 15], f"not both at DRIVER_OK: {running}"
        g.poweroff("reboot -f", timeout=60)

    # 0 is a reset; DRIVER_OK (15) would mean the device was left running into the reboot.
    assert last_statuses(out) == dict.fromkeys(running, 0)


def test_hibernate_to_a_pvf_swap_disk_and_resume(
    target_tree, pvf_modules, guest_factory, disk_dir, selected_targets
):
    # Two boots and an image written through pvf_blk: once per architecture keeps CI's hour
    # (S3 and the reboot, which share the freeze/restore and shutdown paths, run everywhere).
    skip_unless_first_of_its_arch(
        target_tree.target, selected_targets, "hibernation costs two boots"
    )
    require(target_tree, "HIBERNATION")
    image = make_disk(disk_dir, 16, pattern_seed=66)
    swap = make_disk(disk_dir, 256, name="swap.img")
    download = random.Random(67).randbytes(MIB + 31)
    upload = disk_dir / "upload.bin"
    upload.write_bytes(random.Random(68).randbytes(MIB // 2 + 9))
    blobs = {f"/data/blob{i}.bin": random.Random(69 + i).randbytes(256 * 1024) for i in range(2)}
    with (
        HostServer({"download.bin": download}) as http,
        TcpSink() as sink,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            disks=[Disk(image, serial="pm"), Disk(swap, serial="swap")],
            nics=[Nic()],
            files={"/data/upload.bin": upload, **blobs},
            s3=True,  # the bzImage, as for S3 (see Guest)
        ) as g,
    ):
        assert "disk" in g.run("cat /sys/power/state").output.split()
        disk = disk_by_serial(g, "pm")
        direct = direct_io(g, disk)
        swapdev = disk_by_serial(g, "swap")
        g.run(f"mkswap /dev/{swapdev} && swapon /dev/{swapdev}")
        bring_up(g)
        transfer_both_ways(g, http, sink, download, upload)
        write_at(g, disk, "/data/blob0.bin", WRITTEN_BEFORE)
        start_reader(g, disk)
        wait_for_reads(g, 0)
        # Only the image kernel's memory knows this file: a cold boot would not have it.
        g.run("echo shutdown > /sys/power/disk; echo hibernated > /tmp/marker")

        # The image is written to the pvf swap disk (freeze, thaw, then poweroff callbacks);
        # QEMU exits when the guest powers off and the harness boots the same kernel and
        # initramfs on the same disks, which loads the modules and is told to resume.
        g.reboot(
            'echo disk > /sys/power/state; echo "<3>pvf-pm: resumed $?" > /dev/kmsg',
            timeout=300,
        )
        assert g.run("cat /tmp/marker 2>/dev/null || true").output.strip() == ""
        swapdev = disk_by_serial(g, "swap")
        g.run(f"( (sleep 1; cat /sys/block/{swapdev}/dev > /sys/power/resume) & )")
        line = g.wait_kernel(r"pvf-pm: resumed \d+", timeout=300)
        assert line.rstrip().endswith("resumed 0"), line
        assert g.run("cat /tmp/marker").output.strip() == "hibernated"

        # The image kernel's drivers drive the devices again: reads, old data, new writes,
        # traffic both ways.
        before = len(reads(g))
        wait_for_reads(g, before + 3)
        assert set(reads(g)) == {host_sha256(image, 0, HEAD)}
        g.run("kill $(cat /tmp/reader.pid); wait; true")
        drop_caches(g, disk)
        blob0 = blobs["/data/blob0.bin"]
        got = read_sha256(g, disk, WRITTEN_BEFORE, len(blob0), direct=direct)
        assert got == hashlib.sha256(blob0).hexdigest()
        write_at(g, disk, "/data/blob1.bin", WRITTEN_AFTER)
        blob1 = blobs["/data/blob1.bin"]
        assert host_sha256(image, WRITTEN_AFTER, len(blob1)) == hashlib.sha256(blob1).hexdigest()
        g.run(wait_for("[ $(cat /sys/class/net/pvnet0/carrier) = 1 ]"))
        sink.received.clear()
        transfer_both_ways(g, http, sink, download, upload)
