"""Each architecture's facts agree with the world they describe: Debian's dpkg, the ELF files of
its kernels and of this host, the kernel's own Makefile and headers, and QEMU.

Nothing here restates a fact of architectures.py: every check asks an outside authority (dpkg,
readelf, the C preprocessor on the kernel's vermagic.h, QEMU's own help) and compares. Checks
that need a provisioned kernel run on every target that is in the cache and skip the others;
checks that need a tool skip cleanly when it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.descriptions import describe_e_machine
from elftools.elf.enums import ENUM_E_MACHINE

from pvfront import architectures
from pvfront.architectures import ARCHITECTURES, Architecture
from pvfront.elf import read_module
from pvfront.errors import SetupError, UsageError
from pvfront.kerneltree import KernelTree
from pvfront.symvers import reference_module
from symcheck_support import TARGET_IDS, config, declared, tree

ARCH_IDS = [a.debian_arch for a in ARCHITECTURES]


def _readelf_header(path: Path) -> dict[str, str]:
    """`readelf -h`'s fields: {"Class": "ELF64", "Machine": "Advanced Micro Devices X86-64"}."""
    out = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True)
    return dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in out.stdout.splitlines())
        if value
    )


def _readelf_machine(arch: Architecture) -> str:
    """What readelf calls the architecture's ELF machine (binutils' names, via pyelftools)."""
    [name] = [n for n, number in ENUM_E_MACHINE.items() if number == arch.elf_machine]
    return describe_e_machine(name)


def _needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"needs {tool} (invoke setup)")
    return path


# ------------------------------------------------------------------ finding an architecture


def test_every_declared_target_names_an_architecture_pvfront_has():
    for target in declared().targets:
        assert architectures.for_debian_arch(target.arch) is target.architecture


def test_an_unknown_architecture_is_one_line_naming_it_and_the_supported_ones():
    with pytest.raises(UsageError) as caught:
        architectures.for_debian_arch("arm64")
    message = str(caught.value)
    assert "'arm64'" in message and "\n" not in message
    assert all(name in message for name in ARCH_IDS)
    assert caught.value.exit_code == 2


def test_names_elf_machines_and_kconfig_symbols_belong_to_one_architecture_each():
    for field in ("debian_arch", "elf_machine", "kconfig_symbol"):
        values = [getattr(a, field) for a in ARCHITECTURES]
        assert len(set(values)) == len(values), field


def test_a_machine_pvfront_has_no_architecture_for_is_named_all_the_same():
    aarch64 = ENUM_E_MACHINE["EM_AARCH64"]
    assert architectures.for_elf_machine(aarch64) is None
    assert architectures.machine_name(aarch64) == "AArch64"
    assert architectures.machine_name(0xFFFF) == "machine 65535"


def test_an_unknown_qemu_machine_is_one_line_naming_the_known_ones():
    arch = ARCHITECTURES[0]
    with pytest.raises(UsageError) as caught:
        arch.machine("virt")
    message = str(caught.value)
    assert "'virt'" in message and "\n" not in message
    assert all(m.name in message for m in arch.machines)


# ------------------------------------------------------------------ this host


def test_the_host_is_the_architecture_of_its_own_binaries_and_libraries():
    _needs("readelf")
    host = architectures.host()
    assert _readelf_header(Path("/bin/busybox"))["Machine"] == _readelf_machine(host)
    assert Path(f"/usr/lib/{host.multiarch_triplet}/libc.so.6").exists()


