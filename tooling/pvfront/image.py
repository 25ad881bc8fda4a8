"""Bootable Debian disk images of a target's suite and kernel: the guests users really run.

An image is made without loop mounts or root filesystems of the host's:

1. `mmdebstrap` installs the target's own kernel package (`linux-image-<release>`), its
   headers, systemd, udev, kmod, initramfs-tools, dkms and GRUB from the suite's archive into
   a directory; pvfront writes the few files a headless VM needs (fstab by UUID, a DHCP
   network for every Ethernet link, the autologin shell on the second serial line, GRUB on
   the first).
2. `mke2fs -d` makes the root filesystem from that directory, `mkswap` the swap, and
   `sfdisk` writes the partition table of a raw disk that holds both.
3. The image boots once directly into its own kernel and initramfs, and Debian's
   `grub-install` and `update-grub` make it bootable the way an installer does; from then on
   the firmware boots it through GRUB, and a kernel installed in the guest is booted the way
   a user's VM would boot it.

Images are cached by content (the suite's package versions and this recipe) under
`<cache>/images/<target>/`; guests boot throw-away qcow2 overlays, never the image itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pvfront import buildroot, debversion, provision, qemu
from pvfront.architectures import Architecture
from pvfront.buildroot import Log, RootSpec
from pvfront.errors import SetupError, UsageError
from pvfront.guest import IMAGE_BOOT_TIMEOUT, Disk, Guest, ImageBoot
from pvfront.kerneltree import KernelTree
from pvfront.locks import locked
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

# What a guest holds besides its kernel and headers: a minimal Debian VM (login is not
# essential since trixie; dbus and libpam-systemd give logind sessions, as installed systems
# have; zstd and busybox are what initramfs-tools recommends; openssl, which ca-certificates
# brings to nearly every system, is what makes dkms make a key and sign), plus procps and wget
# for the tests' checks; `_includes` adds the architecture's GRUB. mount (Priority: required,
# so on every installed system) is named because sid's systemd only recommends it, and
# without it systemd mounts nothing.
GUEST_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "login",
    "mount",
    "kmod",
    "initramfs-tools",
    "zstd",
    "busybox",
    "dkms",
    "openssl",
    "iproute2",
    "e2fsprogs",
    "util-linux",
    "procps",
    "wget",
)
# Changing how an image is made changes this, and every image is made anew.
RECIPE = "1"
ROOT_MIB = 4096
SWAP_MIB = 256
_FIRST_SECTOR = 2048  # 1 MiB: where partitioning tools start, leaving room for GRUB's core
# Timers that would start apt or fsck work in the middle of a test.
_MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-networkd-wait-online.service",
)
SHELL_PROMPT = "pvfront# "


@dataclass(frozen=True)
class GuestImage:
    """A cached, bootable raw disk of one target."""

    target_id: str
    path: Path
    release: str  # the kernel it boots
    root_uuid: str
    swap_uuid: str
    packages: dict[str, str]  # what dpkg has installed in it
    size_bytes: int  # disk space the sparse image takes
    build_seconds: float

    def overlay(self, directory: Path, name: str = "guest.qcow2") -> Path:
        """A new qcow2 overlay over the image: the guest writes there, the image stays."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.unlink(missing_ok=True)
        proc = subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(self.path),
                str(path),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SetupError(f"{path}: qemu-img cannot make an overlay: {proc.stderr.strip()}")
        return path

    def to_json(self) -> dict:
        return {
            "recipe": RECIPE,
            "target": self.target_id,
            "release": self.release,
            "root_uuid": self.root_uuid,
            "swap_uuid": self.swap_uuid,
            "packages": self.packages,
            "size_bytes": self.size_bytes,
            "build_seconds": round(self.build_seconds, 1),
        }


# A Debian image under TCG, next to another guest on a 2-core host, was seen to report a
# 23 s "soft lockup" while udev decompressed modules at boot, and an RCU stall (after the
# default 21 s) in update-initramfs with four guests on the two cores: starved vCPUs, not
# kernel bugs. Thresholds of 60 s (soft lockups after 120 s) keep real lockups fatal.
_WATCHDOG_PARAMS = ("watchdog_thresh=60", "rcupdate.rcu_cpu_stall_timeout=60")


def kernel_params(arch: Architecture) -> tuple[str, ...]:
    """The harness's kernel parameters (console, panics), for GRUB's command line too."""
    return (*qemu.console_params(arch), *qemu.PANIC_PARAMS, *_WATCHDOG_PARAMS)


def _spec(ws: Workspace, tree: KernelTree) -> RootSpec:
    return buildroot.spec_for(tree.target, load_targets(ws.targets_file).targets)


def _includes(tree: KernelTree) -> list[str]:
    return [
        f"linux-image-{tree.release}",
        f"linux-headers-{tree.release}",
        *GUEST_PACKAGES,
        tree.target.architecture.grub_package,
    ]


