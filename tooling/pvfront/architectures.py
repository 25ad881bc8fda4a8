"""The CPU architectures pvfront has targets for, and everything that depends on one.

A target names its Debian architecture (`arch` in targets.toml); what follows from it — the
kernel's ARCH= for Kbuild and the option its .config sets, the ELF machine of its kernel and
modules, what the module loader does differently there, the QEMU that boots it with its
machines, CPU and serial lines, the boot loader of its disk images, and where its libraries
live on a Debian system — is a field of that architecture here, and nowhere else. Adding an
architecture is adding one entry to ARCHITECTURES (and targets in targets.toml).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from pvfront.errors import SetupError, UsageError


@dataclass(frozen=True)
class QemuMachine:
    """A QEMU machine type, and what the command line must know of its buses."""

    name: str
    # The root bus is PCI Express (pcie.0), whose slots cannot hot-unplug: a device QMP is to
    # remove needs a root port of its own.
    pcie_root: bool
    # An AHCI controller on board (q35's ICH9), its ports the buses ide.0, ide.1, ...
    builtin_ahci: bool
    # The PIIX IDE controller (pc's), buses ide.0 and ide.1 with two units each.
    legacy_ide: bool
    # The device holding the ACPI power-management registers, whose disable_s3 property
    # QEMU sets by default: q35's ICH9-LPC, pc's PIIX4_PM.
    acpi_pm_device: str


Q35 = QemuMachine(
    "q35", pcie_root=True, builtin_ahci=True, legacy_ide=False, acpi_pm_device="ICH9-LPC"
)
PC = QemuMachine(
    "pc", pcie_root=False, builtin_ahci=False, legacy_ide=True, acpi_pm_device="PIIX4_PM"
)


@dataclass(frozen=True)
class Architecture:
    """One architecture's facts; `for_debian_arch` finds it by the name targets.toml uses."""

    debian_arch: str  # Debian's name: targets.toml's `arch`, the architecture of its packages
    kbuild_arch: str  # the kernel's ARCH= for Kbuild
    kconfig_symbol: str  # the option set (=y) in this architecture's kernel .config, and no other
    elf_machine: int  # e_machine of its kernel and modules
    elf_machine_name: str  # how messages name that machine
    multiarch_triplet: str  # Debian's multiarch tuple: its libraries are in /usr/lib/<triplet>
    qemu_binary: str  # the QEMU system emulator that boots it
    qemu_package: str  # the Debian package that provides qemu_binary
    machines: tuple[QemuMachine, ...]  # the QEMU machines it may boot on; the first by default
    tcg_cpu: str  # the -cpu QEMU emulates without KVM (with KVM: the host's)
    # The kernel's names for the first two serial lines (QEMU's first two -serial options):
    # the kernel console, and the line the harness's shell reads.
    console_tty: str
    shell_tty: str
    # QEMU boots the bare vmlinux through its PVH entry point when the kernel has CONFIG_PVH,
    # skipping the bzImage decompression (measured on 64-bit kernels only).
    boots_bare_vmlinux: bool
    grub_package: str  # the GRUB a disk image boots through
    grub_target: str  # grub-install --target= for that GRUB
    # MODULE_ARCH_VERMAGIC (arch/<arch>/include/asm/vermagic.h), the last part of every
    # module's vermagic: (Kconfig option, text) in the header's order, the first option set
    # in the .config wins; empty when the architecture adds nothing.
    vermagic_by_option: tuple[tuple[str, str], ...] = ()
    # Undefined symbols the module loader lets stay unresolved (ignore_undef_symbol() in
    # kernel/module/main.c, kernel/module.c before 5.19).
    loader_ignores: frozenset[str] = frozenset()

    @property
    def default_machine(self) -> QemuMachine:
        return self.machines[0]

    def machine(self, name: str) -> QemuMachine:
        """The QEMU machine of that name this architecture boots on."""
        for machine in self.machines:
            if machine.name == name:
                return machine
        known = ", ".join(m.name for m in self.machines)
        raise UsageError(f"{self.debian_arch} has no QEMU machine '{name}' (known: {known})")

    def module_vermagic(self, config: Mapping[str, str]) -> str | None:
        """MODULE_ARCH_VERMAGIC for a .config of this architecture; None if it names none."""
        if not self.vermagic_by_option:
            return ""
        return next(
            (
                text
                for option, text in self.vermagic_by_option
                if config.get(f"CONFIG_{option}") == "y"
            ),
            None,
        )


# The GOT symbol GNU as before 2.37 leaves in x86 objects with PLT calls, never referenced.
_X86_LOADER_IGNORES = frozenset({"_GLOBAL_OFFSET_TABLE_"})

