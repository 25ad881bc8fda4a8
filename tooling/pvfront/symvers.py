"""What a kernel exports, read from whatever describes it: a provisioned target, a headers tree,
a /lib/modules/<release> tree, a Module.symvers[.gz] file or a System.map.

The result is a `Kernel`: its exports (vmlinux's and its in-tree modules'), with CRC, licence
and namespace when the source records them, plus what the loader compares a module with
(architecture, vermagic, size of struct module) and the loader's configuration. A source that
cannot tell something says so in `Kernel.notes` rather than guessing silently.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pvfront import architectures
from pvfront.elf import MODULE_SUFFIXES, ModuleInfo, module_name_from_path
from pvfront.errors import PvfrontError, read_input
from pvfront.kerneltree import KernelTree, parse_config

VMLINUX = "vmlinux"


class KernelSourceError(PvfrontError):
    """A kernel description that cannot be read: missing, empty or malformed."""


@dataclass(frozen=True, slots=True)
class KernelExport:
    """One exported symbol as the kernel would find it."""

    name: str
    crc: int | None  # None: the source cannot tell (System.map) or no modversions
    owner: str  # "vmlinux" or the exporting module's name
    gpl: bool | None  # None: the source cannot tell
    namespace: str | None


@dataclass(frozen=True)
class LoaderConfig:
    """The loader settings that change a verdict, from the kernel's .config."""

    force_load: bool = True  # CONFIG_MODULE_FORCE_LOAD: missing versions only taint
    allow_missing_namespace_imports: bool = False
    known: bool = False  # False: Debian's defaults assumed, no .config was found


@dataclass
class Kernel:
    """Everything symcheck compares a module with."""

    label: str
    source: str  # what the exports came from, e.g. "Module.symvers", "System.map"
    exports: dict[str, KernelExport]
    release: str | None = None
    machine: int | None = None
    vermagic: str | None = None
    module_struct_size: int | None = None
    config: LoaderConfig = field(default_factory=LoaderConfig)
    modules_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    checks_crcs: bool = True
    checks_licences: bool = True
    checks_namespaces: bool = True

    @property
    def version(self) -> tuple[int, int] | None:
        """(major, minor) of the release, which selects version-specific loader behaviour."""
        if not self.release:
            return None
        found = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(found.group(1)), int(found.group(2))) if found else None

    def vmlinux_only(self) -> Kernel:
        """The same kernel with no module loaded: only vmlinux's own exports."""
        exports = {k: v for k, v in self.exports.items() if v.owner == VMLINUX}
        return replace(self, exports=exports, notes=list(self.notes))

    def with_module_exports(
        self, modules: Iterable[ModuleInfo], *, replace_existing: bool = True
    ) -> Kernel:
        """This kernel plus the exports of these modules (as if they were all loaded)."""
        exports = dict(self.exports)
        for module in modules:
            owner = module.name
            for export in module.exports:
                if replace_existing or export.name not in exports:
                    exports[export.name] = KernelExport(
                        export.name, export.crc, owner, export.gpl, export.namespace
                    )
        return replace(self, exports=exports, notes=list(self.notes))

    def module_files(self) -> dict[str, str]:
        """In-tree module files by module name, when a module tree is known."""
        if self.modules_dir is None:
            return {}
        return module_files(self.modules_dir)


# --- Module.symvers ---------------------------------------------------------------------------

_EXPORT_KINDS = {
    "EXPORT_SYMBOL": False,
    "EXPORT_SYMBOL_GPL": True,
    "EXPORT_SYMBOL_GPL_FUTURE": False,  # until 5.11: GPL-only "in the future", usable now
    "EXPORT_UNUSED_SYMBOL": False,
    "EXPORT_UNUSED_SYMBOL_GPL": True,
}


