"""pvf_blk and pvf_pci when things go wrong, or merely differ: a device that fails I/O, a disk
pulled out during I/O, and both kinds of virtio 1.x PCI function (transitional, modern-only).

An oops, a warning, a hung task or a lockup anywhere fails these tests by itself (the harness
watches the kernel console); what is asserted is what the guest sees.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from pvf_support import (
    UNLOAD_ORDER,
    HostServer,
    bring_up,
    disk_by_serial,
    drop_caches,
    host_sha256,
    modules_for,
    pvf_guest,
    wait_for,
)
from pvfront.guest import Disk, Nic, make_disk, sha256_file

pytestmark = pytest.mark.qemu

IO_ERROR = ("Input/output error", "I/O error")


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def test_an_io_error_from_the_device_fails_the_request_and_nothing_else(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    image = make_disk(disk_dir, 4, pattern_seed=61)
    rules = disk_dir / "blkdebug.conf"
    # Any read touching sector 64 (32 KiB) and any write touching sector 256 (128 KiB) fail
    # with EIO, every time.
    rules.write_text(
        '[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "64"\n\n'
        '[inject-error]\nevent = "write_aio"\nerrno = "5"\nsector = "256"\n'
    )
    with pvf_guest(
        guest_factory,
        target_tree,
        pvf_modules,
        disks=[Disk(image, blkdebug=rules, serial="faulty")],
    ) as g:
        disk = disk_by_serial(g, "faulty")
        g.run(f"echo 0 > /sys/block/{disk}/queue/read_ahead_kb")  # reads stop where asked
        head = f"dd if=/dev/{disk} bs=4096 count=8 2>/dev/null | sha256sum"
        assert g.run(head).output.split()[0] == host_sha256(image, 0, 32 * 1024)

        failed = g.run(f"dd if=/dev/{disk} of=/dev/null bs=4096 skip=8 count=1", check=False)
        assert failed.status != 0
        assert any(e in failed.output for e in IO_ERROR), failed.output

        written = g.run(
            f"dd if=/dev/zero of=/dev/{disk} bs=4096 seek=32 count=1 conv=fsync", check=False
        )
        assert written.status != 0
        assert any(e in written.output for e in IO_ERROR), written.output

        # The error was the request's, not the device's: it is not marked broken and the
        # rest of the disk reads and writes as before.
        device = g.run(f"basename $(readlink /sys/block/{disk}/device)").output.strip()
        assert g.run(f"cat /sys/bus/pvf_virtio/devices/{device}/broken").output.strip() == "0"
        g.run(f"echo pvfront-still-here | dd of=/dev/{disk} bs=512 seek=1024 conv=sync,fsync")
        drop_caches(g, disk)
        assert g.run(head).output.split()[0] == host_sha256(image, 0, 32 * 1024)
        g.run(" && ".join(f"rmmod {m}" for m in UNLOAD_ORDER))
    assert image.read_bytes()[512 * 1024 : 512 * 1024 + 19] == b"pvfront-still-here\n"


def test_a_disk_removed_during_io_goes_away_cleanly(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    doomed = make_disk(disk_dir, 16, pattern_seed=62)
    stays = make_disk(disk_dir, 4, pattern_seed=63)
    disks = [Disk(doomed, hotplug=True, serial="doomed"), Disk(stays, serial="stays")]
    with pvf_guest(guest_factory, target_tree, pvf_modules, disks=disks, qmp=True) as g:
        gone, kept = disk_by_serial(g, "doomed"), disk_by_serial(g, "stays")
        # A reader and a writer loop on the disk, each ending at its first failure or when the
        # device node is gone (dd would create a regular file in its place). The writer uses
        # O_DIRECT, so its writes are requests in the driver's queue when the disk goes: a
        # buffered write dirtying the page cache after del_gendisk() trips 5.10's writeback
        # WARN "bdi-<dev> not registered" (fs/fs-writeback.c), in code outside any driver.
        alive = f"[ -b /dev/{gone} ]"
        g.run(
            f"(while {alive} && dd if=/dev/{gone} of=/dev/null bs=64k count=64 2>/dev/null;"
            " do :; done; echo > /tmp/reader.done) &"
        )
        g.run(
            f"(while {alive} && dd if=/dev/zero of=/dev/{gone} bs=64k count=16 seek=128 "
            "conv=notrunc oflag=direct 2>/dev/null; do :; done; echo > /tmp/writer.done) &"
        )
        reads = f"awk '{{print $1}}' /sys/block/{gone}/stat"
        g.run(wait_for(f"[ $({reads}) -gt 200 ]"))  # I/O is flowing

        g.qmp.device_del("vblk0")  # returns once QEMU has seen the guest let go of it
        g.run(wait_for(f"[ ! -e /sys/block/{gone} ]"))
        g.run(
            wait_for("[ -e /tmp/reader.done ] && [ -e /tmp/writer.done ]", tenths=300), timeout=60
        )
        g.run("wait")

        # The other disk is untouched, and the family unloads: nothing holds on to the dead one.
        drop_caches(g, kept)
        assert g.run(f"sha256sum /dev/{kept}").output.split()[0] == sha256_file(stays)
        assert g.run("ls /sys/bus/pvf_virtio/devices | wc -l").output.strip() == "1"
        g.run(" && ".join(f"rmmod {m}" for m in UNLOAD_ORDER))


def test_transitional_and_modern_only_functions_both_work(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    modern = make_disk(disk_dir, 4, pattern_seed=64)
    transitional = make_disk(disk_dir, 4, pattern_seed=65)
    small = random.Random(66).randbytes(200_000)
    disks = [
        Disk(modern, modern_only=True, serial="modern"),
        Disk(transitional, modern_only=False, serial="transitional"),
    ]
    with (
        HostServer({"small.bin": small}) as http,
        pvf_guest(
            guest_factory, target_tree, pvf_modules, disks=disks, nics=[Nic(modern_only=False)]
        ) as g,
    ):
        # Modern-only virtio-blk is PCI device 0x1042, transitional 0x1001 (net: 0x1000).
        for serial, image, pci_id in (
            ("modern", modern, "0x1042"),
            ("transitional", transitional, "0x1001"),
        ):
            disk = disk_by_serial(g, serial)
            pci = f"/sys/block/{disk}/device/.."
            assert g.run(f"cat {pci}/device").output.strip() == pci_id
            assert g.run(f"basename $(readlink {pci}/driver)").output.strip() == "pvf_pci"
            assert g.run(f"sha256sum /dev/{disk}").output.split()[0] == sha256_file(image)
            g.run(f"echo {serial}-written | dd of=/dev/{disk} bs=512 seek=8 conv=sync,fsync")
        assert g.run("cat /sys/class/net/pvnet0/device/../device").output.strip() == "0x1000"
        bring_up(g)
        g.run(f"wget -q -O /tmp/small.bin {http.url('small.bin')}", timeout=60)
        assert (
            g.run("sha256sum /tmp/small.bin").output.split()[0] == hashlib.sha256(small).hexdigest()
        )
    assert modern.read_bytes()[4096 : 4096 + 15] == b"modern-written\n"
    assert transitional.read_bytes()[4096 : 4096 + 21] == b"transitional-written\n"