def test_a_host_of_another_architecture_is_one_setup_error(monkeypatch):
    def dpkg(argv, **_):
        return subprocess.CompletedProcess(argv, 0, "s390x\n", "")

    monkeypatch.setattr(architectures.subprocess, "run", dpkg)
    with pytest.raises(SetupError) as caught:
        architectures.host.__wrapped__()  # past the cache of the real host
    message = str(caught.value)
    assert "'s390x'" in message and "\n" not in message


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_the_multiarch_triplet_is_dpkgs(arch):
    tool = _needs("dpkg-architecture")
    got = subprocess.run(
        [tool, "-a", arch.debian_arch, "-qDEB_HOST_MULTIARCH"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert got == arch.multiarch_triplet


# ------------------------------------------------------------------ its kernels


def _srcarch(common_makefile: Path, kbuild_arch: str) -> str:
    """The source directory under arch/ the kernel's Makefile builds ARCH=kbuild_arch from."""
    mapped = re.search(
        rf"^ifeq \(\$\(ARCH\),{re.escape(kbuild_arch)}\)\n\s+SRCARCH := (\S+)$",
        common_makefile.read_text(),
        re.M,
    )
    return mapped.group(1) if mapped else kbuild_arch


def _kernel_makefile(t: KernelTree) -> Path:
    """The kernel's top Makefile: Debian's flavour headers carry a stub that includes the
    common headers' one; the headers `bindeb-pkg` makes (a kernel built from source) carry it
    whole."""
    makefile = t.headers_dir / "Makefile"
    stub = re.search(r"^include (/\S+)$", makefile.read_text(), re.M)
    return Path(stub.group(1)) if stub else makefile


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_a_targets_kernel_is_of_its_architecture(target_id):
    """Its .config says so, its modules and busybox are of its ELF machine, and ARCH= builds
    from the arch/ directory its headers carry."""
    t = tree(target_id)
    arch = t.target.architecture
    options = {a: config(target_id).get(f"CONFIG_{a.kconfig_symbol}") for a in ARCHITECTURES}
    assert [a for a, value in options.items() if value == "y"] == [arch]
    assert read_module(reference_module(t.modules_dir)).machine == arch.elf_machine
    if shutil.which("readelf"):
        assert _readelf_header(t.busybox)["Machine"] == _readelf_machine(arch)
    srcarch = _srcarch(_kernel_makefile(t), arch.kbuild_arch)
    assert [d.name for d in (t.headers_dir / "arch").iterdir()] == [srcarch]


def _preprocessed_vermagic(header: Path, options: list[str]) -> str:
    """MODULE_ARCH_VERMAGIC as the C preprocessor makes it of the kernel's own header."""
    defines = [f"-DCONFIG_{option}" for option in options]
    out = subprocess.run(
        [_needs("cpp"), "-P", *defines, "-include", str(header), "-"],
        input="MODULE_ARCH_VERMAGIC\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "".join(re.findall(r'"([^"]*)"', out))


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_module_vermagic_is_what_the_kernels_vermagic_h_makes_of_each_option(arch, target_tree):
    """Debian's common headers carry every architecture's asm/vermagic.h; the default target's
    tree has them for all."""
    common = _kernel_makefile(target_tree).parent
    header = common / "arch" / _srcarch(common / "Makefile", arch.kbuild_arch) / "include"
    header = header / "asm" / "vermagic.h"
    if not arch.vermagic_by_option:
        assert _preprocessed_vermagic(header, [arch.kconfig_symbol]) == ""
        assert arch.module_vermagic({f"CONFIG_{arch.kconfig_symbol}": "y"}) == ""
    # The table spans kernel lines (7.x dropped the 486 options): each option this kernel's
    # header knows is in it and makes the same text; the others are for older kernels.
    known = set(re.findall(r"defined CONFIG_(\w+)", header.read_text()))
    assert known <= {option for option, _ in arch.vermagic_by_option} or not arch.vermagic_by_option
    for option, text in arch.vermagic_by_option:
        if option not in known:
            continue
        assert _preprocessed_vermagic(header, [arch.kconfig_symbol, option]) == text
        assert arch.module_vermagic({f"CONFIG_{option}": "y"}) == text


# ------------------------------------------------------------------ QEMU


def _help(binary: str, flag: str) -> str:
    return subprocess.run(
        [binary, flag, "help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=ARCH_IDS)
def test_qemu_boots_the_architecture_on_its_machines_and_tcg_cpu(arch):
    binary = _needs(arch.qemu_binary)
    machines = {line.split()[0] for line in _help(binary, "-machine").splitlines()[1:] if line}
    assert {m.name for m in arch.machines} <= machines
    cpus = _help(binary, "-cpu")
    assert re.search(rf"\s{re.escape(arch.tcg_cpu.split(',')[0])}\s", cpus)
    owner = subprocess.run(
        ["dpkg", "-S", str(Path(binary).resolve())], capture_output=True, text=True, check=True
    ).stdout
    assert owner.split(":")[0] == arch.qemu_package


def test_every_declared_targets_qemu_offers_its_machine():
    for target in declared().targets:
        binary = shutil.which(target.qemu)
        if binary is None:
            continue  # the architecture's test says whether that QEMU is missing
        machines = {line.split()[0] for line in _help(binary, "-machine").splitlines()[1:] if line}
        assert target.machine in machines, target.id