def read_text(path: Path) -> str:
    """A text file, gunzipped when it is gzip data; one KernelSourceError when unreadable."""
    raw = read_input(path, KernelSourceError)
    if raw.startswith(b"\x1f\x8b"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise KernelSourceError(f"{path}: corrupt gzip data: {exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KernelSourceError(
            f"{path}: not a text file ({exc.reason} at byte {exc.start})"
        ) from None


def parse_symvers(text: str, path: str, *, owners: str = "all") -> dict[str, KernelExport]:
    """Parse Module.symvers in any of its layouts, line by line.

    - before 5.4:  crc  symbol  module  export
    - 5.4 only:    crc  symbol  namespace  module  export
    - 5.5 on:      crc  symbol  module  export  namespace   (namespace may be empty)

    `owners="vmlinux"` keeps only vmlinux's own exports (as depmod -E does).
    """
    exports: dict[str, KernelExport] = {}
    lines = text.splitlines()
    if not lines:
        raise KernelSourceError(f"{path}: empty Module.symvers")
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) < 4:
            fields = line.split()
        if not line.strip():
            raise KernelSourceError(f"{path}:{number}: empty line")
        if len(fields) == 4:
            crc_text, name, owner_path, kind = fields
            namespace = ""
        elif len(fields) == 5 and fields[3] in _EXPORT_KINDS:
            crc_text, name, owner_path, kind, namespace = fields
        elif len(fields) == 5 and fields[4] in _EXPORT_KINDS:
            crc_text, name, namespace, owner_path, kind = fields
        else:
            raise KernelSourceError(f"{path}:{number}: malformed line: {line[:80]!r}")
        if kind not in _EXPORT_KINDS:
            raise KernelSourceError(f"{path}:{number}: unknown export type {kind!r}")
        try:
            crc = int(crc_text, 16)
        except ValueError:
            raise KernelSourceError(f"{path}:{number}: bad CRC {crc_text!r}") from None
        if not name or not owner_path:
            raise KernelSourceError(f"{path}:{number}: malformed line: {line[:80]!r}")
        if owner_path == VMLINUX:
            owner = VMLINUX
        elif owners == VMLINUX:
            continue
        else:
            owner = module_name_from_path(owner_path)
        exports.setdefault(
            name,
            KernelExport(name, crc & 0xFFFFFFFF, owner, _EXPORT_KINDS[kind], namespace or None),
        )
    return exports


# --- System.map ------------------------------------------------------------------------------

_MAP_LINE = re.compile(r"^([0-9a-fA-F]+) ([A-Za-z?]) (\S+)$")


def parse_system_map(text: str, path: str) -> tuple[dict[str, KernelExport], bool]:
    """Exports from a System.map, and whether it listed them (`__ksymtab_` entries).

    Without `__ksymtab_` entries (Debian's case) every global symbol is taken as exported:
    a check against it can find unknown symbols but is lenient about unexported ones.
    """
    ksymtab: dict[str, KernelExport] = {}
    globals_: dict[str, KernelExport] = {}
    lines = text.splitlines()
    if not lines:
        raise KernelSourceError(f"{path}: empty System.map")
    if len(lines) == 1 and "The real System.map is in" in lines[0]:
        raise KernelSourceError(
            f"{path}: Debian's placeholder System.map (the real one is in "
            "the linux-image-<version>-dbg package)"
        )
    for number, line in enumerate(lines, 1):
        found = _MAP_LINE.match(line)
        if not found:
            raise KernelSourceError(f"{path}:{number}: malformed line: {line[:80]!r}")
        kind, name = found.group(2), found.group(3)
        if name.startswith("__ksymtab_"):
            sym = name[len("__ksymtab_") :]
            ksymtab.setdefault(sym, KernelExport(sym, None, VMLINUX, None, None))
        elif kind.isupper() and kind not in "AU":
            globals_.setdefault(name, KernelExport(name, None, VMLINUX, None, None))
    return (ksymtab, True) if ksymtab else (globals_, False)


# --- .config, release, vermagic --------------------------------------------------------------


def loader_config(config: Mapping[str, str]) -> LoaderConfig:
    return LoaderConfig(
        force_load=config.get("CONFIG_MODULE_FORCE_LOAD") == "y",
        allow_missing_namespace_imports=(
            config.get("CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS") == "y"
        ),
        known=True,
    )


def machine_from_config(config: Mapping[str, str]) -> int | None:
    arch = architectures.for_kernel_config(config)
    return arch.elf_machine if arch else None


