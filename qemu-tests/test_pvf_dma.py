"""pvfront's DMA addressing on real kernels: block and network data stay intact whichever way the
guest's DMA is set up, and the device is given the addresses it can use.

The rule (virtio 1.x section 6.1; drivers/virtio/virtio_ring.c, vring_use_dma_api()): only a
device that negotiated VIRTIO_F_ACCESS_PLATFORM (QEMU: iommu_platform=on) gets DMA API
addresses; any other device reads guest-physical addresses, vIOMMU or not. QEMU's virtio
devices without iommu_platform=on bypass the intel-iommu in front of them, so a driver that
hands them IOVAs points them at the wrong memory (the bug: modprobe never returned).

Each setup boots one guest with a pattern disk, a scratch disk and a NIC, all pvfront's:
 - viommu:                 intel-iommu, intel_iommu=on, devices at QEMU's defaults
 - viommu-platform:        the same with iommu_platform=on (the DMA API through the IOMMU)
 - viommu-passthrough:     intel_iommu=on iommu=pt (identity domains), QEMU's defaults
 - swiotlb-forced:         no vIOMMU, swiotlb=force, QEMU's defaults (no bounce buffering)
 - swiotlb-forced-platform: the same with iommu_platform=on (every buffer bounced)
A guest that hangs is stopped at the harness's command timeout and fails as a GuestHang.
The default target runs all five; every other target runs the two that take the rule's two
paths (physical addresses past a vIOMMU, the DMA API with every buffer bounced), which keeps
`invoke test --all` within CI's hour.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvf_support import (
    MIB,
    UNLOAD_ORDER,
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
    transfer_both_ways,
)
from pvfront.guest import Disk, Guest, Nic, make_disk, sha256_file
from pvfront.kerneltree import KernelTree
from pvfront.targets import load_targets

pytestmark = pytest.mark.qemu

VIRTIO_F_ACCESS_PLATFORM = 33
MAC = "52:54:00:12:34:77"


@dataclass(frozen=True)
class DmaSetup:
    """How the guest's DMA is set up: a vIOMMU or not, the devices' iommu_platform, the
    kernel's parameters, and the kernel option the setup needs."""

    viommu: bool
    iommu_platform: bool
    cmdline: tuple[str, ...]
    needs: str  # a kernel config option (=y) without which the setup means nothing
    iommu_domain: str | None = None  # the devices' IOMMU group type the guest must show


SETUPS = {
    "viommu": DmaSetup(True, False, ("intel_iommu=on",), "INTEL_IOMMU", "DMA"),
    "viommu-platform": DmaSetup(True, True, ("intel_iommu=on",), "INTEL_IOMMU", "DMA"),
    "viommu-passthrough": DmaSetup(
        True, False, ("intel_iommu=on", "iommu=pt"), "INTEL_IOMMU", "identity"
    ),
    "swiotlb-forced": DmaSetup(False, False, ("swiotlb=force",), "SWIOTLB"),
    "swiotlb-forced-platform": DmaSetup(False, True, ("swiotlb=force",), "SWIOTLB"),
}


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def config_option(tree: KernelTree, option: str) -> bool:
    return tree.built_in(f"CONFIG_{option}")


# Both paths of the rule: guest-physical addresses (the bug's setup) and DMA API mappings.
EVERY_TARGET = ("viommu", "swiotlb-forced-platform")


def skip_unless_possible(tree: KernelTree, name: str, default_target: str) -> None:
    if tree.target.id != default_target and name not in EVERY_TARGET:
        every = ", ".join(EVERY_TARGET)
        pytest.skip(f"{name} runs on the default target only; every target runs {every}")
    setup = SETUPS[name]
    if not config_option(tree, setup.needs):
        pytest.skip(f"{tree.target.id}'s kernel is built without CONFIG_{setup.needs}")