def _archive_versions(ws: Workspace, tree: KernelTree, spec: RootSpec) -> dict[str, str]:
    """The archive's newest version of each package named in the recipe."""
    view = provision.apt_view(ws)
    versions = {}
    for name in _includes(tree):
        found = view.newest(name, spec.sources, spec.arch)
        versions[name] = found[1].version if found else ""
    return versions


def _key(ws: Workspace, tree: KernelTree, spec: RootSpec) -> str:
    text = json.dumps(
        [
            RECIPE,
            ROOT_MIB,
            SWAP_MIB,
            _MASKED_UNITS,
            spec.sources,
            buildroot.mmdebstrap_command(
                spec.suite, spec.arch, spec.sources, _includes(tree), Path("/")
            ),
            _archive_versions(ws, tree, spec),
            _guest_files(tree.target.architecture, "r", "s"),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Images of this many kernel releases are kept per target: the newest, and the one before it
# that a kernel upgrade starts from (by version: an older release's image may be newer).
_RELEASES_KEPT = 2


def _images_dir(ws: Workspace, tree: KernelTree) -> Path:
    return ws.cache / "images" / tree.target.id / tree.release


def _prune(directory: Path, key: str) -> None:
    """Drop this release's other images, and the images of all but the newest releases."""
    # <target>/<key>.raw: where images were kept before they were kept per release.
    for old in (*directory.glob("*.raw"), *directory.parent.glob("*.raw")):
        if old.stem != key:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    by_version = functools.cmp_to_key(debversion.compare)
    releases = sorted(
        (d for d in directory.parent.iterdir() if d.is_dir()),
        key=lambda d: by_version(d.name),
        reverse=True,
    )
    for stale in releases[_RELEASES_KEPT:]:
        if stale != directory:  # the image just made stays, however old its kernel
            shutil.rmtree(stale, ignore_errors=True)


def load(ws: Workspace, tree: KernelTree, key: str) -> GuestImage | None:
    record = _images_dir(ws, tree) / f"{key}.json"
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    path = record.with_suffix(".raw")
    if not path.is_file() or data.get("recipe") != RECIPE:
        return None
    return GuestImage(
        tree.target.id,
        path,
        data["release"],
        data["root_uuid"],
        data["swap_uuid"],
        data["packages"],
        data["size_bytes"],
        data["build_seconds"],
    )


def _guest_files(arch: Architecture, root_uuid: str, swap_uuid: str) -> dict[str, str]:
    """The files a headless test VM needs besides what its packages install."""
    params = " ".join(kernel_params(arch))
    return {
        "etc/hostname": "pvguest\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tpvguest\n",
        # UUIDs, not device names: they survive a change of disk driver (vda <-> pvda).
        "etc/fstab": (
            f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
            f"UUID={swap_uuid}\tnone\tswap\tsw\t0\t0\n"
        ),
        "etc/default/grub.d/pvfront-guest.cfg": (
            "# Written by pvfront's image recipe: a headless VM on serial lines.\n"
            "GRUB_TIMEOUT=0\n"
            "GRUB_TERMINAL=serial\n"
            'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
            f'GRUB_CMDLINE_LINUX="{params}"\n'
            "GRUB_DISABLE_OS_PROBER=true\n"
            "GRUB_DISABLE_RECOVERY=true\n"
        ),
        "etc/systemd/network/50-dhcp.network": ("[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\n"),
        # Root logged in on the serial lines: the harness's shell on the second, and the
        # console of an interactive boot (`pvfront boot --image`) on the first.
        "etc/systemd/system/serial-getty@.service.d/autologin.conf": (
            "[Service]\nExecStart=\n"
            "ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 - vt220\n"
        ),
        "root/.hushlogin": "",
        "root/.bash_profile": ". ~/.bashrc\n",
        "root/.bashrc": (
            "# Written by pvfront's image recipe: a plain prompt the harness waits for, no\n"
            "# pager, no colours, no line editing tricks on the serial line.\n"
            "export PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb\n"
            "stty cols 1000 -ixon 2>/dev/null\n"
            "bind 'set enable-bracketed-paste off' 2>/dev/null\n"
            f"PS1='{SHELL_PROMPT}'\n"
        ),
    }


def _write_guest_files(tree_dir: Path, arch: Architecture, root_uuid: str, swap_uuid: str) -> None:
    for relative, text in _guest_files(arch, root_uuid, swap_uuid).items():
        path = tree_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()[-1]
        raise SetupError(f"{what}: {argv[0]} failed: {reason}")


def _assemble(tree_dir: Path, work: Path, disk: Path, root_uuid: str, swap_uuid: str) -> None:
    """The raw disk: a DOS label, an ext4 root made from tree_dir, then swap."""
    sectors_per_mib = 2048
    root_img, swap_img = work / "root.ext4", work / "swap.img"
    _run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "pvroot",
            "-U",
            root_uuid,
            "-d",
            str(tree_dir),
            str(root_img),
            f"{ROOT_MIB}M",
        ],
        f"{disk}: root filesystem",
    )
    with swap_img.open("wb") as swap:
        swap.truncate(SWAP_MIB << 20)
    _run(["mkswap", "-L", "pvswap", "-U", swap_uuid, str(swap_img)], f"{disk}: swap")
    swap_start = _FIRST_SECTOR + ROOT_MIB * sectors_per_mib
    total_mib = 1 + ROOT_MIB + SWAP_MIB + 1
    with disk.open("wb") as raw:
        raw.truncate(total_mib << 20)
    layout = (
        f"label: dos\nunit: sectors\n"
        f"start={_FIRST_SECTOR}, size={ROOT_MIB * sectors_per_mib}, type=83, bootable\n"
        f"start={swap_start}, size={SWAP_MIB * sectors_per_mib}, type=82\n"
    )
    proc = subprocess.run(
        ["sfdisk", "--quiet", str(disk)], input=layout, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SetupError(f"{disk}: sfdisk failed: {proc.stderr.strip()}")
    for part, first_sector in ((root_img, _FIRST_SECTOR), (swap_img, swap_start)):
        _run(
            [
                "dd",
                f"if={part}",
                f"of={disk}",
                "bs=1M",
                f"seek={first_sector // 2048}",
                "conv=notrunc,sparse",
                "status=none",
            ],
            f"{disk}: writing {part.name}",
        )
        part.unlink()


def _installed(tree_dir: Path) -> dict[str, str]:
    proc = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={tree_dir / 'var/lib/dpkg'}",
            "-W",
            "-f=${Package}:${Architecture} ${Version}\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def _install_boot_loader(
    ws: Workspace, tree: KernelTree, disk: Path, boot_dir: Path, root_uuid: str
) -> None:
    """Boot the image once into its own kernel and let Debian's GRUB tools install GRUB."""
    boot = ImageBoot(
        boot_dir / f"vmlinuz-{tree.release}",
        boot_dir / f"initrd.img-{tree.release}",
        (*_WATCHDOG_PARAMS, f"root=UUID={root_uuid}", "ro"),
    )
    with Guest(
        ws,
        tree,
        image_boot=boot,
        disks=[Disk(disk)],
        memory_mib=1024,
        smp=2,
        boot_timeout=IMAGE_BOOT_TIMEOUT,
        command_timeout=300,
        label="image-first-boot",
    ) as guest:
        target = tree.target.architecture.grub_target
        guest.run(f"grub-install --target={target} /dev/vda && update-grub")
        guest.run(f"grep -q 'vmlinuz-{tree.release}' /boot/grub/grub.cfg")
        guest.poweroff()


