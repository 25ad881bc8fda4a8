"""Symbol checks: what the kernel would say, in its order and its words."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
from elftools.elf.elffile import ELFFile

from pvfront.architectures import AMD64
from pvfront.elf import STB_WEAK, ModuleInfo, parse_module, read_bytes, read_module
from pvfront.symcheck import (
    CRC,
    DEPENDENCY,
    DUPLICATE,
    DUPLICATE_IN_PACKAGE,
    ELF,
    GPL_ONLY,
    MODULE_LAYOUT,
    NAMESPACE,
    STRUCT_MODULE,
    UNKNOWN,
    check_module,
    check_modules,
    first_insmod_failure,
    load_order,
    same_magic,
)
from pvfront.symcheck_report import human, to_json, write_junit
from pvfront.symvers import Kernel, KernelExport, kernel_from_path
from symcheck_support import (
    TARGET_IDS,
    by_line,
    generic,
    intree,
    kernel,
    layout_crcs_differ,
    patched,
    pick,
    rebound,
    same_suite_pair,
    tree,
)

LAYOUT_MESSAGE = "virtio_blk: disagrees about version of symbol module_layout"


def _module(target_id, name, *replacements):
    data = read_bytes(intree(target_id, name))
    for old, new in replacements:
        data = patched(data, old, new)
    return parse_module(data, f"/patched/{name}.ko")


def test_same_magic_ignores_the_release_only_with_modversions():
    a, b = (
        "6.1.0-1-amd64 SMP preempt mod_unload modversions ",
        "6.1.0-2-amd64 SMP preempt mod_unload modversions ",
    )
    assert same_magic(a, b, has_crcs=True) and not same_magic(a, b, has_crcs=False)
    assert not same_magic(a, "6.1.0-1-rt-amd64 SMP preempt_rt mod_unload modversions ", True)


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_in_tree_modules_load_into_their_own_kernel(target_id):
    names = [n for n in ("uas", "virtio_blk") if n in kernel(target_id).module_files()]
    assert "virtio_blk" in names, f"{target_id} has no virtio_blk module"
    report = check_modules([read_module(intree(target_id, n)) for n in names], kernel(target_id))
    assert report.ok, [v.reason for v in report.verdicts if not v.loads]
    if "uas" in names:
        assert set(report.verdict("uas").dependencies) >= {"usb_storage", "usbcore", "scsi_mod"}


# Each case: which module is checked against which kernel, chosen by what the case needs.
CROSS_KERNEL = {
    "i386 module, 6.x amd64 kernel": (
        lambda: (pick(arch="i386"), pick(arch="amd64", line="6")),
        ELF,
        "Invalid architecture in ELF header: 3",
    ),
    "amd64 module, 6.x i386 kernel": (
        lambda: (pick(arch="amd64"), pick(arch="i386", line="6")),
        ELF,
        "Invalid architecture in ELF header: 62",
    ),
    # 5.10 has one message for every ELF problem (as a 5.10 i386 guest shows)
    "amd64 module, 5.10 i386 kernel": (
        lambda: (pick(arch="amd64"), by_line("5.10", arch="i386")),
        ELF,
        "Module has invalid ELF structures",
    ),
    "generic module, rt kernel of its suite": (
        lambda: same_suite_pair("amd64", "rt-amd64", where=layout_crcs_differ),
        MODULE_LAYOUT,
        LAYOUT_MESSAGE,
    ),
    "generic module, cloud kernel of its suite with another module_layout": (
        lambda: same_suite_pair("amd64", "cloud-amd64", where=layout_crcs_differ),
        MODULE_LAYOUT,
        LAYOUT_MESSAGE,
    ),
    "5.10 module, 6.1 kernel (no struct module size check before 6.4)": (
        lambda: (by_line("5.10", arch="amd64"), by_line("6.1", arch="amd64")),
        MODULE_LAYOUT,
        LAYOUT_MESSAGE,
    ),
    "6.1 module, 6.12 kernel (struct module size checked first)": (
        lambda: (by_line("6.1", arch="amd64"), by_line("6.12", arch="amd64")),
        STRUCT_MODULE,
        "module virtio_blk: .gnu.linkonce.this_module section size must match "
        "the kernel's built struct module size at run time",
    ),
}


@pytest.mark.parametrize("case", CROSS_KERNEL)
def test_cross_kernel_loads_fail_at_the_first_check_the_kernel_makes(case):
    choose, check, message = CROSS_KERNEL[case]
    built, against = choose()
    verdict = check_module(read_module(intree(built, "virtio_blk")), kernel(against))
    first = verdict.first_error
    assert not verdict.loads
    assert (first.check, first.message) == (check, message), (built, against)
    assert first.errno_text == "Exec format error"


def test_vermagic_is_checked_after_module_layout():
    """rt vs generic of one suite: module_layout first; then the vermagic, which differs beyond
    the release (preempt_rt), and the kernel says both strings in full."""
    built, against = same_suite_pair(
        "amd64",
        "rt-amd64",
        where=lambda a, b: layout_crcs_differ(a, b) and "preempt_rt" in kernel(b).vermagic.split(),
    )
    module = read_module(intree(built, "virtio_blk"))
    k = kernel(against)
    assert module.vermagic.split()[0] == tree(built).release
    assert k.vermagic.split()[0] == tree(against).release
    verdict = check_module(module, k)
    assert [f.check for f in verdict.errors][:2] == [MODULE_LAYOUT, "vermagic"]
    assert (
        verdict.errors[1].message
        == f"virtio_blk: version magic '{module.vermagic}' should be '{k.vermagic}'"
    )


def test_cross_kernel_also_lists_crc_and_unknown_symbols():
    """A module of an older line against a newer kernel: every later complaint is listed too."""
    older = by_line("5.10", arch="amd64")
    newer = generic(where=lambda t: kernel(t).version > kernel(older).version)
    verdict = check_module(read_module(intree(older, "virtio_blk")), kernel(newer))
    kinds = {f.check for f in verdict.errors}
    assert {MODULE_LAYOUT, CRC, UNKNOWN} <= kinds
    unknown = next(f for f in verdict.errors if f.check == UNKNOWN)
    assert unknown.message.endswith(f"Unknown symbol {unknown.symbol} (err -2)")


def test_gpl_only_symbols_are_unknown_to_a_proprietary_module():
    g = generic()
    module = _module(g, "uas", (b"license=GPL\0", b"license=BSD\0"))
    verdict = check_module(module, kernel(g))
    gpl = [f for f in verdict.errors if f.check == GPL_ONLY]
    assert gpl and gpl[0].message == f"uas: Unknown symbol {gpl[0].symbol} (err -2)"
    assert "EXPORT_SYMBOL_GPL" in gpl[0].detail
    assert any(f.message == "uas: module license 'BSD' taints kernel." for f in verdict.warnings)


def test_namespace_must_be_imported():
    g = generic()
    module = _module(g, "uas", (b"import_ns=USB_STORAGE", b"import_ns=USB_STORAGX"))
    errors = check_module(module, kernel(g)).errors
    assert errors[0].check == NAMESPACE
    assert errors[0].message == (
        f"uas: module uses symbol ({errors[0].symbol}) from namespace "
        "USB_STORAGE, but does not import it."
    )


def test_crc_mismatch_of_one_symbol():
    g = generic()
    original = read_module(intree(g, "uas"))
    symbol = "usb_stor_sense_invalidCDB"
    crc = original.versions[symbol]
    old = struct.pack("<Q", crc) + symbol.encode()
    new = struct.pack("<Q", crc ^ 1) + symbol.encode()
    verdict = check_module(_module(g, "uas", (old, new)), kernel(g))
    assert [(f.check, f.message) for f in verdict.errors] == [
        (CRC, f"uas: disagrees about version of symbol {symbol}")
    ]


def test_an_unexported_symbol_is_unknown_unless_the_module_binds_it_weak():
    """The kernel leaves an unresolved STB_WEAK undefined symbol at 0 and loads the module;
    a strong one is "Unknown symbol". No Debian in-tree module has a weak undefined symbol,
    so one of uas's imports is rebound weak in a copy of the file."""
    g = generic()
    image = read_bytes(intree(g, "uas"))
    symbol = parse_module(image, "uas.ko").required[0]
    without = kernel(g).with_module_exports([])
    del without.exports[symbol]
    strong = check_module(parse_module(image, "/patched/uas.ko"), without)
    assert [(f.check, f.message) for f in strong.errors] == [
        (UNKNOWN, f"uas: Unknown symbol {symbol} (err -2)")
    ]
    weak = parse_module(rebound(image, symbol, STB_WEAK), "/patched/uas.ko")
    assert weak.weak == {symbol} and symbol not in weak.required
    verdict = check_module(weak, without)
    assert verdict.loads and verdict.errors == []
    assert symbol not in verdict.providers
    # exported after all, a weak symbol is bound like any other
    assert check_module(weak, kernel(g)).providers[symbol] == kernel(g).exports[symbol].owner


