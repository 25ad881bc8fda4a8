"""Read Linux kernel modules (.ko, .ko.xz, .ko.gz, .ko.zst) into a summary symcheck can use.

The summary holds what the kernel's loader looks at: the ELF identity (class, byte order,
machine, type), `.modinfo`, the `__versions` table, the undefined symbols with their binding,
the module's own exports with licence, namespace and CRC, and the size of
`.gnu.linkonce.this_module` (the kernel's `struct module`, checked by 6.4+).

Why not pyelftools here: it costs about 1 ms per module just to walk the section headers,
which alone is 4 s for a 4,000-module tree (depmod takes 0.4 s). This reader unpacks the
section headers and the symbol table with `struct`, and the tests check its results against
pyelftools on real modules of every target.

How exports are recorded, checked on Debian 5.10, 6.1 and 6.12 modules: every export X has a
local symbol `__ksymtab_X` in section `__ksymtab` or `__ksymtab_gpl` (the section gives the
licence), `__kstrtabns_X` pointing at its namespace string in `__ksymtab_strings` (empty: no
namespace), and `__crc_X`: an absolute symbol whose value is the CRC on 5.10, a symbol in
`__kcrctab[_gpl]` whose value is the offset of a 32-bit CRC from 5.19 on. From 7.x every
export is in the one `__ksymtab` and a `__flags_X` byte in `__kflagstab` carries GPL-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from pvfront import architectures, compression
from pvfront.errors import PvfrontError, read_input

ET_REL = 1
ELF_TYPE_NAMES = {0: "NONE", 1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}

SHT_SYMTAB = 2
SHT_NOBITS = 8
KSYM_FLAG_GPL_ONLY = 1
SHN_UNDEF = 0
SHN_ABS = 0xFFF1
STB_WEAK = 2

#: One `struct modversion_info`: `unsigned long crc` then the name, 64 bytes in all.
MODVERSION_SIZE = 64

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
_SUFFIXES_LONGEST_FIRST = sorted(MODULE_SUFFIXES, key=len, reverse=True)

# Field layouts by (class, byte order).
_SHDR = {  # name type flags addr offset size link info addralign entsize
    (64, "<"): struct.Struct("<IIQQQQIIQQ"),
    (64, ">"): struct.Struct(">IIQQQQIIQQ"),
    (32, "<"): struct.Struct("<IIIIIIIIII"),
    (32, ">"): struct.Struct(">IIIIIIIIII"),
}
_SYM_SIZE = {64: 24, 32: 16}


class ModuleFormatError(PvfrontError):
    """A file that cannot be read as a kernel module: corrupt, truncated or not a module."""


@dataclass(frozen=True, slots=True)
class Export:
    """A symbol a module exports."""

    name: str
    gpl: bool
    namespace: str | None
    crc: int | None  # None when the module was built without modversions


# An Export as a plain (name, gpl, namespace, crc) row: rows load from the cache far faster.
ExportRow: TypeAlias = tuple[str, bool, str | None, int | None]


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What the kernel's loader reads from one module file.

    `imports` are the undefined symbols in symbol-table order (the order the kernel resolves
    them in), as plain strings; `weak` names those bound weakly, which need not resolve.
    `versions` is the `__versions` table, or None when the module has no such section.
    """

    path: str
    elf_class: int  # 32 or 64
    machine: int
    shentsize_ok: bool
    modinfo: tuple[tuple[str, str], ...]
    versions: dict[str, int] | None
    imports: tuple[str, ...]
    weak: frozenset[str]
    export_table: tuple[ExportRow, ...]
    this_module_size: int | None
    symtab_count: int

    def info(self, key: str) -> str | None:
        """The first value of a `.modinfo` key, as the kernel's get_modinfo() returns it."""
        for k, v in self.modinfo:
            if k == key:
                return v
        return None

    def info_all(self, key: str) -> list[str]:
        return [v for k, v in self.modinfo if k == key]

    @property
    def exports(self) -> tuple[Export, ...]:
        """The symbols this module exports."""
        return tuple(Export(*row) for row in self.export_table)

    @property
    def name(self) -> str:
        """The module name the kernel uses: `.modinfo` name=, else the file name with '_'."""
        found = self.info("name")
        if found:
            return found
        return module_name_from_path(self.path)

    @property
    def vermagic(self) -> str | None:
        return self.info("vermagic")

    @property
    def license(self) -> str | None:
        return self.info("license")

    @property
    def import_ns(self) -> list[str]:
        return self.info_all("import_ns")

    @property
    def depends(self) -> list[str]:
        value = self.info("depends")
        return [d for d in value.split(",") if d] if value else []

    @property
    def machine_name(self) -> str:
        return architectures.machine_name(self.machine)

    @property
    def required(self) -> tuple[str, ...]:
        """Undefined symbols that must resolve (not weak), in the kernel's order."""
        weak = self.weak
        return tuple(s for s in self.imports if s not in weak) if weak else self.imports