def vermagic_from_config(release: str, config: Mapping[str, str]) -> str | None:
    """VERMAGIC_STRING (include/linux/vermagic.h) for a kernel of one of pvfront's
    architectures, or None if unknowable."""

    def on(option: str) -> bool:
        return config.get(f"CONFIG_{option}") == "y"

    if on("RANDSTRUCT") or on("GCC_PLUGIN_RANDSTRUCT"):
        return None  # the seed's hash is part of it and is not in the headers we read
    parts = [release + " "]
    if on("SMP"):
        parts.append("SMP ")
    # 5.10 tests CONFIG_PREEMPT, 6.x CONFIG_PREEMPT_BUILD (which CONFIG_PREEMPT selects).
    if on("PREEMPT_BUILD") or on("PREEMPT"):
        parts.append("preempt ")
    elif on("PREEMPT_RT"):
        parts.append("preempt_rt ")
    if on("MODULE_UNLOAD"):
        parts.append("mod_unload ")
    if on("MODVERSIONS"):
        parts.append("modversions ")
    arch = architectures.for_kernel_config(config)
    arch_part = arch.module_vermagic(config) if arch else None
    if arch_part is None:
        return None
    parts.append(arch_part)
    return "".join(parts)


def release_of_headers(headers: Path) -> str | None:
    """UTS_RELEASE of a headers tree (Debian's include/config/kernel.release holds the upstream
    version, 6.1.192, not the release 6.1.0-56-amd64 that vermagic carries)."""
    try:
        text = (headers / "include" / "generated" / "utsrelease.h").read_text()
    except OSError:
        text = ""
    found = re.search(r'UTS_RELEASE\s+"([^"]+)"', text)
    if found:
        return found.group(1)
    try:
        return (headers / "include" / "config" / "kernel.release").read_text().strip() or None
    except OSError:
        return None


# --- module trees ------------------------------------------------------------------------------


def module_files(modules_dir: Path) -> dict[str, str]:
    """Module files under a /lib/modules/<release> tree, by module name (first found wins)."""
    found: dict[str, str] = {}
    top = str(modules_dir)
    for dirpath, dirnames, filenames in os.walk(top):
        # build/ and source/ point at headers, not modules (depmod skips them too).
        if dirpath == top:
            dirnames[:] = [d for d in dirnames if d not in ("build", "source")]
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.endswith(MODULE_SUFFIXES):
                found.setdefault(module_name_from_path(filename), f"{dirpath}/{filename}")
    return found


def module_file_list(modules_dir: Path) -> list[str]:
    return list(module_files(modules_dir).values())


def reference_module(modules_dir: Path) -> Path | None:
    """One in-tree module: its vermagic and struct module size are the kernel's own."""
    order = modules_dir / "modules.order"
    try:
        lines = order.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines[:50]:
        base = modules_dir / line.strip()
        for suffix in ("", ".xz", ".zst", ".gz"):
            candidate = Path(str(base) + suffix)
            if candidate.is_file():
                return candidate
    files = module_files(modules_dir)
    first = next(iter(files.values()), None)
    return Path(first) if first else None


# --- putting a kernel together from what is on disk ---------------------------------------------


def _read_config(path: Path) -> dict[str, str] | None:
    try:
        return parse_config(path.read_text(errors="replace"))
    except OSError:
        return None


def _apply_reference(kernel: Kernel, modules_dir: Path | None) -> None:
    """Take vermagic, struct module size and machine from one in-tree module of the kernel."""
    if modules_dir is None:
        return
    ref = reference_module(modules_dir)
    if ref is None:
        return
    from pvfront.elf import ModuleFormatError, read_module

    try:
        info = read_module(ref)
    except ModuleFormatError as exc:
        kernel.notes.append(f"in-tree module unreadable, vermagic taken from .config: {exc}")
        return
    kernel.vermagic = info.vermagic or kernel.vermagic
    kernel.module_struct_size = info.this_module_size
    kernel.machine = info.machine


def _finish_from_headers(kernel: Kernel, headers: Path) -> None:
    config = _read_config(headers / ".config")
    if config is not None:
        kernel.config = loader_config(config)
        kernel.machine = kernel.machine or machine_from_config(config)
        if kernel.release and kernel.vermagic is None:
            kernel.vermagic = vermagic_from_config(kernel.release, config)
        if config.get("CONFIG_MODVERSIONS") != "y":
            _drop_crcs(kernel)


def _drop_crcs(kernel: Kernel) -> None:
    """Without CONFIG_MODVERSIONS modpost writes 0x00000000 for every CRC of Module.symvers
    and the loader compares none (kernel/module/internal.h: check_version() is `return 1`):
    those zeros are not versions, and a module built with modversions must not fail on them."""
    kernel.exports = {name: replace(export, crc=None) for name, export in kernel.exports.items()}
    kernel.notes.append("kernel built without CONFIG_MODVERSIONS: no symbol CRCs to check")