# A module as gcc makes it, needing no provisioned kernel: one strong import, one weak one
# (`__attribute__((weak))`, as a driver declares a symbol that only some kernels provide).
WEAKLING_C = r"""
extern int pvf_needed(void);
extern int pvf_optional(void) __attribute__((weak));
int init_module(void) { return pvf_needed() + (pvf_optional ? pvf_optional() : 0); }
static const char modinfo[] __attribute__((section(".modinfo"), used)) =
    "license=GPL\0name=weakling";
"""


@pytest.fixture(scope="module")
def weakling(tmp_path_factory) -> bytes:
    """The object file of WEAKLING_C, built by the host's gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to compile a module with a weak import")
    where = tmp_path_factory.mktemp("weakling")
    (where / "weakling.c").write_text(WEAKLING_C)
    subprocess.run(
        [gcc, "-c", "-O2", "-fno-pic", "weakling.c", "-o", "weakling.ko"], cwd=where, check=True
    )
    return (where / "weakling.ko").read_bytes()


def _exporting(where: Path, *names: str) -> Kernel:
    """A kernel known only by a Module.symvers that exports these symbols from vmlinux."""
    where.mkdir()
    symvers = where / "Module.symvers"
    symvers.write_text(
        "".join(f"0x{i + 1:08x}\t{n}\tvmlinux\tEXPORT_SYMBOL\t\n" for i, n in enumerate(names))
    )
    return kernel_from_path(symvers)


def test_a_compiled_weak_import_need_not_resolve_but_a_strong_one_must(weakling, tmp_path):
    undefined = {
        sym.name: sym["st_info"]["bind"]
        for sym in ELFFile(io.BytesIO(weakling)).get_section_by_name(".symtab").iter_symbols()
        if sym.name and sym["st_shndx"] == "SHN_UNDEF"
    }
    assert undefined == {"pvf_needed": "STB_GLOBAL", "pvf_optional": "STB_WEAK"}  # as gcc made it
    module = parse_module(weakling, "/synthetic/weakling.ko")
    assert module.weak == {"pvf_optional"} and module.required == ("pvf_needed",)
    bare = check_module(module, _exporting(tmp_path / "neither", "pvf_unrelated"))
    assert [(f.check, f.message) for f in bare.errors] == [
        (UNKNOWN, "weakling: Unknown symbol pvf_needed (err -2)")
    ]
    without = check_module(module, _exporting(tmp_path / "needed", "pvf_needed"))
    assert without.loads and without.errors == []
    assert "pvf_optional" not in without.providers
    both = check_module(module, _exporting(tmp_path / "both", "pvf_needed", "pvf_optional"))
    assert both.loads and both.providers == {"pvf_needed": "vmlinux", "pvf_optional": "vmlinux"}


def test_duplicate_exports_against_kernel_and_within_package():
    g = generic()
    k = kernel(g)
    storage = read_module(intree(g, "usb_storage"))
    clash = k.vmlinux_only()
    clash.exports["usb_stor_suspend"] = KernelExport("usb_stor_suspend", 1, "vmlinux", True, None)
    verdict = check_module(storage, clash)
    assert verdict.errors[-1].check == DUPLICATE
    assert (
        verdict.errors[-1].message
        == "usb_storage: exports duplicate symbol usb_stor_suspend (owned by kernel)"
    )
    twin = _module(g, "usb_storage", (b"name=usb_storage", b"name=usb_storagf"))
    report = check_modules(
        [storage, twin],
        k.vmlinux_only().with_module_exports(
            [
                read_module(intree(g, n))
                for n in ("usbcore", "scsi_mod", "scsi_common", "usb_common")
            ]
        ),
        closure=False,
    )
    assert report.verdict("usb_storage").loads
    assert any(f.check == DUPLICATE_IN_PACKAGE for f in report.verdict("usb_storagf").errors)


def test_a_module_whose_package_dependency_fails_fails_too():
    g = generic()
    storage = _module(g, "usb_storage", (b"license=GPL\0", b"license=BSD\0"))
    uas = read_module(intree(g, "uas"))
    report = check_modules(
        [storage, uas],
        kernel(g)
        .vmlinux_only()
        .with_module_exports(
            [read_module(intree(g, n)) for n in ("usbcore", "scsi_mod", "scsi_common")]
        ),
    )
    assert not report.verdict("usb_storage").loads
    dependency = [f for f in report.verdict("uas").errors if f.check == DEPENDENCY]
    assert dependency and "needs usb_storage, which would not load" in dependency[0].detail


def test_load_order_and_the_first_insmod_failure_of_a_wrong_order():
    g = generic()
    k = kernel(g)
    uas = read_module(intree(g, "uas"))
    plan = load_order([uas], k)
    assert plan.order[-1] == "uas" and plan.order.index("usb_storage") < plan.order.index("uas")
    assert plan.order.index("usbcore") < plan.order.index("usb_storage")
    assert plan.intree >= {"usb_storage", "usbcore", "scsi_mod"} and not plan.cycles
    sequence = [read_module(plan.paths[name]) for name in plan.order]
    assert first_insmod_failure(sequence, k) is None
    wrong = [m for m in sequence if m.name != "usb_storage"] + [
        m for m in sequence if m.name == "usb_storage"
    ]
    failure = first_insmod_failure(wrong, k)
    assert failure.module == "uas" and failure.symbol.startswith("usb_stor")
    assert failure.message == f"uas: Unknown symbol {failure.symbol} (err -2)"


def _summary(name: str, imports: tuple[str, ...], exports: tuple[str, ...]) -> ModuleInfo:
    """What the reader would make of a GPL module that imports and exports these symbols."""
    return ModuleInfo(
        path=f"/synthetic/{name}.ko",
        elf_class=64,
        machine=AMD64.elf_machine,
        shentsize_ok=True,
        modinfo=(("name", name), ("license", "GPL")),
        versions={},
        imports=imports,
        weak=frozenset(),
        export_table=tuple((e, False, None, None) for e in exports),
        this_module_size=None,
        symtab_count=1,
    )


def test_package_modules_that_need_each_other_are_reported_as_a_cycle():
    modules = [
        _summary("pvf_b", ("a_fn",), ("b_fn",)),
        _summary("pvf_a", ("b_fn",), ("a_fn",)),
        _summary("pvf_c", ("a_fn",), ()),
    ]
    report = check_modules(modules, Kernel("empty", "nothing", {}), closure=False)
    assert "dependency cycle: pvf_a -> pvf_b -> pvf_a" in report.notes
    assert json.loads(to_json([report]))["reports"][0]["cycles"] == [["pvf_a", "pvf_b"]]
    assert report.verdict("pvf_c").dependencies == ["pvf_a"]
    assert load_order(modules, Kernel("empty", "nothing", {})).order[-1] == "pvf_c"


def test_reports_in_every_format(tmp_path):
    g = generic()
    good = check_modules([read_module(intree(g, "uas"))], kernel(g))
    generic_id, rt = same_suite_pair("amd64", "rt-amd64", where=layout_crcs_differ)
    bad = check_modules([read_module(intree(generic_id, "virtio_blk"))], kernel(rt))
    needs = good.verdict("uas").dependencies
    assert {"usb_storage", "usbcore", "scsi_mod"} <= set(needs)
    text = human([good, bad])
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert f"uas loads (needs {', '.join(needs)})" in lines
    assert f"virtio_blk FAILS: {LAYOUT_MESSAGE}" in lines
    data = json.loads(to_json([good, bad]))
    assert data["ok"] is False
    assert (
        data["reports"][1]["modules"][0]["kernel_message"]
        == "virtio_blk: disagrees about version of symbol module_layout"
    )
    junit = tmp_path / "junit.xml"
    write_junit([good, bad], junit)
    failures = ElementTree.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 1 and failures[0].get("type") == MODULE_LAYOUT