def _guest_deb(ws: Workspace, spec: RootSpec, name: str, version: str | None = None) -> Path:
    """A package's .deb as the guest's apt would install it (its newest, or that version), in
    the download cache."""
    view = provision.apt_view(ws)
    found = (
        view.newest(name, spec.sources, spec.arch)
        if version is None
        else view.exact(name, version, spec.sources, spec.arch)
    )
    if found is None:
        wanted = f"{name} {version}" if version else name
        raise SetupError(f"{spec.suite}/{spec.arch}: {wanted} is not in {', '.join(spec.sources)}")
    index, package = found
    return index.download(package, ws.cache / "debs", quiet=True)


def kernel_package(ws: Workspace, tree: KernelTree) -> Path:
    """The .deb of the tree's kernel (the signed image where the suite has one): what a
    kernel upgrade brings."""
    return _guest_deb(ws, _spec(ws, tree), f"linux-image-{tree.release}")


def headers_packages(ws: Workspace, tree: KernelTree) -> list[Path]:
    """The .debs of the tree's headers (with their common part and kbuild tools): what a
    kernel upgrade brings for dkms."""
    spec = _spec(ws, tree)
    return [
        _guest_deb(ws, spec, key.partition(":")[0], version)
        for key, version in tree.packages.items()
        if key.startswith(("linux-headers-", "linux-kbuild-"))
    ]


def ensure(ws: Workspace, tree: KernelTree, log: Log = buildroot.stderr_log) -> GuestImage:
    """The cached image for the target's kernel and suite, made first if it must be."""
    if tree.target.from_source:
        raise UsageError(
            f"{tree.target.id}: its kernel is built by pvfront from {tree.target.kconfig}; "
            "an image installs its suite's kernel packages, which do not include it"
        )
    spec = _spec(ws, tree)
    key = _key(ws, tree, spec)
    directory = _images_dir(ws, tree)
    found = load(ws, tree, key)
    if found:
        return found
    with locked(directory / ".lock", f"image of {tree.target.id}", log):
        found = load(ws, tree, key)
        if found:
            return found
        return _make(ws, tree, spec, key, directory, log)


