"""The release package, installed in a guest of its own kernel, brings the disk and NIC up.

The .deb is unpacked over the guest's root and indexed with depmod, as its maintainer script
does; then loading by device alias (what udev does) finds the transport and the drivers with
no manual ordering, and the computed load-order list loads everything with plain insmod.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvfront import commands, package
from pvfront.guest import NO_BUILTIN_VIRTIO_PCI, Disk, Nic, make_disk
from pvfront.kerneltree import KernelTree
from pvfront.metadata import load_family
from pvfront.workspace import Workspace

pytestmark = [pytest.mark.qemu, pytest.mark.harness]

# Debian's 6.12 backport kernel has the in-tree virtio_pci built in; keep it off our devices.


@pytest.fixture(scope="session")
def installed_root(ws: Workspace, target_tree: KernelTree, tmp_path_factory) -> Path:
    """The target's package, unpacked: what dpkg would put on the disk."""
    [built] = commands.build(ws, target_tree.target.id)
    assert built.ok, built.summary()
    work = tmp_path_factory.mktemp("package")
    result = package.package_target(
        ws,
        target_tree,
        load_family(ws.kmod_dir / "modules.toml"),
        built.modules,
        work,
        work / "out",
    )
    assert result.deb is not None and result.staged is not None, result.refused
    root = work / "root"
    subprocess.run(["dpkg-deb", "-x", str(result.deb), str(root)], check=True)
    if target_tree.merged_usr:
        # The package ships the modules under /usr/lib, which is /lib on the Debian system
        # it is for; the busybox guest's /lib is a directory of its own.
        (root / "lib").mkdir()
        (root / "usr" / "lib" / "modules").rename(root / "lib" / "modules")
    (root / "load-order").write_text("\n".join(result.staged.load_order()) + "\n")
    return root


def test_alias_loading_and_the_load_order_list_bring_up_disk_and_nic(
    target_tree: KernelTree, installed_root: Path, guest_factory, disk_dir
):
    files = {
        f"/pkg/{p.relative_to(installed_root)}": p for p in installed_root.rglob("*") if p.is_file()
    }
    disk = make_disk(disk_dir, 8, pattern_seed=11)
    with guest_factory(
        target_tree, files=files, disks=[Disk(disk)], nics=[Nic()], cmdline=[NO_BUILTIN_VIRTIO_PCI]
    ) as guest:
        guest.run("mv /pkg/load-order /load-order && cp -a /pkg/. / && depmod")
        # What udev does: each new device's modalias to modprobe. PCI first, then the
        # pvf_virtio devices the transport registers.
        # Most PCI functions have no module to load: those modprobes fail quietly.
        guest.run(
            "for a in $(cat /sys/bus/pci/devices/*/modalias); do modprobe -q $a; done; "
            "for a in /sys/bus/pvf_virtio/devices/*/modalias; do modprobe $(cat $a); done"
        )
        loaded = guest.run("cut -d' ' -f1 /proc/modules").output.split()
        assert set(loaded) >= {"pvf_ring", "pvf_virtio", "pvf_pci", "pvf_blk", "pvf_net"}
        assert guest.run("cat /sys/block/pvda/size").output.strip() == str(8 * 2048)
        assert guest.run("cat /sys/class/net/pvnet0/address").output.strip()
        # The computed list, reversed for unloading and in order for plain insmod.
        order = guest.run("cat /load-order").output.split()
        guest.run("for m in " + " ".join(reversed(order)) + "; do rmmod $m; done")
        release = target_tree.release
        guest.run(
            f"(for m in $(cat /load-order); do "
            f"insmod /lib/modules/{release}/updates/pvfront/$m.ko || exit 1; done)"
        )
        assert guest.run("cat /sys/block/pvda/size").output.strip() == str(8 * 2048)
        assert guest.run("ls /sys/class/net").output.split().count("pvnet0") == 1
