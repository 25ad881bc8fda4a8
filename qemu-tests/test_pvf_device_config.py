"""What a device says about itself is checked before pvfront relies on it, as the in-tree drivers
check it, and a device that lays its registers out unusually but legally still works.

- A block size the block layer cannot take (not a power of two in [512, PAGE_SIZE]) fails the
  disk's probe (drivers/block/virtio_blk.c): served with another block size, every write would
  land somewhere else. The other disks are not affected.
- An MTU below Ethernet's 68 makes pvf_net leave VIRTIO_NET_F_MTU out of the negotiation
  (virtnet_validate() in drivers/net/virtio_net.c): the interface gets the usual 1500 and works.
- With QEMU's page-per-vq=on the notify region is a page per queue, 4 MiB: pvfront maps each
  queue's notify address on its own, as the in-tree virtio_pci_modern_dev.c does, instead of the
  whole region at probe.

QEMU cannot present a zero max_write_zeroes_sectors (it refuses the property) or a malformed PCI
capability; kmod/README.md says how pvfront treats those.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvf_support import (
    HOST_FROM_GUEST,
    UNLOAD_ORDER,
    bring_up,
    device_attribute,
    device_of,
    disk_by_serial,
    drop_caches,
    modules_for,
    pvf_guest,
)
from pvfront.guest import Disk, Nic, make_disk, sha256_file

pytestmark = pytest.mark.qemu

VIRTIO_NET_F_MTU = 3


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def test_bad_config_values_disable_what_they_describe_and_large_notify_regions_work(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    good = make_disk(disk_dir, 8, pattern_seed=31)
    oversized_blocks = make_disk(disk_dir, 8, pattern_seed=32)
    with pvf_guest(
        guest_factory,
        target_tree,
        pvf_modules,
        disks=[
            Disk(good, serial="pvf-good", page_per_vq=True),
            Disk(oversized_blocks, serial="pvf-8k", block_size=8192),
        ],
        nics=[Nic(mtu=60, page_per_vq=True)],
    ) as guest:
        disk = disk_by_serial(guest, "pvf-good")
        assert guest.run("cat /sys/block/pvd*/serial").output.split() == ["pvf-good"]
        assert [line for line in guest.kernel_lines if "invalid block size 8192" in line]
        drop_caches(guest, disk)
        whole = guest.run(f"dd if=/dev/{disk} bs=1M 2>/dev/null | sha256sum", timeout=60)
        assert whole.output.split()[0] == sha256_file(good)

        features = int(device_attribute(guest, device_of(guest, "pvf_net"), "features"), 16)
        assert not features & (1 << VIRTIO_NET_F_MTU), hex(features)
        assert guest.run("cat /sys/class/net/pvnet0/mtu").output.strip() == "1500"
        bring_up(guest)
        guest.run(f"ping -c 2 -W 2 {HOST_FROM_GUEST}")
        guest.run("(for m in " + " ".join(UNLOAD_ORDER) + "; do rmmod $m || exit 1; done)")