def module_name_from_path(path: str | Path) -> str:
    base = os.path.basename(path)
    for suffix in _SUFFIXES_LONGEST_FIRST:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


#: A module file's compression suffix -> the format it promises.
_SUFFIX_FORMATS = {".ko.xz": "xz", ".ko.gz": "gzip", ".ko.zst": "zstd"}
#: The formats a module can be compressed with (kmod reads these three).
_MODULE_FORMATS = frozenset(_SUFFIX_FORMATS.values())


def decompress(data: bytes, path: str) -> bytes:
    """The ELF image inside a possibly compressed module file.

    The format is the one the magic number says (xz, gzip, zstd; anything else is taken as
    it is); a name ending in .ko.xz, .ko.gz or .ko.zst must hold that format. Every failure
    is one ModuleFormatError naming the file.
    """
    kind = compression.sniff(data)
    promised = next((k for s, k in _SUFFIX_FORMATS.items() if path.endswith(s)), None)
    if promised is not None and kind != promised:
        raise ModuleFormatError(
            f"{path}: not {promised} data, as its name says "
            f"(it starts with {data[:6].hex() or 'nothing'})"
        )
    if kind not in _MODULE_FORMATS:
        return data
    try:
        return compression.decompress(kind, data)
    except compression.DecompressError as exc:
        raise ModuleFormatError(f"{path}: {exc}") from None


def read_bytes(path: str | Path) -> bytes:
    """A module file's ELF image; every failure is one ModuleFormatError naming the file."""
    return decompress(read_input(path, ModuleFormatError), str(path))


def read_module(path: str | Path) -> ModuleInfo:
    """Read and summarise one module file."""
    return parse_module(read_bytes(path), str(path))


def _cstr(data: bytes, start: int, limit: int, path: str, what: str) -> str:
    end = data.find(b"\0", start, limit)
    if end < 0:
        raise ModuleFormatError(f"{path}: {what} is not NUL-terminated")
    return data[start:end].decode("utf-8", errors="replace")


