"""vmlinux's exported symbols read straight out of a kernel image: an x86 bzImage (vmlinuz) or
the uncompressed vmlinux ELF.

Why: a kernel without its headers has no Module.symvers, Debian 13's /boot/System.map is a
one-line placeholder and sid's 7.x image has no /boot at all. The image always carries the
tables the loader itself searches: stripping vmlinux of its symbol table keeps the sections.

The bzImage (Documentation/arch/x86/boot.rst): the setup header ("HdrS" at 0x202, boot
protocol at 0x206) gives, from protocol 2.08, payload_offset and payload_length (0x248,
0x24c) of the compressed vmlinux, counted from the protected-mode code at
(setup_sects + 1) * 512; kernel_version (0x20e) points, less 0x200, at "<release> (...) #1 ...".

The tables (include/asm-generic/vmlinux.lds.h, include/linux/export-internal.h for 6.x and
7.x, include/linux/export.h for 5.10; checked on Debian's 5.10, 6.1, 6.12 and 7.2 images):

- `__ksymtab`, `__ksymtab_gpl` (5.10 also `__ksymtab_unused[_gpl]` and
  `__ksymtab_gpl_future`, which the linker drops when empty): one `struct kernel_symbol` per
  export. With CONFIG_HAVE_ARCH_PREL32_RELOCATIONS, which arch/x86/Kconfig selects for i386 and
  x86_64 alike, it is three `int`s (value, name, namespace), each relative to its own field's
  address; otherwise three absolute pointers. Before 5.4 there was no namespace field.
- `__kcrctab`, `__kcrctab_gpl`: with CONFIG_MODVERSIONS one u32 CRC per entry of the matching
  ksymtab (5.10: the value of the absolute `__crc_` symbol; 6.x/7.x: SYMBOL_CRC). Absent
  without MODVERSIONS (Debian's 7.x).
- `__kflagstab` (7.x): one byte per `__ksymtab` entry, bit 0 KSYM_FLAG_GPL_ONLY
  (include/linux/module_symbol.h); there are no `_gpl` sections any more and GPL-only exports
  sit in `__ksymtab` (kernel/module/main.c, find_exported_symbol_in_section()).
- `__ksymtab_strings`: names and namespaces; "" is no namespace, and so is a zero namespace
  field (kernel_symbol_namespace() in 5.10's kernel/module.c).

The payload is decompressed as qemu.py does to boot it (gzip, xz, lz4, zstd), by
compression.py; a payload that cannot be read is one error naming the image.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pvfront import compression
from pvfront.elf import _SHDR
from pvfront.errors import read_input
from pvfront.qemu import _PAYLOAD_MAGIC, _decompress_payload
from pvfront.symvers import VMLINUX, KernelExport, KernelSourceError

KSYM_FLAG_GPL_ONLY = 1
SHT_NOBITS = 8
ET_EXEC = 2
ET_DYN = 3
_ELF_MAGIC = b"\x7fELF"
_SETUP_MAGIC = b"HdrS"
_IMAGE_NAMES = ("vmlinuz", "vmlinux", "bzImage")
# Payload kinds a kernel can be built with that the shared decompressor does not read.
_UNREAD_KINDS = {b"\x5d\x00\x00": "lzma", b"BZh": "bzip2", b"\x89LZO": "lzo"}

# (ksymtab section, its CRC section, GPL-only) in the order the loader searches them.
_TABLES = (
    ("__ksymtab", "__kcrctab", False),
    ("__ksymtab_gpl", "__kcrctab_gpl", True),
    ("__ksymtab_unused", "__kcrctab_unused", False),
    ("__ksymtab_unused_gpl", "__kcrctab_unused_gpl", True),
    ("__ksymtab_gpl_future", "__kcrctab_gpl_future", False),  # usable by any module
)


@dataclass(frozen=True)
class Section:
    """Where a section of vmlinux lives: its address when loaded and its bytes in the file."""

    addr: int
    offset: int
    size: int


@dataclass(frozen=True)
class _Layout:
    """One way struct kernel_symbol can be laid out; the image's own bytes decide which."""

    relative: bool  # PREL32: int offsets from each field's address; else absolute pointers
    fields: int  # 3: value, name, namespace (5.4 on); 2: value, name


