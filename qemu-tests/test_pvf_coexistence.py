"""pvfront next to the kernel's own virtio stack: in one guest the in-tree virtio_blk drives one
disk and pvf_blk another, each reads and writes its own image, and either stack can go without
the other noticing.

`pvf_pci.only=` keeps pvfront to the one function it is given. Where the kernel has virtio_pci
built in (Debian's 6.12 backport) it has taken every function at boot, before our modules
exist; the function is then moved over with driver_override, as kmod/README.md documents.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvf_support import (
    MODULE_ORDER,
    UNLOAD_ORDER,
    builtin_virtio_pci,
    drop_caches,
    modules_for,
    wait_for,
)
from pvfront.guest import Disk, make_disk, sha256_file

pytestmark = pytest.mark.qemu

VIRTIO_FUNCTIONS = (
    "for d in /sys/bus/pci/devices/*; do [ $(cat $d/vendor) = 0x1af4 ] && basename $d; done; true"
)


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def driver_of(g, address: str) -> str:
    return g.run(
        f"basename $(readlink /sys/bus/pci/devices/{address}/driver) 2>/dev/null || echo none"
    ).output.strip()


def test_in_tree_virtio_blk_and_pvf_blk_each_drive_their_own_disk(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    theirs = make_disk(disk_dir, 4, pattern_seed=71)
    ours = make_disk(disk_dir, 4, pattern_seed=72)
    # Our modules are in the image but not loaded at boot; the in-tree ones are modules,
    # except a built-in virtio_pci, which binds at boot.
    disks = [Disk(theirs, serial="intree"), Disk(ours, serial="pvfront")]
    with guest_factory(
        target_tree, modules=pvf_modules, disks=disks, in_tree_modules=["virtio_pci", "virtio_blk"]
    ) as g:
        # QEMU places the functions in command-line order: the first is the in-tree disk's.
        first, second = g.run(VIRTIO_FUNCTIONS).output.split()
        extra = f"/lib/modules/{target_tree.release}/extra"
        for name in MODULE_ORDER[:4]:  # no pvf_net: there is no NIC
            options = f" only={second}" if name == "pvf_pci" else ""
            g.run(f"insmod {extra}/{name}.ko{options}")
        if not builtin_virtio_pci(target_tree):
            assert (driver_of(g, first), driver_of(g, second)) == ("none", "pvf_pci")
        else:
            assert driver_of(g, second) == "virtio-pci"  # taken at boot, only= or not
            g.run(
                f"echo {second} > /sys/bus/pci/drivers/virtio-pci/unbind && "
                f"echo pvf_pci > /sys/bus/pci/devices/{second}/driver_override && "
                f"echo {second} > /sys/bus/pci/drivers_probe"
            )
        g.run("modprobe -a virtio_pci virtio_blk")
        g.run(wait_for("[ -b /dev/vda ] && [ -b /dev/pvda ]"))

        assert (driver_of(g, first), driver_of(g, second)) == ("virtio-pci", "pvf_pci")
        # (virtio_blk's serial has no newline at the end, so one cat each)
        assert g.run("cat /sys/block/vda/serial").output.strip() == "intree"
        assert g.run("cat /sys/block/pvda/serial").output.strip() == "pvfront"
        disks_seen = g.run("ls /sys/block").output.split()
        assert [d for d in disks_seen if d.startswith(("vd", "pvd"))] == ["pvda", "vda"]
        # Both at once, each its own image.
        g.run("sha256sum /dev/vda > /tmp/vda.sha & sha256sum /dev/pvda > /tmp/pvda.sha; wait")
        assert g.run("cat /tmp/vda.sha").output.split()[0] == sha256_file(theirs)
        assert g.run("cat /tmp/pvda.sha").output.split()[0] == sha256_file(ours)
        g.run("echo written-by-virtio_blk | dd of=/dev/vda bs=512 seek=16 conv=sync,fsync")
        g.run("echo written-by-pvf_blk | dd of=/dev/pvda bs=512 seek=16 conv=sync,fsync")

        # pvfront goes; the in-tree disk carries on.
        g.run(" && ".join(f"rmmod {m}" for m in UNLOAD_ORDER if m != "pvf_net"))
        assert driver_of(g, first) == "virtio-pci"
        drop_caches(g, "vda")
        assert (
            g.run("dd if=/dev/vda bs=512 skip=16 count=1 2>/dev/null | head -1").output.strip()
            == "written-by-virtio_blk"
        )
    assert theirs.read_bytes()[8192 : 8192 + 22] == b"written-by-virtio_blk\n"
    assert ours.read_bytes()[8192 : 8192 + 19] == b"written-by-pvf_blk\n"