def parse_module(data: bytes, path: str = "<memory>") -> ModuleInfo:
    """Summarise an uncompressed ELF image; raise ModuleFormatError if it is not a module."""
    size = len(data)
    if size < 16 or data[:4] != b"\x7fELF":
        raise ModuleFormatError(
            f"{path}: not an ELF file"
            if size >= 4 and data[:4] != b"\x7fELF"
            else f"{path}: truncated ELF header ({size} bytes)"
        )
    elf_class = {1: 32, 2: 64}.get(data[4])
    order = {1: "<", 2: ">"}.get(data[5])
    if elf_class is None or order is None:
        raise ModuleFormatError(
            f"{path}: corrupt ELF identification (class {data[4]}, data encoding {data[5]})"
        )
    header_size = 64 if elf_class == 64 else 52
    if size < header_size:
        raise ModuleFormatError(f"{path}: truncated ELF header ({size} bytes)")
    e_type, e_machine = struct.unpack_from(order + "HH", data, 16)
    if elf_class == 64:
        (e_shoff,) = struct.unpack_from(order + "Q", data, 0x28)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    else:
        (e_shoff,) = struct.unpack_from(order + "I", data, 0x20)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from(order + "HHH", data, 0x2E)
    if architectures.for_elf_machine(e_machine) is None:
        raise ModuleFormatError(
            f"{path}: wrong architecture: {architectures.machine_name(e_machine)} "
            f"(pvfront's targets are {architectures.supported_machine_names()})"
        )
    if e_type != ET_REL:
        kind = ELF_TYPE_NAMES.get(e_type, str(e_type))
        raise ModuleFormatError(f"{path}: not a kernel module (ELF type {kind}, modules are REL)")
    shdr = _SHDR[(elf_class, order)]
    if e_shnum == 0 or e_shoff == 0:
        raise ModuleFormatError(f"{path}: ELF file has no section headers")
    end = e_shoff + e_shnum * shdr.size
    if end > size:
        raise ModuleFormatError(
            f"{path}: truncated: section headers end at byte {end}, file has {size}"
        )
    sections = list(shdr.iter_unpack(data[e_shoff:end]))
    if e_shstrndx >= e_shnum:
        raise ModuleFormatError(
            f"{path}: corrupt ELF: section name index {e_shstrndx} >= {e_shnum} sections"
        )
    # Each tuple: (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    names_off, names_size = sections[e_shstrndx][4], sections[e_shstrndx][5]
    if names_off + names_size > size:
        raise ModuleFormatError(f"{path}: truncated: section names end past the end of file")
    names_end = names_off + names_size
    find = data.find
    by_name: dict[str, int] = {}
    sec_names: list[str] = []
    for index, sec in enumerate(sections):
        if index and sec[1] != SHT_NOBITS and sec[4] + sec[5] > size:
            raise ModuleFormatError(
                f"{path}: truncated: section {index} ends at byte "
                f"{sec[4] + sec[5]}, file has {size}"
            )
        start = names_off + sec[0]
        end = find(b"\0", start, names_end)
        if sec[0] >= names_size or end < 0:
            raise ModuleFormatError(f"{path}: corrupt ELF: section {index} name out of range")
        name = data[start:end].decode("utf-8", errors="replace")
        sec_names.append(name)
        by_name.setdefault(name, index)

    if ".modinfo" not in by_name and ".gnu.linkonce.this_module" not in by_name:
        raise ModuleFormatError(
            f"{path}: not a kernel module (no .modinfo and no .gnu.linkonce.this_module section)"
        )

    def section_bytes(index: int) -> bytes:
        sec = sections[index]
        if sec[1] == SHT_NOBITS:
            return b""
        return data[sec[4] : sec[4] + sec[5]]

    modinfo: list[tuple[str, str]] = []
    if ".modinfo" in by_name:
        for entry in section_bytes(by_name[".modinfo"]).split(b"\0"):
            if entry:
                key, _, value = entry.decode("utf-8", errors="replace").partition("=")
                modinfo.append((key, value))

    versions: dict[str, int] | None = None
    if "__versions" in by_name:
        table = section_bytes(by_name["__versions"])
        slot = struct.Struct(order + ("Q56s" if elf_class == 64 else "I60s"))
        usable = len(table) - len(table) % MODVERSION_SIZE
        versions = {}
        for crc, raw_name in slot.iter_unpack(table[:usable]):
            name = raw_name.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            # The kernel compares 32 bits; the upper half of a 64-bit slot is padding.
            versions.setdefault(name, crc & 0xFFFFFFFF)

    symtabs = [i for i, sec in enumerate(sections) if sec[1] == SHT_SYMTAB]
    imports: list[str] = []
    weak: set[str] = set()
    exports: list[ExportRow] = []
    if symtabs:
        imports, weak, exports = _read_symbols(
            data, path, elf_class, order, sections, sec_names, symtabs[0]
        )

    this_module = by_name.get(".gnu.linkonce.this_module")
    return ModuleInfo(
        path=path,
        elf_class=elf_class,
        machine=e_machine,
        shentsize_ok=e_shentsize == shdr.size,
        modinfo=tuple(modinfo),
        versions=versions,
        imports=tuple(imports),
        weak=frozenset(weak),
        export_table=tuple(exports),
        this_module_size=sections[this_module][5] if this_module is not None else None,
        symtab_count=len(symtabs),
    )


