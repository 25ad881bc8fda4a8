"""Symbol checks: what the kernel would say, in its order and its words."""

from __future__ import annotations

import json
import struct
from xml.etree import ElementTree

import pytest

from pvfront.elf import parse_module, read_bytes, read_module
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
    DependencyGraph,
    check_module,
    check_modules,
    first_insmod_failure,
    load_order,
    same_magic,
)
from pvfront.symcheck_report import human, to_json, write_junit
from pvfront.symvers import KernelExport
from symcheck_support import intree, kernel, patched


def _module(target_id, name, *replacements):
    data = read_bytes(intree(target_id, name))
    for old, new in replacements:
        data = patched(data, old, new)
    return parse_module(data, f"/patched/{name}.ko")


def test_same_magic_ignores_the_release_only_with_modversions():
    a, b = "6.1.0-1-amd64 SMP preempt mod_unload modversions ", \
        "6.1.0-2-amd64 SMP preempt mod_unload modversions "
    assert same_magic(a, b, has_crcs=True) and not same_magic(a, b, has_crcs=False)
    assert not same_magic(a, "6.1.0-1-rt-amd64 SMP preempt_rt mod_unload modversions ", True)


def test_in_tree_modules_load_into_their_own_kernel():
    report = check_modules([read_module(intree("deb12-amd64", "uas"))], kernel("deb12-amd64"))
    assert report.ok
    assert set(report.verdicts[0].dependencies) >= {"usb_storage", "usbcore", "scsi_mod"}


@pytest.mark.parametrize("built, against, check, message", [
    ("deb12-686", "deb12-amd64", ELF, "Invalid architecture in ELF header: 3"),
    ("deb12-amd64", "deb12-686", ELF, "Invalid architecture in ELF header: 62"),
    # 5.10 has one message for every ELF problem (as a deb11-686 guest shows)
    ("deb12-amd64", "deb11-686", ELF, "Module has invalid ELF structures"),
    ("deb12-amd64", "deb12-rt-amd64", MODULE_LAYOUT,
     "virtio_blk: disagrees about version of symbol module_layout"),
    ("deb12-amd64", "deb12-cloud-amd64", MODULE_LAYOUT,
     "virtio_blk: disagrees about version of symbol module_layout"),
    ("deb11-amd64", "deb12-amd64", MODULE_LAYOUT,
     "virtio_blk: disagrees about version of symbol module_layout"),
    ("deb12-amd64", "deb12bpo-amd64", STRUCT_MODULE,
     "module virtio_blk: .gnu.linkonce.this_module section size must match the kernel's "
     "built struct module size at run time"),
])
def test_cross_kernel_loads_fail_at_the_first_check_the_kernel_makes(built, against, check,
                                                                     message):
    verdict = check_module(read_module(intree(built, "virtio_blk")), kernel(against))
    first = verdict.first_error
    assert not verdict.loads
    assert (first.check, first.message) == (check, message)
    assert first.errno_text == "Exec format error"


def test_vermagic_is_checked_after_module_layout():
    """rt vs generic: module_layout first; the vermagic differs beyond the release too."""
    verdict = check_module(read_module(intree("deb12-amd64", "virtio_blk")),
                           kernel("deb12-rt-amd64"))
    checks = [f.check for f in verdict.errors]
    assert checks[:2] == [MODULE_LAYOUT, "vermagic"]
    assert "version magic '6.1.0-56-amd64 SMP preempt mod_unload modversions ' should be " \
        "'6.1.0-56-rt-amd64 SMP preempt_rt mod_unload modversions '" in verdict.errors[1].message


def test_cross_kernel_also_lists_crc_and_unknown_symbols():
    verdict = check_module(read_module(intree("deb11-amd64", "virtio_blk")), kernel("deb12-amd64"))
    kinds = {f.check for f in verdict.errors}
    assert {MODULE_LAYOUT, CRC, UNKNOWN} <= kinds
    unknown = next(f for f in verdict.errors if f.check == UNKNOWN)
    assert unknown.message.endswith(f"Unknown symbol {unknown.symbol} (err -2)")


def test_gpl_only_symbols_are_unknown_to_a_proprietary_module():
    module = _module("deb12-amd64", "uas", (b"license=GPL\0", b"license=BSD\0"))
    verdict = check_module(module, kernel("deb12-amd64"))
    gpl = [f for f in verdict.errors if f.check == GPL_ONLY]
    assert gpl and gpl[0].message == f"uas: Unknown symbol {gpl[0].symbol} (err -2)"
    assert "EXPORT_SYMBOL_GPL" in gpl[0].detail
    assert any(f.message == "uas: module license 'BSD' taints kernel." for f in verdict.warnings)


def test_namespace_must_be_imported():
    module = _module("deb12-amd64", "uas", (b"import_ns=USB_STORAGE", b"import_ns=USB_STORAGX"))
    errors = check_module(module, kernel("deb12-amd64")).errors
    assert errors[0].check == NAMESPACE
    assert errors[0].message == (f"uas: module uses symbol ({errors[0].symbol}) from namespace "
                                 "USB_STORAGE, but does not import it.")