_LAYOUTS = (_Layout(True, 3), _Layout(False, 3), _Layout(True, 2), _Layout(False, 2))


@dataclass(frozen=True)
class Vmlinux:
    """The uncompressed kernel ELF and the sections the export tables need."""

    path: str
    data: bytes
    elf_class: int
    order: str
    machine: int
    sections: dict[str, Section]

    @property
    def pointer_size(self) -> int:
        return 8 if self.elf_class == 64 else 4

    def bytes_of(self, section: Section) -> bytes:
        return self.data[section.offset : section.offset + section.size]


@dataclass(frozen=True)
class ImageExports:
    """What a kernel image says about its kernel."""

    exports: dict[str, KernelExport]
    machine: int
    release: str | None
    vermagic: str | None  # the kernel's own VERMAGIC_STRING, found in its .rodata
    compression: str | None  # None: the file was the uncompressed vmlinux
    modversions: bool  # __kcrctab present: the kernel was built with CONFIG_MODVERSIONS


# --- from the file to the ELF --------------------------------------------------------------------


def is_kernel_image(path: Path) -> bool:
    """Whether a file given as a kernel is an image: by name (so that a broken one is reported
    as a broken image) or by the bzImage setup header / ELF executable magic."""
    if path.name.startswith(_IMAGE_NAMES):
        return True
    try:
        with path.open("rb") as stream:
            head = stream.read(0x210)
    except OSError:
        return False
    return head[0x202:0x206] == _SETUP_MAGIC or (
        head[:4] == _ELF_MAGIC and len(head) > 17 and head[16] in (ET_EXEC, ET_DYN)
    )


def _setup_release(image: bytes) -> str | None:
    """The release the setup header's kernel_version string starts with."""
    (pointer,) = struct.unpack_from("<H", image, 0x20E)
    start = pointer + 0x200
    end = image.find(b"\0", start, start + 256) if pointer else -1
    words = image[start:end].split() if end > 0 else []
    return words[0].decode("ascii", errors="replace") if words else None


def payload_of(image: bytes, path: str) -> bytes:
    """The compressed vmlinux inside a bzImage, from the setup header's payload fields."""
    if len(image) < 0x250 or image[0x202:0x206] != _SETUP_MAGIC:
        raise KernelSourceError(
            f"{path}: not a kernel image (no bzImage setup header and not an ELF vmlinux)"
        )
    (version,) = struct.unpack_from("<H", image, 0x206)
    if version < 0x208:
        raise KernelSourceError(
            f"{path}: boot protocol {version >> 8}.{version & 0xFF:02d} "
            "has no payload fields (2.08 and later have)"
        )
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        raise KernelSourceError(
            f"{path}: truncated kernel image: payload ends at byte "
            f"{start + length}, file has {len(image)}"
        )
    return image[start : start + length]


def payload_kind(payload: bytes) -> str | None:
    """The compression of a payload, by its magic number."""
    for table in (_PAYLOAD_MAGIC, _UNREAD_KINDS):
        for magic, kind in table.items():
            if payload.startswith(magic):
                return kind
    return None


def decompress(payload: bytes, path: str) -> tuple[bytes, str]:
    """The vmlinux ELF and the payload's compression; every failure is one error line."""
    kind = payload_kind(payload)
    if kind is None or kind not in _PAYLOAD_MAGIC.values():
        raise KernelSourceError(
            f"{path}: kernel payload compressed with {kind or 'unknown'} "
            f"(magic {payload[:4].hex()}): pvfront reads "
            f"{', '.join(_PAYLOAD_MAGIC.values())}"
        )
    try:
        elf = _decompress_payload(payload)
    except compression.DecompressError as exc:  # corrupt, truncated, or no tool to read it
        raise KernelSourceError(f"{path}: kernel payload: {exc}") from None
    if elf[:4] != _ELF_MAGIC:
        raise KernelSourceError(f"{path}: the {kind} payload is not an ELF vmlinux")
    return elf, kind


# --- the ELF --------------------------------------------------------------------------------------