def _read_symbols(
    data: bytes,
    path: str,
    elf_class: int,
    order: str,
    sections: list[tuple],
    sec_names: list[str],
    symtab_index: int,
) -> tuple[list[str], set[str], list[ExportRow]]:
    """Undefined symbols (in order), the weak ones, and the exports, from the symbol table.

    Unpacks fields with one iter_unpack over the whole table and touches only the names it
    needs: the table of a large module has thousands of entries.
    """
    symtab = sections[symtab_index]
    link = symtab[6]
    if link >= len(sections):
        raise ModuleFormatError(f"{path}: corrupt ELF: symbol table links to missing section")
    str_off, str_size = sections[link][4], sections[link][5]
    strtab = data[str_off : str_off + str_size]
    entsize = _SYM_SIZE[elf_class]
    raw = data[symtab[4] : symtab[4] + symtab[5] - symtab[5] % entsize]
    # Field positions of (st_name, st_info, st_shndx, st_value) in each class's Elf_Sym.
    if elf_class == 64:
        rows = struct.iter_unpack(order + "IBBHQQ", raw)  # name info other shndx value size
        n_at, i_at, s_at, v_at = 0, 1, 3, 4
    else:
        rows = struct.iter_unpack(order + "IIIBBH", raw)  # name value size info other shndx
        n_at, i_at, s_at, v_at = 0, 3, 5, 1

    imports: list[str] = []
    weak: set[str] = set()
    ksymtab: dict[str, int] = {}  # export name -> section index of its __ksymtab_ symbol
    kstrtabns: dict[str, tuple[int, int]] = {}
    crcs: dict[str, tuple[int, int]] = {}
    flags: dict[str, tuple[int, int]] = {}  # 7.x: __flags_X, a byte in __kflagstab
    find = strtab.find
    startswith = strtab.startswith
    next(rows, None)  # entry 0 is the null symbol
    for row in rows:
        name_off = row[n_at]
        if name_off >= str_size:
            raise ModuleFormatError(
                f"{path}: corrupt ELF: symbol name offset {name_off} outside the string table"
            )
        shndx = row[s_at]
        if (
            shndx != SHN_UNDEF
            and not startswith(b"__k", name_off)
            and not startswith(b"__crc_", name_off)
            and not startswith(b"__flags_", name_off)
        ):
            continue  # most symbols: local code and data, of no interest here
        end = find(b"\0", name_off)
        if end < 0:
            raise ModuleFormatError(f"{path}: corrupt ELF: symbol name not NUL-terminated")
        if end == name_off:
            continue
        name = strtab[name_off:end].decode("utf-8", errors="replace")
        if shndx == SHN_UNDEF:
            imports.append(name)
            if row[i_at] >> 4 == STB_WEAK:
                weak.add(name)
        elif name.startswith("__ksymtab_"):
            ksymtab[name[10:]] = shndx
        elif name.startswith("__kstrtabns_"):
            kstrtabns[name[12:]] = (shndx, row[v_at])
        elif name.startswith("__crc_"):
            crcs[name[6:]] = (shndx, row[v_at])
        elif name.startswith("__flags_"):
            flags[name[8:]] = (shndx, row[v_at])

    exports: list[ExportRow] = []
    for name, shndx in ksymtab.items():
        if shndx >= len(sections):
            raise ModuleFormatError(f"{path}: corrupt ELF: __ksymtab_{name} in missing section")
        section = sec_names[shndx]
        if not section.startswith("__ksymtab"):
            continue  # a symbol that merely looks like a ksymtab entry
        namespace = None
        if name in kstrtabns:
            ns_shndx, ns_value = kstrtabns[name]
            if ns_shndx < len(sections) and sections[ns_shndx][1] != SHT_NOBITS:
                base, limit = sections[ns_shndx][4], sections[ns_shndx][4] + sections[ns_shndx][5]
                if base + ns_value < limit:
                    namespace = _cstr(data, base + ns_value, limit, path, "namespace") or None
        gpl = section.startswith("__ksymtab_gpl") or _gpl_flag(
            data, sections, flags.get(name), path
        )
        exports.append((name, gpl, namespace, _crc_value(data, order, sections, crcs.get(name))))
    return imports, weak, exports


def _gpl_flag(data: bytes, sections: list[tuple], where: tuple[int, int] | None, path: str) -> bool:
    """From 7.x one __ksymtab holds every export and a `__flags_X` byte in __kflagstab says
    whether X is GPL-only (KSYM_FLAG_GPL_ONLY, include/linux/module_symbol.h)."""
    if where is None:
        return False
    shndx, value = where
    if shndx >= len(sections) or sections[shndx][1] == SHT_NOBITS:
        raise ModuleFormatError(f"{path}: corrupt ELF: export flags in a missing section")
    offset, size = sections[shndx][4], sections[shndx][5]
    if value >= size or offset + value >= len(data):
        raise ModuleFormatError(f"{path}: corrupt ELF: export flags outside __kflagstab")
    return bool(data[offset + value] & KSYM_FLAG_GPL_ONLY)


def _crc_value(
    data: bytes, order: str, sections: list[tuple], where: tuple[int, int] | None
) -> int | None:
    if where is None:
        return None
    shndx, value = where
    if shndx == SHN_ABS:
        return value & 0xFFFFFFFF
    if shndx >= len(sections) or sections[shndx][1] == SHT_NOBITS:
        return None
    offset = sections[shndx][4] + value
    if value + 4 > sections[shndx][5]:
        return None
    crc: int = struct.unpack_from(order + "I", data, offset)[0]
    return crc


