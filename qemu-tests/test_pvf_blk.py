"""pvf_blk on a real kernel: what the guest reads and writes is what the host image holds.

The host writes seeded random patterns into raw images, so every read in the guest is checked
by SHA-256 against the bytes the host knows, and every guest write is looked for in the image
after QEMU is gone. Reads use O_DIRECT where the guest's dd has it (bookworm's busybox; on
bullseye the page cache is dropped before each read instead).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from pvf_support import (
    MIB,
    direct_io,
    disk_by_serial,
    drop_caches,
    host_sha256,
    interrupts,
    modules_for,
    pvf_guest,
    read_sha256,
)
from pvfront.guest import Disk, GuestStopped, make_disk, sha256_file

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def random_file(directory: Path, name: str, size: int, seed: int) -> Path:
    path = directory / name
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


# Reads of the 16 MiB pattern disk: (offset, length, bytes per read() call). The 2 MiB single
# reads are bigger than one request may be (1 MiB, and at most seg_max segments), so the block
# layer splits them; offsets that are multiples of 512 but not of 4096 give requests whose
# segments start inside a page.
PATTERN_READS = [
    (0, 2 * MIB, 2 * MIB),
    (3584, 2 * MIB, 2 * MIB),
    (5 * MIB + 1536, 64 * 1024 + 1536, 64 * 1024 + 1536),
    (9 * MIB, 1 * MIB, 4096),
    (16 * MIB - 512, 512, 512),
]


def test_reads_match_the_host_pattern_at_any_offset_size_and_queue(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    pattern = make_disk(disk_dir, 16, pattern_seed=11)
    # smp=2: QEMU gives virtio-blk-pci one queue per vCPU (num-queues defaults to -smp).
    with pvf_guest(
        guest_factory, target_tree, pvf_modules, smp=2, disks=[Disk(pattern, serial="pattern")]
    ) as g:
        disk = disk_by_serial(g, "pattern")
        assert g.run(f"cat /sys/block/{disk}/size").output.strip() == str(16 * MIB // 512)
        assert g.run(f"blockdev --getsize64 /dev/{disk}").output.strip() == str(16 * MIB)
        direct = direct_io(g, disk)
        for offset, length, block in PATTERN_READS:
            drop_caches(g, disk)
            assert read_sha256(g, disk, offset, length, direct=direct, block=block) == host_sha256(
                pattern, offset, length
            ), (offset, length, block)
        drop_caches(g, disk)
        assert g.run(f"sha256sum /dev/{disk}", timeout=60).output.split()[0] == sha256_file(pattern)

        # Multi-queue: one hardware queue per CPU, each with its own interrupt, and I/O issued
        # from either CPU completes on that CPU's queue.
        assert g.run(f"ls /sys/block/{disk}/mq").output.split() == ["0", "1"]
        before = interrupts(g, r"pvf[0-9]+-req\.[0-9]+$")
        assert sorted(name.rsplit("-", 1)[1] for name in before) == ["req.0", "req.1"]
        flag = "iflag=direct" if direct else ""
        for cpu in (0, 1):
            drop_caches(g, disk)
            g.run(f"taskset {1 << cpu} dd if=/dev/{disk} of=/dev/null bs=64k count=64 {flag}")
        after = interrupts(g, r"pvf[0-9]+-req\.[0-9]+$")
        assert all(after[name] > before[name] for name in before), (before, after)

        # Both queues at once: four readers on each CPU, every byte still right.
        readers = " ".join(
            f"(taskset {1 << (n % 2)} dd if=/dev/{disk} bs=128k skip={n * 16} count=16 {flag} "
            f"2>/dev/null | sha256sum > /tmp/r{n}) &"
            for n in range(8)
        )
        drop_caches(g, disk)
        g.run(f"{readers} wait", timeout=60)
        for n in range(8):
            assert g.run(f"cat /tmp/r{n}").output.split()[0] == host_sha256(
                pattern, n * 2 * MIB, 2 * MIB
            ), f"reader {n}"


def test_writes_land_in_the_image_even_across_a_hard_reset_and_a_read_only_disk_refuses_them(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    source = make_disk(disk_dir, 16, pattern_seed=21)
    scratch = make_disk(disk_dir, 16, name="scratch.img")
    frozen = make_disk(disk_dir, 4, pattern_seed=22)
    frozen_sha = sha256_file(frozen)
    direct_payload = random_file(disk_dir, "direct.bin", 3 * MIB + 2560, seed=23)
    synced_payload = random_file(disk_dir, "synced.bin", 1 * MIB, seed=24)
    disks = [
        Disk(source, serial="source"),
        Disk(scratch, serial="scratch"),
        Disk(frozen, readonly=True, serial="frozen"),
    ]
    at = 7 * MIB + 1536  # a multiple of 512, not of 4096
    synced_at = 12 * MIB
    with pvf_guest(
        guest_factory,
        target_tree,
        pvf_modules,
        disks=disks,
        files={"/data/direct.bin": direct_payload, "/data/synced.bin": synced_payload},
    ) as g:
        src, dst, ro = (disk_by_serial(g, s) for s in ("source", "scratch", "frozen"))
        direct = direct_io(g, src)
        oflag = "oflag=seek_bytes,direct" if direct else "oflag=seek_bytes"
        # Two disks at once: a read of one and a write to the other run concurrently.
        g.run(
            f"(dd if=/dev/{src} bs=1M {'iflag=direct' if direct else ''} 2>/dev/null "
            f"| sha256sum > /tmp/src.sha) & "
            f"dd if=/data/direct.bin of=/dev/{dst} bs=512k seek={at} {oflag} conv=fsync "
            f"2>/dev/null; status=$?; wait; [ $status = 0 ]",
            timeout=60,
        )
        assert g.run("cat /tmp/src.sha").output.split()[0] == sha256_file(source)
        drop_caches(g, dst)
        assert read_sha256(g, dst, at, direct_payload.stat().st_size, direct=direct) == sha256_file(
            direct_payload
        )

        assert g.run(f"cat /sys/block/{ro}/ro").output.strip() == "1"
        refused = g.run(
            f"dd if=/dev/zero of=/dev/{ro} bs=4096 count=1 conv=fsync 2>&1", check=False
        )
        assert refused.status != 0, refused.output
        assert g.run(f"sha256sum /dev/{ro}").output.split()[0] == frozen_sha

        # A buffered write sits in the guest's page cache until sync sends and flushes it
        # (the shell holds the disk open, or dd's close, the last one, would write it back);
        # the reset follows the moment sync returns (-no-reboot: QEMU exits). Without the
        # sync, the bytes never reach the image.
        g.run(f"exec 3< /dev/{dst}")
        with pytest.raises(GuestStopped):
            g.run(
                f"dd if=/data/synced.bin of=/dev/{dst} bs=64k seek={synced_at // 65536} "
                "2>/dev/null && sync && echo b > /proc/sysrq-trigger"
            )
    assert host_sha256(scratch, at, direct_payload.stat().st_size) == sha256_file(direct_payload)
    assert host_sha256(scratch, synced_at, MIB) == sha256_file(synced_payload)
    assert host_sha256(scratch, 0, at) == hashlib.sha256(bytes(at)).hexdigest()  # untouched
    assert sha256_file(frozen) == frozen_sha