def _elf_identity(data: bytes, path: str) -> tuple[int, str]:
    """ELF class and struct byte order, checked, for a vmlinux."""
    elf_class = {1: 32, 2: 64}.get(data[4]) if len(data) > 6 else None
    order = {1: "<", 2: ">"}.get(data[5]) if len(data) > 6 else None
    if elf_class is None or order is None or len(data) < (64 if elf_class == 64 else 52):
        raise KernelSourceError(f"{path}: truncated or corrupt vmlinux ELF header")
    (e_type,) = struct.unpack_from(order + "H", data, 16)
    if e_type not in (ET_EXEC, ET_DYN):
        raise KernelSourceError(
            f"{path}: ELF type {e_type} is not a vmlinux (a module is "
            "REL; give the kernel, not a module)"
        )
    return elf_class, order


def parse_vmlinux(data: bytes, path: str) -> Vmlinux:
    """The section table of a vmlinux, checked against the size of what was decompressed."""
    elf_class, order = _elf_identity(data, path)
    (machine,) = struct.unpack_from(order + "H", data, 18)
    at = (0x28, 0x3A) if elf_class == 64 else (0x20, 0x2E)
    (e_shoff,) = struct.unpack_from(order + ("Q" if elf_class == 64 else "I"), data, at[0])
    _, e_shnum, e_shstrndx = struct.unpack_from(order + "HHH", data, at[1])
    shdr = _SHDR[(elf_class, order)]
    end = e_shoff + e_shnum * shdr.size
    if e_shnum == 0 or e_shstrndx >= e_shnum or end > len(data):
        raise KernelSourceError(
            f"{path}: truncated or corrupt vmlinux: section headers end at "
            f"byte {end}, the decompressed kernel has {len(data)}"
        )
    rows = list(shdr.iter_unpack(data[e_shoff:end]))
    names = rows[e_shstrndx]
    sections: dict[str, Section] = {}
    for row in rows:
        start = names[4] + row[0]
        name = data[start : data.find(b"\0", start, names[4] + names[5])]
        if row[1] == SHT_NOBITS or row[4] + row[5] > len(data):
            continue
        sections.setdefault(name.decode("ascii", errors="replace"), Section(row[3], row[4], row[5]))
    return Vmlinux(path, data, elf_class, order, machine, sections)


def _string_at(strings: Section, blob: bytes, addr: int) -> str | None:
    """The NUL-terminated string at a load address inside __ksymtab_strings, else None."""
    offset = addr - strings.addr
    if not 0 <= offset < strings.size:
        return None
    end = blob.find(b"\0", offset)
    return blob[offset:end].decode("utf-8", errors="replace") if end >= 0 else None


def _targets(elf: Vmlinux, table: Section, layout: _Layout) -> Iterator[tuple[int, ...]]:
    """For each entry, the addresses its name and namespace fields point at (0: none)."""
    width = 4 if layout.relative else elf.pointer_size
    code = {4: "i" if layout.relative else "I", 8: "Q"}[width]
    entry = width * layout.fields
    mask = (1 << elf.elf_class) - 1
    raw = elf.bytes_of(table)
    for index, fields in enumerate(struct.iter_unpack(elf.order + code * layout.fields, raw)):
        if not layout.relative:
            yield fields[1:]
            continue
        base = table.addr + index * entry
        # A zero offset would point at the field itself: the kernel reads it as "none".
        yield tuple(
            (base + width * i + value) & mask if value else 0 for i, value in enumerate(fields) if i
        )


def _decode(elf: Vmlinux, table: Section, layout: _Layout) -> list[tuple[str, str | None]] | None:
    """(name, namespace) of every entry of a ksymtab read with this layout; None if it does
    not fit: a name or namespace that does not point into __ksymtab_strings."""
    strings = elf.sections.get("__ksymtab_strings")
    if strings is None:
        raise KernelSourceError(f"{elf.path}: vmlinux has __ksymtab but no __ksymtab_strings")
    blob = elf.bytes_of(strings)
    entries = []
    for pointers in _targets(elf, table, layout):
        name = _string_at(strings, blob, pointers[0])
        namespace = (
            _string_at(strings, blob, pointers[1]) if len(pointers) > 1 and pointers[1] else ""
        )
        if not name or namespace is None:
            return None
        entries.append((name, namespace or None))
    return entries