def _make(
    ws: Workspace, tree: KernelTree, spec: RootSpec, key: str, directory: Path, log: Log
) -> GuestImage:
    started = time.monotonic()
    subject = f"image of {tree.target.id}"
    work = directory / f"{key}.work"
    shutil.rmtree(work, ignore_errors=True)
    tree_dir = work / "tree"
    work.mkdir(parents=True)
    log(f"{subject}: making it with mmdebstrap ({tree.release}, systemd, GRUB; a few minutes)")
    try:
        buildroot.run_step(
            buildroot.mmdebstrap_command(
                spec.suite, spec.arch, spec.sources, _includes(tree), tree_dir
            ),
            spec,
            "mmdebstrap",
            log,
            subject,
        )
        root_uuid, swap_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        arch = tree.target.architecture
        _write_guest_files(tree_dir, arch, root_uuid, swap_uuid)
        buildroot.run_step(
            buildroot.chroot_command(
                tree_dir,
                [
                    "sh",
                    "-ec",
                    f"systemctl enable serial-getty@{arch.shell_tty}.service"
                    " systemd-networkd.service"
                    f" && systemctl mask {' '.join(_MASKED_UNITS)}",
                ],
            ),
            spec,
            "systemctl",
            log,
            subject,
        )
        packages = _installed(tree_dir)
        boot_dir = work / "boot"
        shutil.copytree(tree_dir / "boot", boot_dir)
        disk = work / "disk.raw"
        _assemble(tree_dir, work, disk, root_uuid, swap_uuid)
        shutil.rmtree(tree_dir)
        log(f"{subject}: first boot, installing GRUB")
        _install_boot_loader(ws, tree, disk, boot_dir, root_uuid)
        final = directory / f"{key}.raw"
        os.replace(disk, final)
        _prune(directory, key)
        image = GuestImage(
            tree.target.id,
            final,
            tree.release,
            root_uuid,
            swap_uuid,
            packages,
            final.stat().st_blocks * 512,
            time.monotonic() - started,
        )
        (directory / f"{key}.json").write_text(json.dumps(image.to_json(), indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(
        f"{subject}: ready in {image.build_seconds:.0f} s, "
        f"{image.size_bytes / 2**20:.0f} MiB on disk ({final})"
    )
    return image


# Printed by the first command in the login shell: the seconds since the kernel started, then
# the microseconds from then to the start of the root filesystem's systemd (initramfs-tools
# runs no systemd, so that is the hand-over from the initramfs).
_BOOT_CLOCKS = (
    "cut -d' ' -f1 /proc/uptime; systemctl show --property=UserspaceTimestampMonotonic --value"
)


@dataclass(frozen=True)
class BootPhases:
    """Where one boot of an image, from starting QEMU to its login shell's first command,
    spent its time (seconds)."""

    firmware_and_loader_s: float  # SeaBIOS, then GRUB reading the kernel and the initrd
    kernel_and_initramfs_s: float  # to the root filesystem's systemd
    userspace_s: float  # systemd to the login shell's first command

    @property
    def total_s(self) -> float:
        return self.firmware_and_loader_s + self.kernel_and_initramfs_s + self.userspace_s

    @classmethod
    def from_clocks(cls, total_s: float, clocks: str) -> BootPhases:
        """The phases of a boot that took total_s on the host's clock, from _BOOT_CLOCKS's
        output read in the guest at its end."""
        uptime, userspace_us = (float(word) for word in clocks.split())
        kernel = userspace_us / 1e6
        return cls(total_s - uptime, kernel, uptime - kernel)


def measure_boot(ws: Workspace, tree: KernelTree, runs: int) -> list[BootPhases]:
    """One boot per run (an overlay each) through the firmware and GRUB, as a user's VM boots,
    to the first command's result in the image's login shell."""
    found = ensure(ws, tree)
    timings = []
    with tempfile.TemporaryDirectory(prefix="pvf-image-boot-") as tmp:
        for run in range(runs):
            overlay = found.overlay(Path(tmp), f"boot-{run}.qcow2")
            with Guest(
                ws,
                tree,
                image_boot=ImageBoot(),
                disks=[Disk(overlay, format="qcow2")],
                nics=(),
                memory_mib=1024,
                smp=2,
                boot_timeout=IMAGE_BOOT_TIMEOUT,
                label="measure-image-boot",
            ) as guest:
                clocks = guest.run(_BOOT_CLOCKS).output
                total = time.monotonic() - guest.spawned_at
                timings.append(BootPhases.from_clocks(total, clocks))
    return timings