# --- reading many modules: a persistent cache and both cores ---------------------------------

#: Bump when ModuleInfo or the parser changes: older cache files are then ignored.
CACHE_FORMAT = 3


@dataclass
class ScanResult:
    """Modules read from many files, and the files that could not be read (path -> problem)."""

    modules: dict[str, ModuleInfo]
    errors: dict[str, str]
    parsed: int = 0  # how many were parsed rather than taken from the cache


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _read_one(path: str) -> tuple[str, ModuleInfo | None, str | None]:
    try:
        return path, read_module(path), None
    except ModuleFormatError as exc:
        return path, None, str(exc)


def _read_chunk(paths: list[str]) -> list[tuple[str, ModuleInfo | None, str | None]]:
    return [_read_one(p) for p in paths]


def _cache_file(cache_dir: Path, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"modules-{digest}.pickle"


def _load_cache(path: Path) -> dict[str, tuple[tuple[int, int, int], ModuleInfo]]:
    try:
        with path.open("rb") as handle:
            data = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    entries: dict[str, tuple[tuple[int, int, int], ModuleInfo]] = data.get("entries", {})
    return entries


def _store_cache(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".tmp{os.getpid()}")
    with temp.open("wb") as handle:
        pickle.dump(
            {"format": CACHE_FORMAT, "entries": entries}, handle, protocol=pickle.HIGHEST_PROTOCOL
        )
    os.replace(temp, path)  # readers see the old file or the new one, never half of one


def read_modules(
    paths: Sequence[str | Path],
    *,
    cache_dir: Path | None = None,
    cache_key: str | None = None,
    jobs: int = 2,
) -> ScanResult:
    """Read many modules, reusing a cache keyed by file identity and parsing on `jobs` cores.

    A file is taken from the cache only if its path, size, mtime_ns and inode are unchanged.
    Unreadable files land in `errors` instead of stopping the scan.
    """
    strs = [str(p) for p in paths]
    cache_path = (
        _cache_file(cache_dir, cache_key or "\0".join(sorted(strs)))
        if cache_dir is not None
        else None
    )
    cached = _load_cache(cache_path) if cache_path is not None else {}
    modules: dict[str, ModuleInfo] = {}
    errors: dict[str, str] = {}
    identities: dict[str, tuple[int, int, int]] = {}
    todo: list[str] = []
    for path in strs:
        try:
            identity = _identity(os.stat(path))
        except OSError:
            todo.append(path)  # read_module reports the problem in its own words
            continue
        identities[path] = identity
        hit = cached.get(path)
        if hit is not None and hit[0] == identity:
            modules[path] = hit[1]
        else:
            todo.append(path)
    if todo:
        for path, info, error in _parse_many(todo, jobs):
            if info is not None:
                modules[path] = info
            else:
                errors[path] = error or "unreadable"
    if cache_path is not None and (todo or len(cached) != len(modules)):
        entries = {p: (identities[p], m) for p, m in modules.items() if p in identities}
        # A cache that cannot be written only costs time.
        with contextlib.suppress(OSError):
            _store_cache(cache_path, entries)
    ordered = {p: modules[p] for p in strs if p in modules}
    return ScanResult(ordered, errors, parsed=len(todo))


def read_all(paths: Sequence[str | Path], *, jobs: int = 2) -> list[ModuleInfo]:
    """The modules at these paths, in the order given, read as read_modules() reads a tree;
    the first that cannot be read raises its ModuleFormatError (someone named them all)."""
    scan = read_modules(paths, jobs=jobs)
    for path in map(str, paths):
        if path in scan.errors:
            raise ModuleFormatError(scan.errors[path])
    return [scan.modules[str(path)] for path in paths]


def _parse_many(paths: list[str], jobs: int) -> list[tuple[str, ModuleInfo | None, str | None]]:
    # Below a few hundred files a second process costs more than it saves.
    if jobs <= 1 or len(paths) < 200:
        return [_read_one(p) for p in paths]
    import multiprocessing

    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    # Interleave so both workers get a mix of big and small modules.
    chunks = [paths[i :: jobs * 4] for i in range(jobs * 4)]
    with context.Pool(jobs) as pool:
        results = pool.map(_read_chunk, chunks)
    return [item for chunk in results for item in chunk]