def _symvers_kernel(label: str, symvers: Path, *, owners: str = "all") -> Kernel:
    exports = parse_symvers(read_text(symvers), str(symvers), owners=owners)
    return Kernel(label=label, source=f"Module.symvers ({symvers})", exports=exports)


def _with_tree_exports(kernel: Kernel, modules_dir: Path | None, cache_dir: Path | None) -> Kernel:
    """Add the exports of a tree's in-tree modules: a source that describes vmlinux alone
    (System.map, the image's ksymtab) knows nothing of them, and modprobe loads them on demand."""
    if modules_dir is None:
        kernel.notes.append("no module tree found: exports of in-tree modules are unknown")
        return kernel
    from pvfront.elf import read_modules

    scan = read_modules(
        module_file_list(modules_dir), cache_dir=cache_dir, cache_key=str(modules_dir)
    )
    kernel = kernel.with_module_exports(scan.modules.values(), replace_existing=False)
    kernel.notes.append(f"exports of modules come from the module tree {modules_dir}")
    for path, problem in sorted(scan.errors.items()):
        kernel.notes.append(f"skipped unreadable in-tree module: {problem or path}")
    return kernel


def _system_map_kernel(
    label: str, system_map: Path, modules_dir: Path | None, cache_dir: Path | None
) -> Kernel:
    exports, listed = parse_system_map(read_text(system_map), str(system_map))
    kernel = Kernel(
        label=label,
        source=f"System.map ({system_map})",
        exports=exports,
        checks_crcs=False,
        checks_licences=False,
        checks_namespaces=False,
    )
    kernel.notes.append("System.map fallback: CRCs, licences and namespaces are not checked")
    if not listed:
        kernel.notes.append(
            "System.map has no __ksymtab_ entries: every global vmlinux symbol counts as exported"
        )
    return _with_tree_exports(kernel, modules_dir, cache_dir)


def _image_kernel(label: str, image: Path) -> Kernel:
    """vmlinux's exports read from its image (pvfront.ksymtab): names, CRCs, licences and
    namespaces as exact as Module.symvers's, plus the kernel's own vermagic string."""
    from pvfront.ksymtab import read_image

    found = read_image(image)
    kernel = Kernel(
        label=label,
        source=f"ksymtab of {image}",
        exports=dict(found.exports),
        release=found.release,
        machine=found.machine,
        vermagic=found.vermagic,
    )
    if not found.modversions:
        kernel.notes.append(
            "no __kcrctab in the image: built without CONFIG_MODVERSIONS, so "
            "no symbol CRCs to check and vermagic must match exactly"
        )
    if found.vermagic is None:
        kernel.notes.append(f"{image}: no vermagic string found in the kernel")
    return kernel


def kernel_for_tree(tree: KernelTree) -> Kernel:
    """A provisioned target (a KernelTree): its headers' Module.symvers (vmlinux's exports and
    every in-tree module's: nothing to scan) and .config, and its in-tree modules for
    vermagic, struct module size and dependency closures."""
    kernel = _symvers_kernel(f"{tree.target.id} ({tree.release})", tree.symvers)
    kernel.release = tree.release
    kernel.modules_dir = tree.modules_dir
    _apply_reference(kernel, tree.modules_dir)
    _finish_from_headers(kernel, tree.headers_dir)
    return kernel


def _root_of(modules_dir: Path) -> Path:
    """The root a <root>/lib/modules/<release> or merged-/usr <root>/usr/lib/modules/<release>
    tree belongs to (Debian 13 and sid install modules under usr/lib; /lib is a symlink)."""
    parents = modules_dir.parents
    if len(parents) > 3 and parents[1].name == "lib" and parents[2].name == "usr":
        return parents[3]
    return parents[2] if len(parents) > 2 else Path("/")


def _header_candidates(modules_dir: Path, root: Path) -> list[Path]:
    """Where a module tree's headers may be: its build/ link (an absolute target is read
    inside root, a relative one from the link's directory), then /usr/src."""
    candidates = []
    build = modules_dir / "build"
    if build.is_symlink():
        target = Path(os.readlink(build))
        candidates.append(
            root / target.relative_to("/") if target.is_absolute() else modules_dir / target
        )
    elif build.is_dir():
        candidates.append(build)
    candidates.append(root / "usr" / "src" / f"linux-headers-{modules_dir.name}")
    return candidates


