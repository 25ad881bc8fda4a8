"""Reading kernel modules: the struct-based reader agrees with pyelftools and Module.symvers."""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_E_MACHINE
from elftools.elf.sections import SymbolTableSection

from pvfront.elf import (
    STB_WEAK,
    ModuleFormatError,
    parse_module,
    read_all,
    read_bytes,
    read_module,
    read_modules,
)
from symcheck_support import (
    TARGET_IDS,
    generic,
    intree,
    kernel,
    modversions,
    pick,
    rebound,
    tree,
)

SAMPLES = ("usb_storage", "uas", "virtio_blk")


def _pyelftools_view(data: bytes) -> dict:
    """The same facts, the slow and obvious way."""
    import io

    elf = ELFFile(io.BytesIO(data))
    symtab = next(s for s in elf.iter_sections() if isinstance(s, SymbolTableSection))
    undefined, weak, ksymtab, flags = [], set(), {}, {}
    for index, sym in enumerate(symtab.iter_symbols()):
        if index == 0:
            continue
        if sym["st_shndx"] == "SHN_UNDEF" and sym.name:
            undefined.append(sym.name)
            if sym["st_info"]["bind"] == "STB_WEAK":
                weak.add(sym.name)
        elif sym.name.startswith("__ksymtab_") and isinstance(sym["st_shndx"], int):
            ksymtab[sym.name[10:]] = elf.get_section(sym["st_shndx"]).name
        elif sym.name.startswith("__flags_") and isinstance(sym["st_shndx"], int):
            # 7.x: one __ksymtab; a flags byte per export, bit 0 GPL-only
            flag = elf.get_section(sym["st_shndx"]).data()[sym["st_value"]]
            flags[sym.name[8:]] = bool(flag & 1)
    section = elf.get_section_by_name("__versions")  # absent without CONFIG_MODVERSIONS
    versions = section.data() if section is not None else None
    crc_size = elf.elfclass // 8
    names = (
        None
        if versions is None
        else [
            versions[i + crc_size : i + 64].split(b"\0")[0].decode()
            for i in range(0, len(versions), 64)
        ]
    )
    modinfo = elf.get_section_by_name(".modinfo").data().split(b"\0")
    gpl = {k: v == "__ksymtab_gpl" or flags.get(k, False) for k, v in ksymtab.items()}
    return {
        "class": elf.elfclass,
        "machine": elf["e_machine"],
        "undefined": undefined,
        "weak": weak,
        "gpl": gpl,
        "versions": names,
        "modinfo": [m.decode() for m in modinfo if m],
    }


def _sample(target_id: str) -> list[Path]:
    found = []
    for name in SAMPLES:
        try:
            found.append(intree(target_id, name))
        except KeyError:
            continue  # built in on this flavour
    assert found, f"no sample module in {target_id}"
    return found


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_reader_agrees_with_pyelftools(target_id):
    for path in _sample(target_id):
        data = read_bytes(path)
        info = parse_module(data, str(path))
        reference = _pyelftools_view(data)
        assert info.elf_class == reference["class"]
        assert info.machine == ENUM_E_MACHINE[reference["machine"]]
        assert list(info.imports) == reference["undefined"]
        assert set(info.weak) == reference["weak"]
        assert {e.name: e.gpl for e in info.exports} == reference["gpl"]
        if reference["versions"] is None:
            assert info.versions is None
        else:
            assert list(info.versions) == list(dict.fromkeys(reference["versions"]))
        assert [f"{k}={v}" for k, v in info.modinfo] == reference["modinfo"]


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_exports_match_module_symvers(target_id):
    """CRC and namespace of each export as the kernel's own Module.symvers records them:
    5.10 keeps CRCs in absolute __crc_ symbols, 6.x in __kcrctab at the symbol's offset."""
    exports = kernel(target_id).exports
    for path in _sample(target_id):
        info = read_module(path)
        for export in info.exports:
            recorded = exports[export.name]
            assert recorded.owner == info.name
            assert (export.crc, export.gpl, export.namespace) == (
                recorded.crc,
                recorded.gpl,
                recorded.namespace,
            ), export.name


ELF_CLASS = {"amd64": 64, "i386": 32}


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_versions_table_crc_width_follows_elf_class(target_id):
    """64-byte entries: unsigned long CRC (8 bytes on x86-64, 4 on i386) then the name; a
    kernel without CONFIG_MODVERSIONS gives its modules no __versions table at all."""
    info = read_module(_sample(target_id)[0])
    assert info.elf_class == ELF_CLASS[tree(target_id).target.arch]
    if not modversions(target_id):
        assert info.versions is None
        return
    layout = kernel(target_id).exports["module_layout"].crc
    assert info.versions["module_layout"] == layout