AMD64 = Architecture(
    debian_arch="amd64",
    kbuild_arch="x86_64",
    kconfig_symbol="X86_64",
    elf_machine=62,  # EM_X86_64
    elf_machine_name="x86-64",
    multiarch_triplet="x86_64-linux-gnu",
    qemu_binary="qemu-system-x86_64",
    qemu_package="qemu-system-x86",
    machines=(Q35, PC),
    tcg_cpu="max",
    console_tty="ttyS0",
    shell_tty="ttyS1",
    boots_bare_vmlinux=True,
    grub_package="grub-pc",
    grub_target="i386-pc",
    loader_ignores=_X86_LOADER_IGNORES,
)

I386 = Architecture(
    debian_arch="i386",
    kbuild_arch="i386",
    kconfig_symbol="X86_32",
    elf_machine=3,  # EM_386
    elf_machine_name="Intel 80386",
    multiarch_triplet="i386-linux-gnu",
    qemu_binary="qemu-system-i386",
    qemu_package="qemu-system-x86",
    machines=(PC, Q35),
    # TCG's "max" CPU says it is an AMD of family 6, which a 32-bit kernel takes for an Athlon
    # (K7) and, with a second CPU, warns that "this combination of AMD processors is not
    # suitable for SMP" (amd_k7_smp_check() in arch/x86/kernel/cpu/amd.c); the same features
    # under Intel's name boot quietly.
    tcg_cpu="max,vendor=GenuineIntel",
    console_tty="ttyS0",
    shell_tty="ttyS1",
    boots_bare_vmlinux=False,
    grub_package="grub-pc",
    grub_target="i386-pc",
    # The CPU family a 32-bit x86 kernel is built for (MODULE_PROC_FAMILY).
    vermagic_by_option=(
        ("M486SX", "486SX "),
        ("M486", "486 "),
        ("M586", "586 "),
        ("M586TSC", "586TSC "),
        ("M586MMX", "586MMX "),
        ("MCORE2", "CORE2 "),
        ("MATOM", "ATOM "),
        ("M686", "686 "),
        ("MPENTIUMII", "PENTIUMII "),
        ("MPENTIUMIII", "PENTIUMIII "),
        ("MPENTIUMM", "PENTIUMM "),
        ("MPENTIUM4", "PENTIUM4 "),
        ("MK6", "K6 "),
        ("MK7", "K7 "),
        ("MK8", "K8 "),
        ("MELAN", "ELAN "),
        ("MCRUSOE", "CRUSOE "),
        ("MEFFICEON", "EFFICEON "),
        ("MWINCHIPC6", "WINCHIPC6 "),
        ("MWINCHIP3D", "WINCHIP3D "),
        ("MCYRIXIII", "CYRIXIII "),
        ("MVIAC3_2", "VIAC3-2 "),
        ("MVIAC7", "VIAC7 "),
        ("MGEODEGX1", "GEODEGX1 "),
        ("MGEODE_LX", "GEODE "),
    ),
    loader_ignores=_X86_LOADER_IGNORES,
)

ARCHITECTURES = (AMD64, I386)

# ELF machines pvfront has no architecture for, named when a module for one turns up.
_OTHER_MACHINE_NAMES = {
    2: "SPARC",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    22: "S/390",
    40: "ARM",
    43: "SPARC v9",
    183: "AArch64",
    243: "RISC-V",
    258: "LoongArch",
}


def for_debian_arch(name: str) -> Architecture:
    """The architecture Debian calls name; any other name is one UsageError."""
    for arch in ARCHITECTURES:
        if arch.debian_arch == name:
            return arch
    supported = ", ".join(a.debian_arch for a in ARCHITECTURES)
    raise UsageError(f"unknown architecture '{name}' (pvfront supports {supported})")


def for_elf_machine(machine: int) -> Architecture | None:
    return next((a for a in ARCHITECTURES if a.elf_machine == machine), None)


def for_kernel_config(config: Mapping[str, str]) -> Architecture | None:
    """The architecture a kernel .config (CONFIG_X -> value) is for, if it is one of ours."""
    return next((a for a in ARCHITECTURES if config.get(f"CONFIG_{a.kconfig_symbol}") == "y"), None)


def machine_name(machine: int) -> str:
    """An ELF machine's name for messages: "x86-64", "AArch64", "machine 9999"."""
    arch = for_elf_machine(machine)
    if arch is not None:
        return arch.elf_machine_name
    return _OTHER_MACHINE_NAMES.get(machine, f"machine {machine}")


def supported_machine_names() -> str:
    return ", ".join(a.elf_machine_name for a in ARCHITECTURES)


@functools.cache
def host() -> Architecture:
    """This machine's own architecture: the one whose binaries (kbuild tools, libraries) run
    here natively, as dpkg knows it."""
    try:
        proc = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise SetupError(f"cannot tell this host's architecture: dpkg: {exc.strerror}") from None
    name = proc.stdout.strip()
    if proc.returncode != 0 or not name:
        raise SetupError(
            f"cannot tell this host's architecture: dpkg --print-architecture failed: "
            f"{proc.stderr.strip() or 'no output'}"
        )
    try:
        return for_debian_arch(name)
    except UsageError as exc:
        raise SetupError(f"this host: {exc}") from None