def _first_file(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _image_places(root: Path, modules_dir: Path, release: str) -> list[Path]:
    """Where Debian puts the kernel image: /boot up to 6.12 (trixie); from 7.x beside the
    modules, as vmlinuz (linux-binary) or vmlinuz.unsigned (linux-binary-unsigned)."""
    return [
        root / "boot" / f"vmlinuz-{release}",
        modules_dir / "vmlinuz",
        modules_dir / "vmlinuz.unsigned",
    ]


def _config_places(root: Path, modules_dir: Path | None, release: str) -> list[Path]:
    """/boot/config-<release> (up to trixie) or <modules>/config (sid's linux-base)."""
    places = [root / "boot" / f"config-{release}"]
    return [*places, modules_dir / "config"] if modules_dir is not None else places


def _apply_config(kernel: Kernel, places: Iterable[Path]) -> None:
    """The loader's settings (and machine, and vermagic if still unknown) from the first
    .config found; without one, Debian's defaults and a note saying so."""
    found = _first_file(places)
    config = _read_config(found) if found is not None else None
    if config is None:
        kernel.notes.append("no .config found: the loader's settings are Debian's defaults")
        return
    kernel.config = loader_config(config)
    kernel.machine = kernel.machine or machine_from_config(config)
    if kernel.release and kernel.vermagic is None:
        kernel.vermagic = vermagic_from_config(kernel.release, config)


def _vmlinux_kernel(modules_dir: Path, root: Path, cache_dir: Path | None) -> Kernel:
    """A module tree without headers: /boot/symvers, else the image's ksymtab, else a
    System.map (Debian's is a placeholder, so that only counts when there is no image)."""
    release = modules_dir.name
    symvers = _first_file(
        root / "boot" / n for n in (f"symvers-{release}.gz", f"symvers-{release}")
    )
    if symvers is not None:
        return _symvers_kernel(str(modules_dir), symvers)
    image = _first_file(_image_places(root, modules_dir, release))
    if image is not None:
        kernel = _image_kernel(str(modules_dir), image)
        if kernel.release not in (None, release):
            kernel.notes.append(f"{image} says release {kernel.release}, the module tree {release}")
        return _with_tree_exports(kernel, modules_dir, cache_dir)
    system_map = _first_file([root / "boot" / f"System.map-{release}", modules_dir / "System.map"])
    if system_map is None:
        raise KernelSourceError(
            f"{modules_dir}: no Module.symvers (build/, /usr/src/linux-headers-{release}, "
            f"/boot/symvers-{release}.gz), no kernel image (/boot/vmlinuz-{release}, "
            "vmlinuz[.unsigned] beside the modules) and no System.map for it"
        )
    return _system_map_kernel(str(modules_dir), system_map, modules_dir, cache_dir)


def _modules_tree_kernel(modules_dir: Path, cache_dir: Path | None) -> Kernel:
    release = modules_dir.name
    root = _root_of(modules_dir)
    for headers in _header_candidates(modules_dir, root):
        if (headers / "Module.symvers").is_file():
            kernel = _symvers_kernel(str(modules_dir), headers / "Module.symvers")
            kernel.release, kernel.modules_dir = release, modules_dir
            _apply_reference(kernel, modules_dir)
            _finish_from_headers(kernel, headers)
            return kernel
    kernel = _vmlinux_kernel(modules_dir, root, cache_dir)
    kernel.release, kernel.modules_dir = release, modules_dir
    image_vermagic = kernel.vermagic
    _apply_reference(kernel, modules_dir)
    kernel.vermagic = image_vermagic or kernel.vermagic  # the kernel's own string wins
    _apply_config(kernel, _config_places(root, modules_dir, release))
    return kernel


def _modules_beside(image: Path, release: str | None) -> Path | None:
    """The module tree of a kernel image: the directory it sits in (7.x), or
    <root>/[usr/]lib/modules/<release> for <root>/boot/vmlinuz-<release>."""
    if _is_modules_tree(image.parent):
        return image.parent
    if release is None:
        return None
    root = image.parent.parent
    return next(
        (
            d
            for d in (
                root / "lib" / "modules" / release,
                root / "usr" / "lib" / "modules" / release,
            )
            if _is_modules_tree(d)
        ),
        None,
    )


def _bare_image_kernel(image: Path, cache_dir: Path | None) -> Kernel:
    """A kernel image given on its own: exports from its ksymtab, in-tree modules' exports
    only when their tree is beside it."""
    kernel = _image_kernel(str(image), image)
    prefix = "vmlinuz-"
    kernel.release = kernel.release or (
        image.name[len(prefix) :] if image.name.startswith(prefix) else None
    )
    modules_dir = _modules_beside(image, kernel.release)
    if modules_dir is None:
        kernel.notes.append(
            f"no /lib/modules/<release> beside {image}: exports of in-tree modules are unknown"
        )
    else:
        kernel = _with_tree_exports(kernel, modules_dir, cache_dir)
        kernel.modules_dir = modules_dir
        image_vermagic = kernel.vermagic
        _apply_reference(kernel, modules_dir)
        kernel.vermagic = image_vermagic or kernel.vermagic  # the kernel's own string wins
    places = [image.parent / "config"]
    if kernel.release:
        places.insert(0, image.parent / f"config-{kernel.release}")
    _apply_config(kernel, places)
    if kernel.module_struct_size is None:
        kernel.notes.append("size of struct module unknown without an in-tree module: not checked")
    return kernel


def _is_modules_tree(path: Path) -> bool:
    return (
        (path / "modules.order").is_file()
        or (path / "modules.dep").is_file()
        or (path / "kernel").is_dir()
    )


def _system_map_file_kernel(path: Path, cache_dir: Path | None) -> Kernel:
    """A System.map given as the kernel; when it is Debian's placeholder, the error names the
    image beside it, which has the exports."""
    release = path.name[len("System.map-") :] if path.name.startswith("System.map-") else None
    modules = path.parent.parent / "lib" / "modules" / release if release else None
    try:
        kernel = _system_map_kernel(
            str(path),
            path,
            modules if modules is not None and modules.is_dir() else None,
            cache_dir,
        )
    except KernelSourceError as exc:
        image = path.parent / f"vmlinuz-{release}"
        if "placeholder" in str(exc) and release and image.is_file():
            raise KernelSourceError(
                f"{exc}; the kernel image {image} has the exports: give that instead"
            ) from None
        raise
    kernel.release = release
    if modules is not None and modules.is_dir():
        kernel.modules_dir = modules
        _apply_reference(kernel, modules)
    config = _read_config(path.parent / f"config-{release}") if release else None
    if config is not None:
        kernel.config = loader_config(config)
        kernel.machine = kernel.machine or machine_from_config(config)
    return kernel


def kernel_from_path(path: Path, *, cache_dir: Path | None = None) -> Kernel:
    """A kernel described by a headers tree, a module tree, Module.symvers[.gz], System.map or
    a kernel image (vmlinuz, or the uncompressed vmlinux)."""
    if not path.exists():
        raise KernelSourceError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "Module.symvers").is_file():
            kernel = _symvers_kernel(str(path), path / "Module.symvers")
            kernel.release = release_of_headers(path)
            root = path.parents[2] if len(path.parents) > 2 else None
            modules = (
                root / "lib" / "modules" / kernel.release
                if root is not None and kernel.release
                else None
            )
            if modules is not None and modules.is_dir():
                kernel.modules_dir = modules
                _apply_reference(kernel, modules)
            _finish_from_headers(kernel, path)
            if kernel.vermagic is None:
                kernel.notes.append("vermagic unknown: not checked")
            return kernel
        if _is_modules_tree(path):
            return _modules_tree_kernel(path, cache_dir)
        raise KernelSourceError(
            f"{path}: neither a headers tree (no Module.symvers) nor a /lib/modules/<release> tree"
        )
    if path.name.startswith("System.map"):
        return _system_map_file_kernel(path, cache_dir)
    from pvfront.ksymtab import is_kernel_image

    if is_kernel_image(path):
        return _bare_image_kernel(path, cache_dir)
    kernel = _symvers_kernel(str(path), path)
    headers = path.parent
    kernel.release = release_of_headers(headers)
    _finish_from_headers(kernel, headers)
    if kernel.vermagic is None:
        kernel.notes.append(
            "vermagic unknown (no kernel release next to Module.symvers): not checked"
        )
    if kernel.machine is None:
        kernel.notes.append("architecture unknown (no .config next to Module.symvers): not checked")
    return kernel