def check_the_setup_took(g: Guest, setup: DmaSetup) -> None:
    """The guest really runs the setup: an active IOMMU with the devices in groups of the
    expected type, or swiotlb set up; and ACCESS_PLATFORM negotiated exactly when offered."""
    if setup.viommu:
        assert g.run("ls /sys/class/iommu").output.split(), "no IOMMU in the guest"
        types = g.run(
            "for d in /sys/bus/pci/drivers/pvf_pci/0000:*; do cat $d/iommu_group/type; done"
        ).output.split()
        assert len(types) == 3, types
        # DMA or DMA-FQ (lazy flushing, Debian's default) for translated domains
        assert all(t.split("-")[0] == setup.iommu_domain for t in types), types
    else:
        assert "software IO TLB" in g.run("dmesg").output
    features = g.run("cat /sys/bus/pvf_virtio/devices/pvf*/features").output.split()
    assert len(features) == 3, features
    for value in features:
        negotiated = bool(int(value, 16) >> VIRTIO_F_ACCESS_PLATFORM & 1)
        assert negotiated == setup.iommu_platform, features


@pytest.mark.parametrize("name", SETUPS)
def test_block_and_network_data_stay_intact(
    name, ws, target_tree, pvf_modules, guest_factory, disk_dir
):
    skip_unless_possible(target_tree, name, load_targets(ws.targets_file).default_id)
    setup = SETUPS[name]
    pattern = make_disk(disk_dir, 16, pattern_seed=61)
    scratch = make_disk(disk_dir, 8, name="scratch.img")
    payload = disk_dir / "payload.bin"
    payload.write_bytes(random.Random(62).randbytes(3 * MIB + 2560))
    download = random.Random(63).randbytes(2 * MIB + 77)
    upload = disk_dir / "upload.bin"
    upload.write_bytes(random.Random(64).randbytes(1 * MIB + 99))
    platform = setup.iommu_platform
    at = 1 * MIB + 1536  # a multiple of 512, not of 4096
    with (
        HostServer({"download.bin": download}) as http,
        TcpSink() as sink,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            load_modules=False,
            label=f"dma-{name}",
            viommu=setup.viommu,
            cmdline=setup.cmdline,
            memory_mib=384,  # swiotlb=force takes 64 MiB of it
            disks=[
                Disk(pattern, serial="pattern", iommu_platform=platform),
                Disk(scratch, serial="scratch", iommu_platform=platform),
            ],
            nics=[Nic(mac=MAC, iommu_platform=platform)],
            files={"/data/payload.bin": payload, "/data/upload.bin": upload},
        ) as g,
    ):
        # Loading probes every device and reads the disks' partition tables: a device given
        # addresses it cannot use hangs here (GuestHang at the command timeout).
        g.load_modules()
        check_the_setup_took(g, setup)

        src, dst = disk_by_serial(g, "pattern"), disk_by_serial(g, "scratch")
        direct = direct_io(g, src)
        for offset, length, block in ((0, 2 * MIB, 2 * MIB), (3584, MIB, 4096)):
            drop_caches(g, src)
            assert read_sha256(g, src, offset, length, direct=direct, block=block) == host_sha256(
                pattern, offset, length
            ), (offset, length, block)
        drop_caches(g, src)
        assert g.run(f"sha256sum /dev/{src}", timeout=60).output.split()[0] == sha256_file(pattern)

        oflag = "oflag=seek_bytes,direct" if direct else "oflag=seek_bytes"
        g.run(
            f"dd if=/data/payload.bin of=/dev/{dst} bs=512k seek={at} {oflag} conv=fsync "
            "2>/dev/null",
            timeout=60,
        )
        drop_caches(g, dst)
        assert read_sha256(g, dst, at, payload.stat().st_size, direct=direct) == sha256_file(
            payload
        )

        bring_up(g)
        transfer_both_ways(g, http, sink, download, upload)

        # Teardown frees rings and unmaps what is still queued (RX buffers), the same way.
        g.run("ip link set pvnet0 down")
        g.run("rmmod " + " ".join(UNLOAD_ORDER))
    assert host_sha256(scratch, at, payload.stat().st_size) == sha256_file(payload)
    assert host_sha256(scratch, 0, at) == hashlib.sha256(bytes(at)).hexdigest()  # untouched
