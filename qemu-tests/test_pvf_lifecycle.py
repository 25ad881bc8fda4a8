"""The module family comes and goes cleanly: unloaded with its devices in use (the NIC driver in
the middle of a download) and reloaded, three times, without kernel trouble or leaked memory.

Any oops, warning or lockup the kernel prints fails the test by itself (the harness watches the
console); the assertions here are about what the guest still does afterwards.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvf_support import (
    MIB,
    MODULE_ORDER,
    UNLOAD_ORDER,
    HostServer,
    bring_up,
    disk_by_serial,
    drop_caches,
    kmemleak_forget_until_now,
    kmemleak_report,
    meminfo,
    modules_for,
    per_cpu_free_kib,
    pvf_guest,
    wait_for,
)
from pvfront.guest import Disk, Nic, make_disk, sha256_file

pytestmark = pytest.mark.qemu

CYCLES = 3
# What one load of the family allocates with a disk and a NIC: 256 RX buffers of a full frame
# each (at least 512 KiB), blk-mq tags and 128 requests, two 256-entry rings (a few pages
# each), the gendisk, the netdev, ~150 KiB of module text. Measured on these kernels with the
# page cache dropped before each reading, MemAvailable plus the pages on the per-CPU free
# lists (which MemAvailable leaves out, and which alone swing by up to 2 MiB) moves by under
# 100 KiB between the first and the last cycle, Slab by under 50 KiB (kernfs and other
# caches warming up). The tolerances are well above that noise and below what leaking one of
# the big per-load allocations over two cycles would cost (2 x 512 KiB of RX buffers).
AVAILABLE_NOISE_KIB = 256
SLAB_NOISE_KIB = 128


@dataclass(frozen=True)
class FreeMemory:
    available: int  # KiB: MemAvailable plus the per-CPU free lists
    slab: int  # KiB


def free_memory(g) -> FreeMemory:
    # Objects freed into per-CPU slabs (and 6.18's per-CPU sheaves) stay counted as Slab
    # until the cache is shrunk; without this a kernel that caches more looks like a leak.
    g.run("for f in /sys/kernel/slab/*/shrink; do echo 1 > $f; done 2>/dev/null; true", timeout=60)
    info = meminfo(g)
    return FreeMemory(info["MemAvailable"] + per_cpu_free_kib(g), info["Slab"])


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def use_both_devices(g, pattern: Path, http: HostServer, name: str, content: bytes) -> None:
    """The disk reads back its pattern and the NIC downloads a file intact."""
    disk = disk_by_serial(g, "pattern")
    drop_caches(g, disk)
    assert g.run(f"sha256sum /dev/{disk}").output.split()[0] == sha256_file(pattern)
    bring_up(g)
    g.run(f"wget -q -O /tmp/{name} {http.url(name)}", timeout=60)
    assert (
        g.run(f"sha256sum /tmp/{name}; rm /tmp/{name}").output.split()[0]
        == hashlib.sha256(content).hexdigest()
    )


def loaded(g) -> list[str]:
    names = g.run("cut -d' ' -f1 /proc/modules").output.split()
    return [n for n in MODULE_ORDER if n in names]


def test_unload_under_traffic_and_reload_three_times_leaves_no_trouble_and_no_leak(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    pattern = make_disk(disk_dir, 8, pattern_seed=51)
    small = random.Random(52).randbytes(256 * 1024)
    big = random.Random(53).randbytes(8 * MIB)
    with (
        HostServer({"small.bin": small, "big.bin": big}) as http,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic()],
            disks=[Disk(pattern, serial="pattern")],
        ) as g,
    ):
        readings = []
        for cycle in range(1, CYCLES + 1):
            assert loaded(g) == list(MODULE_ORDER), f"cycle {cycle}"
            # Both devices work, so the unload has rings, tags and buffers to tear down.
            use_both_devices(g, pattern, http, "small.bin", small)

            # The NIC driver goes first, while a download is flowing into it.
            g.run(
                f"(while wget -q -O /dev/null {http.url('big.bin')}; do :; done) "
                ">/dev/null 2>&1 & echo $! > /tmp/loop.pid"
            )
            rx = "cat /sys/class/net/pvnet0/statistics/rx_bytes"
            g.run(wait_for(f"[ $({rx}) -gt {len(small) + MIB} ]", tenths=300), timeout=60)
            for name in UNLOAD_ORDER:
                g.run(f"rmmod {name}")
            g.run("kill $(cat /tmp/loop.pid); killall wget; wait; true")
            assert loaded(g) == []
            left = g.run("ls /sys/block /sys/class/net").output.split()
            assert [n for n in left if n.startswith(("pvd", "pvnet"))] == []
            drop_caches(g)
            readings.append(free_memory(g))
            g.load_modules()

        first, last = readings[0], readings[-1]
        assert first.available - last.available <= AVAILABLE_NOISE_KIB, readings
        assert last.slab - first.slab <= SLAB_NOISE_KIB, readings
        # And the last load works like the first.
        disk = disk_by_serial(g, "pattern")
        drop_caches(g, disk)
        assert g.run(f"sha256sum /dev/{disk}").output.split()[0] == sha256_file(pattern)
        bring_up(g)
        g.run(f"wget -q -O /tmp/big.bin {http.url('big.bin')}", timeout=120)
        assert g.run("sha256sum /tmp/big.bin").output.split()[0] == hashlib.sha256(big).hexdigest()


DMA_API_ERRORS = "/sys/kernel/debug/dma-api/error_count"


def test_kmemleak_and_the_dma_api_checker_find_nothing_after_load_use_unload_cycles(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    """On a kernel with kmemleak (the debug target), what the family allocates from load to
    unload, with I/O on both devices in between, is all freed: a scan finds no unreferenced
    object, and the DMA-API checker counted no error (it prints only its first one)."""
    if not target_tree.built_in("CONFIG_DEBUG_KMEMLEAK"):
        pytest.skip(f"{target_tree.release} has no CONFIG_DEBUG_KMEMLEAK")
    pattern = make_disk(disk_dir, 8, pattern_seed=54)
    payload = random.Random(55).randbytes(2 * MIB)
    with (
        HostServer({"payload.bin": payload}) as http,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic()],
            disks=[Disk(pattern, serial="pattern")],
            load_modules=False,
        ) as g,
    ):
        kmemleak_forget_until_now(g)  # what boot left unreferenced is not ours
        for cycle in range(1, CYCLES):
            g.load_modules()
            assert loaded(g) == list(MODULE_ORDER), f"cycle {cycle}"
            use_both_devices(g, pattern, http, "payload.bin", payload)
            for name in UNLOAD_ORDER:
                g.run(f"rmmod {name}")
        leaks = kmemleak_report(g)
        assert leaks.strip() == "", f"kmemleak:\n{leaks}"
        assert g.run(f"cat {DMA_API_ERRORS}").output.strip() == "0"