def test_crc_mismatch_of_one_symbol():
    original = read_module(intree("deb12-amd64", "uas"))
    symbol = "usb_stor_sense_invalidCDB"
    crc = original.versions[symbol]
    old = struct.pack("<Q", crc) + symbol.encode()
    new = struct.pack("<Q", crc ^ 1) + symbol.encode()
    verdict = check_module(_module("deb12-amd64", "uas", (old, new)), kernel("deb12-amd64"))
    assert [(f.check, f.message) for f in verdict.errors] == \
        [(CRC, f"uas: disagrees about version of symbol {symbol}")]


def test_unknown_symbol_and_weak_symbols():
    k = kernel("deb12-amd64")
    module = read_module(intree("deb12-amd64", "uas"))
    symbol = module.required[0]
    without = k.vmlinux_only().with_module_exports([])
    without.exports.pop(symbol, None)
    verdict = check_module(module, without)
    assert f"uas: Unknown symbol {symbol} (err -2)" in [f.message for f in verdict.errors]


def test_duplicate_exports_against_kernel_and_within_package():
    k = kernel("deb12-amd64")
    storage = read_module(intree("deb12-amd64", "usb_storage"))
    clash = k.vmlinux_only()
    clash.exports["usb_stor_suspend"] = KernelExport("usb_stor_suspend", 1, "vmlinux", True, None)
    verdict = check_module(storage, clash)
    assert verdict.errors[-1].check == DUPLICATE
    assert verdict.errors[-1].message == \
        "usb_storage: exports duplicate symbol usb_stor_suspend (owned by kernel)"
    twin = _module("deb12-amd64", "usb_storage", (b"name=usb_storage", b"name=usb_storagf"))
    report = check_modules([storage, twin], k.vmlinux_only().with_module_exports(
        [read_module(intree("deb12-amd64", n)) for n in ("usbcore", "scsi_mod", "scsi_common",
                                                           "usb_common")]), closure=False)
    assert report.verdict("usb_storage").loads
    assert any(f.check == DUPLICATE_IN_PACKAGE for f in report.verdict("usb_storagf").errors)


def test_a_module_whose_package_dependency_fails_fails_too():
    storage = _module("deb12-amd64", "usb_storage", (b"license=GPL\0", b"license=BSD\0"))
    uas = read_module(intree("deb12-amd64", "uas"))
    report = check_modules([storage, uas], kernel("deb12-amd64").vmlinux_only()
                           .with_module_exports([read_module(intree("deb12-amd64", n)) for n in
                                                 ("usbcore", "scsi_mod", "scsi_common")]))
    assert not report.verdict("usb_storage").loads
    dependency = [f for f in report.verdict("uas").errors if f.check == DEPENDENCY]
    assert dependency and "needs usb_storage, which would not load" in dependency[0].detail


def test_load_order_and_the_first_insmod_failure_of_a_wrong_order():
    k = kernel("deb12-amd64")
    uas = read_module(intree("deb12-amd64", "uas"))
    plan = load_order([uas], k)
    assert plan.order[-1] == "uas" and plan.order.index("usb_storage") < plan.order.index("uas")
    assert plan.order.index("usbcore") < plan.order.index("usb_storage")
    assert plan.intree >= {"usb_storage", "usbcore", "scsi_mod"} and not plan.cycles
    sequence = [read_module(plan.paths[name]) for name in plan.order]
    assert first_insmod_failure(sequence, k) is None
    wrong = [m for m in sequence if m.name != "usb_storage"] + \
        [m for m in sequence if m.name == "usb_storage"]
    failure = first_insmod_failure(wrong, k)
    assert failure.module == "uas" and failure.symbol.startswith("usb_stor")
    assert failure.message == f"uas: Unknown symbol {failure.symbol} (err -2)"


def test_cycles_are_found():
    graph = DependencyGraph()
    graph.add("a", "b", "x")
    graph.add("b", "a", "y")
    graph.add("c", "a", "z")
    assert graph.cycles() == [["a", "b"]]
    assert graph.order(["c"])[-1] == "c"


def test_reports_in_every_format(tmp_path):
    good = check_modules([read_module(intree("deb12-amd64", "uas"))], kernel("deb12-amd64"))
    bad = check_modules([read_module(intree("deb11-amd64", "virtio_blk"))], kernel("deb12-amd64"))
    text = human([good, bad])
    assert any(line.split() == ["uas", "loads", "(needs", "usb_storage,", "usbcore,", "scsi_mod)"]
               or line.split()[:2] == ["uas", "loads"] for line in text.splitlines())
    assert "FAILS: virtio_blk: disagrees about version of symbol module_layout" in text
    data = json.loads(to_json([good, bad]))
    assert data["ok"] is False
    assert data["reports"][1]["modules"][0]["kernel_message"] == \
        "virtio_blk: disagrees about version of symbol module_layout"
    junit = tmp_path / "junit.xml"
    write_junit([good, bad], junit)
    failures = ElementTree.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 1 and failures[0].get("type") == MODULE_LAYOUT