def _entries(elf: Vmlinux, name: str, count: int | None) -> list[tuple[str, str | None]]:
    """The entries of one ksymtab, in the first layout that fits every entry (and the entry
    count the parallel CRC or flag table gives, when there is one)."""
    table = elf.sections[name]
    for layout in _LAYOUTS:
        size = (4 if layout.relative else elf.pointer_size) * layout.fields
        if table.size % size or (count is not None and table.size != count * size):
            continue
        entries = _decode(elf, table, layout)
        if entries is not None:
            return entries
    raise KernelSourceError(
        f"{elf.path}: cannot read {name} ({table.size} bytes) as struct "
        "kernel_symbol entries: corrupt vmlinux"
    )


def _parallel(elf: Vmlinux, name: str, width: int) -> list[int] | None:
    """A CRC (u32) or flag (u8) table, one item per ksymtab entry; None when absent."""
    section = elf.sections.get(name)
    if section is None:
        return None
    raw = elf.bytes_of(section)
    code = elf.order + ("I" if width == 4 else "B")
    return [row[0] for row in struct.iter_unpack(code, raw[: len(raw) - len(raw) % width])]


def _table_exports(elf: Vmlinux, table: str, crc_table: str, gpl: bool) -> list[KernelExport]:
    """The exports of one ksymtab with their CRCs and GPL-only flags."""
    crcs = _parallel(elf, crc_table, 4)
    flags = _parallel(elf, "__kflagstab", 1) if table == "__ksymtab" else None
    entries = _entries(
        elf, table, len(crcs) if crcs is not None else len(flags) if flags is not None else None
    )
    if flags is not None and len(flags) != len(entries):
        raise KernelSourceError(
            f"{elf.path}: __kflagstab has {len(flags)} entries for "
            f"{len(entries)} in __ksymtab: corrupt vmlinux"
        )
    return [
        KernelExport(
            name,
            crcs[i] if crcs is not None else None,
            VMLINUX,
            bool(flags[i] & KSYM_FLAG_GPL_ONLY) if flags is not None else gpl,
            namespace,
        )
        for i, (name, namespace) in enumerate(entries)
    ]


def vmlinux_exports(elf: Vmlinux) -> dict[str, KernelExport]:
    """Every export of vmlinux; the first table wins, as in the loader's search order."""
    exports: dict[str, KernelExport] = {}
    for table, crc_table, gpl in _TABLES:
        if elf.sections.get(table, Section(0, 0, 0)).size:
            for export in _table_exports(elf, table, crc_table, gpl):
                exports.setdefault(export.name, export)
    if not exports:
        raise KernelSourceError(
            f"{elf.path}: vmlinux has no __ksymtab: a kernel without "
            "modules support exports nothing"
        )
    return exports


# --- release and vermagic from the kernel's own strings -----------------------------------------


def _banner_release(data: bytes) -> str | None:
    """The release in linux_banner ("Linux version <release> (...)"), for a bare ELF."""
    found = re.search(rb"Linux version (\S+) \(", data)
    return found.group(1).decode("ascii", errors="replace") if found else None


def _vermagic(data: bytes, release: str | None) -> str | None:
    """The kernel's VERMAGIC_STRING (include/linux/vermagic.h), which check_modinfo() in
    kernel/module/main.c compares each module's with: "<release> SMP preempt ... " with its
    trailing space, stored as a string of its own in .rodata."""
    if not release:
        return None
    needle = b"\0" + release.encode() + b" "
    shape = re.compile(re.escape(release.encode()) + rb" (?:[\w.-]+ )*\0")
    at = data.find(needle)
    while at >= 0:
        found = shape.match(data, at + 1)
        if found:
            return found.group(0)[:-1].decode("ascii")
        at = data.find(needle, at + 1)
    return None


def read_image(path: Path) -> ImageExports:
    """vmlinux's exports and identity from a bzImage or an uncompressed vmlinux."""
    image = read_input(path, KernelSourceError)
    if image[:4] == _ELF_MAGIC:
        elf_data, compression, release = image, None, None
    else:
        elf_data, compression = decompress(payload_of(image, str(path)), str(path))
        release = _setup_release(image)
    elf = parse_vmlinux(elf_data, str(path))
    release = release or _banner_release(elf_data)
    return ImageExports(
        vmlinux_exports(elf),
        elf.machine,
        release,
        _vermagic(elf_data, release),
        compression,
        "__kcrctab" in elf.sections or "__kcrctab_gpl" in elf.sections,
    )
