"""The host tools pvfront drives, and installing the missing ones with apt."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pvfront import architectures
from pvfront.errors import SetupError


@dataclass(frozen=True)
class HostTool:
    """A program (or file) pvfront needs and the Debian package that provides it."""

    package: str
    probe: str  # a command on PATH, or an absolute path
    why: str  # what pvfront uses it for: told to whoever is asked to install it

    def describe(self) -> str:
        return f"{self.probe} ({self.package}): {self.why}"

    def present(self) -> bool:
        if self.probe.startswith("/"):
            return Path(self.probe).exists()
        return shutil.which(self.probe) is not None


def tools() -> tuple[HostTool, ...]:
    """Every host tool, for this host's architecture and every architecture pvfront boots."""
    libs = f"/usr/lib/{architectures.host().multiarch_triplet}"
    emulators = tuple(
        HostTool(arch.qemu_package, arch.qemu_binary, f"boots {arch.debian_arch} guests")
        for arch in architectures.ARCHITECTURES
    )
    return (
        *emulators,
        HostTool("busybox-static", "/bin/busybox", "the guest shell"),
        HostTool("dwarves", "pahole", "BTF for modules built against 6.12 headers"),
        HostTool("kmod", "depmod", "modules.dep in guests and packages"),
        HostTool("mmdebstrap", "mmdebstrap", "makes each suite's build root"),
        HostTool(
            "arch-test", "arch-test", "lets mmdebstrap check that another architecture's roots run"
        ),
        HostTool("gcc-12", "gcc-12", "the DKMS test's build on the host"),
        HostTool("make", "make", "drives Kbuild for the DKMS test"),
        HostTool("cpio", "cpio", "reads initramfs archives back"),
        HostTool("libelf1", f"{libs}/libelf.so.1", "the kbuild tools link to it"),
        HostTool("libssl3", f"{libs}/libcrypto.so.3", "kbuild's sign-file"),
        HostTool("xz-utils", "xz", "6.12's compressed in-tree modules"),
        HostTool("zstd", "zstd", "zstd-compressed modules"),
        HostTool("lz4", "lz4", "unpacks the lz4-compressed cloud kernel for a fast boot"),
        HostTool("file", "file", "identifies module architectures in tests"),
        HostTool("dkms", "dkms", "builds the DKMS source package (and proves it in tests)"),
        HostTool("openssl", "openssl", "makes module-signing keys in tests"),
        HostTool("gpg", "gpg", "signs the apt repository (and makes its key in tests)"),
        HostTool("fio", "fio", "the block benchmark's load generator"),
        HostTool("iperf3", "iperf3", "the network benchmark's peer and, copied in, its guest side"),
        HostTool("ethtool", "ethtool", "turns the bench TAP's segmentation offloads off"),
        HostTool("qemu-utils", "qemu-img", "the throw-away overlays real-guest tests boot"),
        HostTool("fdisk", "sfdisk", "partitions guest images"),
        HostTool("e2fsprogs", "mke2fs", "makes a guest image's root filesystem from a directory"),
        HostTool(
            "lava-dispatcher", "lava-run", "runs the exported LAVA jobs as a LAVA worker does"
        ),
    )


def missing_tools() -> list[HostTool]:
    return [tool for tool in tools() if not tool.present()]


def _listed(tools: list[HostTool]) -> str:
    """One indented line per tool, for the end of a message."""
    return "".join(f"\n  {tool.describe()}" for tool in tools)


def apt_install_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_host_tools(*, install: bool = True) -> list[str]:
    """Install what is missing when root; otherwise name the one command that would.

    Returns the packages installed.
    """
    missing = missing_tools()
    if not missing:
        return []
    packages = sorted({tool.package for tool in missing})
    command = apt_install_command(packages)
    if not install or os.geteuid() != 0:
        raise SetupError(f"missing host tools; run: sudo {' '.join(command)}{_listed(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "update"], command):
        proc = subprocess.run(step, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SetupError(f"{' '.join(step)} failed: {last}")
    still = missing_tools()
    if still:
        raise SetupError(f"still missing after apt-get install:{_listed(still)}")
    return packages