@pytest.mark.parametrize("arch", sorted(ELF_CLASS))
def test_weak_undefined_symbols_are_read_in_either_elf_class(arch):
    """Debian's in-tree modules have no weak undefined symbol, so one import of a real module
    is rebound STB_WEAK: the reader sees it weak, not required, and still imported in order."""
    path = _sample(pick(arch=arch))[0]
    image = read_bytes(path)
    symbol = parse_module(image, str(path)).required[-1]
    weakened = rebound(image, symbol, STB_WEAK)
    info = parse_module(weakened, str(path))
    assert info.weak == _pyelftools_view(weakened)["weak"] == {symbol}
    assert symbol in info.imports and symbol not in info.required
    assert info.elf_class == ELF_CLASS[arch]


def test_namespaces_and_imports_are_read():
    g = generic()
    uas = read_module(intree(g, "uas"))
    assert uas.import_ns == ["USB_STORAGE"]
    assert "usb-storage" in uas.depends
    storage = read_module(intree(g, "usb_storage"))
    assert {e.namespace for e in storage.exports} == {"USB_STORAGE"}


def test_compressed_modules_read_the_same(tmp_path):
    data = read_bytes(intree(generic(), "virtio_blk"))  # the ELF image, whatever Debian ships
    source = tmp_path / "a.ko"
    source.write_bytes(data)
    plain = read_module(source)
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ))
    (tmp_path / "a.ko.gz").write_bytes(gzip.compress(data))
    variants = [tmp_path / "a.ko.xz", tmp_path / "a.ko.gz"]
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", str(source), "-o", str(tmp_path / "a.ko.zst")], check=True)
        variants.append(tmp_path / "a.ko.zst")
    for variant in variants:
        info = read_module(variant)
        assert (info.imports, info.versions, info.export_table, info.modinfo) == (
            plain.imports,
            plain.versions,
            plain.export_table,
            plain.modinfo,
        ), variant


def test_in_tree_modules_shipped_compressed_are_read_as_they_are():
    target_id = pick(compressed=True)
    path = intree(target_id, "virtio_blk")
    assert not path.name.endswith(".ko")
    info = read_module(path)
    assert info.vermagic.split()[0] == tree(target_id).release
    assert info.machine == kernel(target_id).machine


BAD_INPUTS = {
    "empty": b"",
    "text": b"hello, this is not a module\n" * 4,
    "truncated": None,  # filled from a real module below
    "xz_garbage": b"\xfd7zXZ\x00" + b"\x01" * 64,
    "gz_garbage": b"\x1f\x8b" + b"\x02" * 64,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_naming_the_file(tmp_path, case):
    data = BAD_INPUTS[case]
    if data is None:
        data = read_bytes(intree(generic(), "virtio_blk"))[:3000]
    path = tmp_path / f"{case}.ko"
    path.write_bytes(data)
    with pytest.raises(ModuleFormatError) as raised:
        read_module(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_wrong_architecture_and_non_module_elf_are_rejected(tmp_path):
    data = bytearray(read_bytes(intree(generic(), "virtio_blk")))
    data[18:20] = (183).to_bytes(2, "little")  # e_machine = AArch64
    arm = tmp_path / "arm.ko"
    arm.write_bytes(bytes(data))
    with pytest.raises(ModuleFormatError, match="wrong architecture: AArch64"):
        read_module(arm)
    with pytest.raises(ModuleFormatError, match="not a kernel module"):
        read_module("/bin/true")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModuleFormatError, match="no such file"):
        read_module(tmp_path / "absent.ko")
    with pytest.raises(ModuleFormatError, match="is a directory"):
        read_module(tmp_path)


def test_cache_is_reused_and_invalidated_by_file_identity(tmp_path):
    source = intree(generic(), "virtio_blk")
    copy = tmp_path / "m" / source.name
    copy.parent.mkdir()
    shutil.copy(source, copy)
    cache = tmp_path / "cache"
    first = read_modules([copy], cache_dir=cache, cache_key="t", jobs=1)
    assert first.parsed == 1
    second = read_modules([copy], cache_dir=cache, cache_key="t", jobs=1)
    assert second.parsed == 0 and second.modules == first.modules
    copy.write_bytes(b"garbage now")
    third = read_modules([copy], cache_dir=cache, cache_key="t", jobs=1)
    assert third.parsed == 1 and str(copy) in third.errors


def test_modules_named_together_come_back_in_the_order_named_or_the_first_bad_one_is_the_error(
    tmp_path,
):
    g = generic()
    named = [intree(g, "uas"), intree(g, "usb_storage"), intree(g, "uas")]
    assert [m.name for m in read_all(named)] == ["uas", "usb_storage", "uas"]
    broken = tmp_path / "broken.ko"
    broken.write_bytes(b"not a module")
    with pytest.raises(ModuleFormatError) as caught:
        read_all([named[0], tmp_path / "absent.ko", broken])
    assert str(caught.value).startswith(f"{tmp_path / 'absent.ko'}: ")
