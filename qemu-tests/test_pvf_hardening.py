"""pvf_ring against a buggy or hostile device: a used element that names no buffer in flight
breaks the queue and fails the requests, logged once, never a crash, and rebinding the driver
recovers the device. A used length beyond the buffer is not worth a broken queue (the in-tree
ring once made it fatal and reverted that): the block driver ignores the length and goes on,
the network driver drops that one packet and counts it.

The corruption is injected by pvf_ring's inject_bad_used, a parameter of the test build only
(kmod/README.md), which makes the next used element look bad in one of three ways. The harness
fails the test on any oops, warning or lockup by itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvf_support import (
    UNLOAD_ORDER,
    bring_up,
    device_attribute,
    device_of,
    disk_by_serial,
    drop_caches,
    modules_for,
    pvf_guest,
    wait_for,
)
from pvfront.guest import Disk, Nic, make_disk, sha256_file

pytestmark = pytest.mark.qemu

# 1: used id out of range, 2: id not in flight
BAD_IDS = (1, 2)
BAD_LENGTH = 3  # the next used length of a device-writable buffer is one beyond it
INJECT = "/sys/module/pvf_ring/parameters/inject_bad_used"


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree, test_hooks=True)


def test_a_used_id_naming_no_buffer_breaks_the_queue_fails_io_and_rebinding_recovers(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    image = make_disk(disk_dir, 8, pattern_seed=21)
    with pvf_guest(
        guest_factory,
        target_tree,
        pvf_modules,
        disks=[Disk(image, serial="pvf-harden")],
        nics=[Nic()],
    ) as guest:
        disk = disk_by_serial(guest, "pvf-harden")
        blk = device_of(guest, "pvf_blk")
        for corruption in BAD_IDS:
            guest.run(f"echo {corruption} > {INJECT}")
            drop_caches(guest, disk)
            failed = guest.run(
                f"dd if=/dev/{disk} of=/dev/null bs=4096 count=64", check=False, timeout=60
            )
            assert failed.status != 0, f"corruption {corruption}: the read succeeded"
            assert device_attribute(guest, blk, "broken") == "1"
            # New I/O on the broken queue fails at once instead of waiting for the device.
            drop_caches(guest, disk)
            again = guest.run(
                f"dd if=/dev/{disk} of=/dev/null bs=4096 count=1 skip=100", check=False, timeout=20
            )
            assert again.status != 0
            guest.run(
                f"echo {blk} > /sys/bus/pvf_virtio/drivers/pvf_blk/unbind && "
                f"echo {blk} > /sys/bus/pvf_virtio/drivers/pvf_blk/bind"
            )
            disk = disk_by_serial(guest, "pvf-harden")
            drop_caches(guest, disk)
            whole = guest.run(f"dd if=/dev/{disk} bs=1M 2>/dev/null | sha256sum", timeout=60)
            assert whole.output.split()[0] == sha256_file(image), f"corruption {corruption}"
        # Logged once per break (each rebind makes a new queue): not a flood.
        reports = [line for line in guest.kernel_lines if "queue broken" in line]
        assert len(reports) == len(BAD_IDS), reports

        net = device_of(guest, "pvf_net")
        bring_up(guest)
        guest.run(f"echo 1 > {INJECT}")
        guest.run("ping -c 2 -W 1 10.0.2.2", check=False)
        guest.run(wait_for(f"[ $(cat /sys/bus/pvf_virtio/devices/{net}/broken) = 1 ]"))
        guest.run(wait_for("[ $(cat /sys/class/net/pvnet0/carrier) = 0 ]"))
        guest.run(
            f"echo {net} > /sys/bus/pvf_virtio/drivers/pvf_net/unbind && "
            f"echo {net} > /sys/bus/pvf_virtio/drivers/pvf_net/bind"
        )
        bring_up(guest)
        guest.run("ping -c 2 -W 2 10.0.2.2")
        guest.run("(for m in " + " ".join(UNLOAD_ORDER) + "; do rmmod $m || exit 1; done)")


def rx_errors(guest) -> int:
    return int(guest.run("cat /sys/class/net/pvnet0/statistics/rx_errors").output)


def test_a_used_length_beyond_the_buffer_is_ignored_by_block_and_costs_net_one_packet(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    image = make_disk(disk_dir, 8, pattern_seed=22)
    with pvf_guest(
        guest_factory,
        target_tree,
        pvf_modules,
        disks=[Disk(image, serial="pvf-length")],
        nics=[Nic()],
    ) as guest:
        disk = disk_by_serial(guest, "pvf-length")
        guest.run(f"echo {BAD_LENGTH} > {INJECT}")
        drop_caches(guest, disk)
        whole = guest.run(f"dd if=/dev/{disk} bs=1M 2>/dev/null | sha256sum", timeout=60)
        assert whole.output.split()[0] == sha256_file(image)
        assert guest.run(f"cat {INJECT}").output.strip() == "0", "no used element was corrupted"
        assert device_attribute(guest, device_of(guest, "pvf_blk"), "broken") == "0"

        bring_up(guest)
        guest.run("ping -c 1 -W 2 10.0.2.2")
        before = rx_errors(guest)
        guest.run(f"echo {BAD_LENGTH} > {INJECT}")  # the next receive buffer the device fills
        guest.run("ping -c 3 -W 2 10.0.2.2", check=False)
        assert rx_errors(guest) == before + 1
        assert device_attribute(guest, device_of(guest, "pvf_net"), "broken") == "0"
        guest.run("ping -c 2 -W 2 10.0.2.2")
        assert not [line for line in guest.kernel_lines if "queue broken" in line]
        guest.run("(for m in " + " ".join(UNLOAD_ORDER) + "; do rmmod $m || exit 1; done)")
