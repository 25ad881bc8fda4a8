"""Would these modules load into that kernel? Checks in the order the kernel applies them.

The order and wording come from kernel/module/main.c and version.c (5.10's kernel/module.c):

1. ELF header: type REL, machine of the kernel, section header size ("Exec format error";
   6.x logs "Invalid architecture in ELF header: N", 5.10 "Module has invalid ELF structures").
2. From 6.4: `.gnu.linkonce.this_module` must be the kernel's sizeof(struct module).
3. check_modstruct_version(): the CRC of `module_layout` ("disagrees about version of symbol
   module_layout"). Still `module_layout` in 5.10, 6.1 and 6.12.
4. check_modinfo(): vermagic ("version magic '...' should be '...'"); when the module has a
   `__versions` section, same_magic() ignores everything up to the first space (the release).
5. simplify_symbols(): every undefined symbol in symbol-table order, each through
   resolve_symbol(): not found, or GPL-only for a non-GPL module, gives "Unknown symbol X
   (err -2)"; a CRC that differs gives "disagrees about version of symbol X" then
   "Unknown symbol X (err -22)"; a namespace not imported gives "module uses symbol (X) from
   namespace NS, but does not import it." The loop reports every symbol, not just the first.
6. complete_formation(): "exports duplicate symbol X (owned by Y)".

A missing `__versions` or vermagic only taints a kernel built with CONFIG_MODULE_FORCE_LOAD
(Debian's are): those are warnings there, errors elsewhere.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pvfront import architectures
from pvfront.depgraph import DependencyGraph, describe_cycle
from pvfront.elf import ModuleInfo, read_all
from pvfront.symvers import VMLINUX, Kernel, KernelExport

# Stages, in the order the loader reaches them; a finding's place in the load is
# (stage, index) where index is the symbol-table position for symbol stages.
STAGE_ELF, STAGE_STRUCT, STAGE_LAYOUT, STAGE_VERMAGIC, STAGE_SYMBOLS, STAGE_EXPORTS = range(6)

# Check names, stable for JSON/JUnit consumers.
ELF = "elf"
STRUCT_MODULE = "struct_module"
MODULE_LAYOUT = "module_layout"
VERMAGIC = "vermagic"
NO_VERSIONS = "no_versions"
UNKNOWN = "unknown_symbol"
GPL_ONLY = "gpl_only"
CRC = "crc"
NO_SYMBOL_VERSION = "no_symbol_version"
NAMESPACE = "namespace"
DUPLICATE = "duplicate_export"
DUPLICATE_IN_PACKAGE = "duplicate_in_package"
DEPENDENCY = "dependency"
LICENSE_TAINT = "license_taint"

# include/linux/license.h: license_is_gpl_compatible()
GPL_COMPATIBLE = frozenset(
    {"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL"}
)


def license_is_gpl_compatible(license_: str | None) -> bool:
    return license_ in GPL_COMPATIBLE


@dataclass(frozen=True)
class Finding:
    """One thing the kernel would say about a module, with where in the load it happens."""

    check: str
    severity: str  # "error" (the load fails) or "warning" (it loads, perhaps tainted)
    message: str  # the kernel's own wording (as dmesg shows it); "" if the kernel is silent
    detail: str  # our explanation: what differs and where it comes from
    symbol: str | None = None
    errno: int | None = None  # what init_module() returns for an error
    stage: int = STAGE_SYMBOLS
    index: int = 0

    @property
    def error(self) -> bool:
        return self.severity == "error"

    @property
    def errno_text(self) -> str | None:
        return os.strerror(self.errno) if self.errno else None

    @property
    def summary(self) -> str:
        """One line for tables: the kernel's words, else ours."""
        if self.message:
            return self.message
        if self.errno:
            return f"{self.errno_text} ({self.detail})"
        return self.detail


@dataclass
class Verdict:
    """Whether one module would load, and everything the kernel would say about it."""

    module: str
    path: str
    findings: list[Finding] = field(default_factory=list)
    providers: dict[str, str] = field(default_factory=dict)  # symbol -> exporting module

    @property
    def errors(self) -> list[Finding]:
        return sorted((f for f in self.findings if f.error), key=lambda f: (f.stage, f.index))

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if not f.error]

    @property
    def loads(self) -> bool:
        return not any(f.error for f in self.findings)

    @property
    def first_error(self) -> Finding | None:
        errors = self.errors
        return errors[0] if errors else None

    @property
    def kernel_message(self) -> str | None:
        """What the kernel logs first when this module fails; None when it loads."""
        first = self.first_error
        return None if first is None else (first.message or first.errno_text)

    @property
    def reason(self) -> str:
        first = self.first_error
        return "loads" if first is None else first.summary

    @property
    def dependencies(self) -> list[str]:
        """Modules this one needs loaded first (not vmlinux), in order of first use."""
        return list(dict.fromkeys(p for p in self.providers.values() if p != VMLINUX))


@dataclass
class Report:
    """The verdicts for a set of modules checked together against one kernel."""

    kernel: Kernel
    verdicts: list[Verdict]
    graph: DependencyGraph  # the package's modules and, when followed, the in-tree ones
    paths: dict[str, str] = field(default_factory=dict)  # module name -> file, for the graph
    intree: set[str] = field(default_factory=set)  # the in-tree modules followed
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.loads for v in self.verdicts)

    def verdict(self, module: str) -> Verdict:
        for verdict in self.verdicts:
            if verdict.module == module:
                return verdict
        raise KeyError(module)


# --- one module ------------------------------------------------------------------------------


def _elf_findings(module: ModuleInfo, kernel: Kernel) -> list[Finding]:
    version = kernel.version or (0, 0)
    # Before 5.19, load_module() says only this when elf_validity_check() (which includes the
    # header check) fails; a 5.10 guest prints it for a module of the other word size.
    generic = "Module has invalid ELF structures" if version < (5, 19) else None
    if kernel.machine is not None and module.machine != kernel.machine:
        return [
            Finding(
                ELF,
                "error",
                generic or f"Invalid architecture in ELF header: {module.machine}",
                f"module is {module.elf_class}-bit {module.machine_name}, kernel is "
                f"{architectures.machine_name(kernel.machine)}",
                errno=errno.ENOEXEC,
                stage=STAGE_ELF,
            )
        ]
    if not module.shentsize_ok:
        return [
            Finding(
                ELF,
                "error",
                generic or "Invalid ELF section header size",
                "section header entries have the wrong size",
                errno=errno.ENOEXEC,
                stage=STAGE_ELF,
            )
        ]
    if module.symtab_count != 1:
        name = module.info("name") or "(missing .modinfo section or name field)"
        return [
            Finding(
                ELF,
                "error",
                f"{name}: module has no symbols (stripped?)",
                f"{module.symtab_count} symbol tables",
                errno=errno.ENOEXEC,
                stage=STAGE_ELF,
            )
        ]
    return []


def _layout_findings(module: ModuleInfo, kernel: Kernel) -> list[Finding]:
    name = module.name
    findings = []
    if (
        (kernel.version or (0, 0)) >= (6, 4)
        and kernel.module_struct_size is not None
        and module.this_module_size != kernel.module_struct_size
    ):
        findings.append(
            Finding(
                STRUCT_MODULE,
                "error",
                f"module {name}: .gnu.linkonce.this_module section size must match the kernel's "
                "built struct module size at run time",
                f"module's struct module is {module.this_module_size} bytes, the kernel's "
                f"{kernel.module_struct_size}",
                errno=errno.ENOEXEC,
                stage=STAGE_STRUCT,
            )
        )
    layout = kernel.exports.get("module_layout")
    if module.versions is None:
        if kernel.config.force_load:
            findings.append(
                Finding(
                    NO_VERSIONS,
                    "warning",
                    f"{name}: module_layout: kernel tainted.",
                    "module has no __versions section (built without "
                    "modversions): loads as a forced module",
                    stage=STAGE_LAYOUT,
                )
            )
        else:
            findings.append(
                Finding(
                    NO_VERSIONS,
                    "error",
                    "",
                    "module has no __versions section and the kernel lacks "
                    "CONFIG_MODULE_FORCE_LOAD",
                    errno=errno.ENOEXEC,
                    stage=STAGE_LAYOUT,
                )
            )
    elif layout is not None and layout.crc is not None:
        mine = module.versions.get("module_layout")
        if mine is None:
            findings.append(
                Finding(
                    NO_SYMBOL_VERSION,
                    "warning",
                    f"{name}: no symbol version for module_layout",
                    "module_layout is missing from __versions",
                    symbol="module_layout",
                    stage=STAGE_LAYOUT,
                )
            )
        elif mine != layout.crc:
            findings.append(
                Finding(
                    MODULE_LAYOUT,
                    "error",
                    f"{name}: disagrees about version of symbol module_layout",
                    f"module built for struct module CRC {mine:#010x}, kernel has "
                    f"{layout.crc:#010x}: built against another kernel",
                    symbol="module_layout",
                    errno=errno.ENOEXEC,
                    stage=STAGE_LAYOUT,
                )
            )
    magic = module.vermagic
    if magic is None:
        severity = "warning" if kernel.config.force_load else "error"
        findings.append(
            Finding(
                VERMAGIC,
                severity,
                f"{name}: bad vermagic: kernel tainted." if kernel.config.force_load else "",
                "module has no vermagic",
                errno=None if kernel.config.force_load else errno.ENOEXEC,
                stage=STAGE_VERMAGIC,
            )
        )
    elif kernel.vermagic is not None and not same_magic(
        magic, kernel.vermagic, magic_has_crcs(module, kernel)
    ):
        findings.append(
            Finding(
                VERMAGIC,
                "error",
                f"{name}: version magic '{magic}' should be '{kernel.vermagic}'",
                _vermagic_detail(module, kernel),
                errno=errno.ENOEXEC,
                stage=STAGE_VERMAGIC,
            )
        )
    return findings


def _vermagic_detail(module: ModuleInfo, kernel: Kernel) -> str:
    if magic_has_crcs(module, kernel):
        return "vermagic differs beyond the release (ignored with modversions)"
    why = (
        "the module has no __versions"
        if module.versions is None
        else "the kernel has no CONFIG_MODVERSIONS"
    )
    return f"vermagic differs (compared whole, release included: {why})"


def magic_has_crcs(module: ModuleInfo, kernel: Kernel) -> bool:
    """same_magic()'s `has_crcs`, which lets a module of another release through.

    check_modinfo() (kernel/module/main.c; 5.10: kernel/module.c) passes whether the module
    has a `__versions` section; a kernel without CONFIG_MODVERSIONS has the plain-strcmp
    same_magic() of kernel/module/internal.h (5.10: the #else branch in module.c), which
    never skips the release. MODULE_VERMAGIC_MODVERSIONS (include/linux/vermagic.h) puts the
    word "modversions" in the kernel's vermagic exactly when it has CONFIG_MODVERSIONS.
    """
    return module.versions is not None and "modversions" in (kernel.vermagic or "").split()


def same_magic(module_magic: str, kernel_magic: str, has_crcs: bool) -> bool:
    """kernel/module/version.c same_magic(): with CRCs the release (first word) is ignored."""
    if has_crcs:
        module_magic = module_magic[len(module_magic.split(" ", 1)[0]) :]
        kernel_magic = kernel_magic[len(kernel_magic.split(" ", 1)[0]) :]
    return module_magic == kernel_magic


def check_module(
    module: ModuleInfo, kernel: Kernel, extra: Mapping[str, KernelExport] | None = None
) -> Verdict:
    """Every finding for one module against a kernel, plus `extra` exports (other modules of
    the same package, assumed loaded). Findings keep the kernel's order; all are collected,
    so `first_error` is what the kernel would report and the rest is what would follow."""
    verdict = Verdict(module.name, module.path)
    findings = verdict.findings
    findings.extend(_elf_findings(module, kernel))
    if findings:
        return verdict  # the loader stops at the header: nothing else is meaningful
    findings.extend(_layout_findings(module, kernel))
    name = module.name
    gplok = license_is_gpl_compatible(module.license) or not kernel.checks_licences
    if not gplok:
        findings.append(
            Finding(
                LICENSE_TAINT,
                "warning",
                f"{name}: module license '{module.license or 'unspecified'}' taints kernel.",
                "non-GPL licence: GPL-only exports unusable",
                stage=STAGE_VERMAGIC,
            )
        )
    exports = kernel.exports
    # None: no CRCs to compare (the kernel does not check them, or the module has none).
    versions = module.versions if kernel.checks_crcs else None
    imported = set(module.import_ns)
    allow_ns = kernel.config.allow_missing_namespace_imports
    weak = module.weak
    arch = architectures.for_elf_machine(module.machine)
    loader_ignores = arch.loader_ignores if arch else frozenset()
    providers = verdict.providers
    for index, symbol in enumerate(module.imports):
        found = exports.get(symbol)
        if found is None and extra:
            found = extra.get(symbol)
        if found is None or (found.gpl and not gplok):
            if symbol in weak or symbol in loader_ignores:
                continue
            if found is None:
                findings.append(
                    Finding(
                        UNKNOWN,
                        "error",
                        f"{name}: Unknown symbol {symbol} (err -2)",
                        f"{kernel.label} does not export {symbol}",
                        symbol,
                        errno.ENOENT,
                        STAGE_SYMBOLS,
                        index,
                    )
                )
            else:
                findings.append(
                    Finding(
                        GPL_ONLY,
                        "error",
                        f"{name}: Unknown symbol {symbol} (err -2)",
                        f"{symbol} is EXPORT_SYMBOL_GPL and the "
                        f"module's licence is '{module.license or 'unspecified'}'",
                        symbol,
                        errno.ENOENT,
                        STAGE_SYMBOLS,
                        index,
                    )
                )
            continue
        providers[symbol] = found.owner
        if versions is not None and found.crc is not None:
            mine = versions.get(symbol)
            if mine is None:
                findings.append(
                    Finding(
                        NO_SYMBOL_VERSION,
                        "warning",
                        f"{name}: no symbol version for {symbol}",
                        f"{symbol} is missing from __versions",
                        symbol,
                        None,
                        STAGE_SYMBOLS,
                        index,
                    )
                )
            elif mine != found.crc:
                findings.append(
                    Finding(
                        CRC,
                        "error",
                        f"{name}: disagrees about version of symbol {symbol}",
                        f"module expects CRC {mine:#010x}, {found.owner} exports {found.crc:#010x}",
                        symbol,
                        errno.EINVAL,
                        STAGE_SYMBOLS,
                        index,
                    )
                )
                continue
        namespace = found.namespace if kernel.checks_namespaces else None
        if namespace and namespace not in imported:
            findings.append(
                Finding(
                    NAMESPACE,
                    "warning" if allow_ns else "error",
                    f"{name}: module uses symbol ({symbol}) from namespace {namespace}, but does "
                    "not import it.",
                    f"add MODULE_IMPORT_NS({namespace})",
                    symbol,
                    None if allow_ns else errno.EINVAL,
                    STAGE_SYMBOLS,
                    index,
                )
            )
    for index, row in enumerate(module.export_table):
        other = exports.get(row[0])
        if other is not None and other.owner != name:
            owner = "kernel" if other.owner == VMLINUX else other.owner
            findings.append(
                Finding(
                    DUPLICATE,
                    "error",
                    f"{name}: exports duplicate symbol {row[0]} (owned by {owner})",
                    f"{row[0]} is already exported by {owner}",
                    row[0],
                    errno.ENOEXEC,
                    STAGE_EXPORTS,
                    index,
                )
            )
    return verdict


# --- a set of modules: the package --------------------------------------------------------------


def _package_exports(
    modules: Sequence[ModuleInfo],
) -> tuple[dict[str, KernelExport], dict[str, list[str]]]:
    """Exports of the package's modules, and the names exported by more than one of them."""
    exports: dict[str, KernelExport] = {}
    owners: dict[str, list[str]] = {}
    for module in modules:
        for export in module.exports:
            owners.setdefault(export.name, []).append(module.name)
            exports.setdefault(
                export.name,
                KernelExport(export.name, export.crc, module.name, export.gpl, export.namespace),
            )
    return exports, {name: mods for name, mods in owners.items() if len(mods) > 1}


def check_modules(modules: Sequence[ModuleInfo], kernel: Kernel, *, closure: bool = True) -> Report:
    """Check a package of modules against a kernel, as if all were loaded with modprobe.

    Symbols may come from vmlinux, the kernel's in-tree modules (loaded on demand) or the
    package's other modules. A module that needs a package module that would not load fails
    too, at the first symbol it takes from it. With `closure`, the graph also follows the
    in-tree modules the package needs, through the kernel's module tree.
    """
    package, duplicates = _package_exports(modules)
    verdicts = []
    for module in modules:
        extra = {k: v for k, v in package.items() if v.owner != module.name}
        verdict = check_module(module, kernel, extra)
        for symbol, owners in duplicates.items():
            if module.name in owners[1:]:
                first = owners[0]
                index = next(i for i, e in enumerate(module.exports) if e.name == symbol)
                verdict.findings.append(
                    Finding(
                        DUPLICATE_IN_PACKAGE,
                        "error",
                        f"{module.name}: exports duplicate symbol {symbol} (owned by {first})",
                        f"{first} and {module.name} both export {symbol}",
                        symbol,
                        errno.ENOEXEC,
                        STAGE_EXPORTS,
                        index,
                    )
                )
        verdicts.append(verdict)
    graph = DependencyGraph()
    for verdict in verdicts:
        graph.add(verdict.module, verdict.dependencies)
    _propagate_failures(verdicts)
    report = Report(kernel, verdicts, graph, {m.name: m.path for m in modules})
    report.notes.extend(kernel.notes)
    if closure:
        _follow_intree(report)
    for cycle in graph.cycles():
        report.notes.append(f"dependency cycle: {describe_cycle(cycle)}")
    return report


def _propagate_failures(verdicts: list[Verdict]) -> None:
    """A module whose package dependency fails cannot resolve that dependency's symbols: it
    fails at the first symbol it takes from it."""
    by_name = {v.module: v for v in verdicts}
    changed = True
    while changed:
        changed = False
        for verdict in verdicts:
            first_symbols: dict[str, str] = {}  # provider -> first symbol taken from it
            for symbol, provider in verdict.providers.items():
                first_symbols.setdefault(provider, symbol)
            for provider, symbol in first_symbols.items():
                dep = by_name.get(provider)
                if dep is None or dep.loads:
                    continue
                if any(f.check == DEPENDENCY and f.symbol == symbol for f in verdict.findings):
                    continue
                verdict.findings.append(
                    Finding(
                        DEPENDENCY,
                        "error",
                        f"{verdict.module}: Unknown symbol {symbol} (err -2)",
                        f"needs {provider}, which would not load ({dep.reason})",
                        symbol,
                        errno.ENOENT,
                        STAGE_SYMBOLS,
                        0,
                    )
                )
                changed = True


def _follow_intree(report: Report) -> None:
    """Add the in-tree modules the package needs, and what they need, to the report's graph."""
    graph, kernel = report.graph, report.kernel
    pending = graph.missing()
    files = kernel.module_files() if pending else {}
    if pending and not files:
        report.notes.append(
            "dependencies of in-tree modules not followed: no module tree for this kernel"
        )
        return
    while pending:
        report.intree.update(pending)
        found = [name for name in pending if name in files]
        for name in pending:
            if name not in files:
                report.notes.append(f"in-tree module {name} not found in {kernel.modules_dir}")
                graph.add(name)
        for name, info in zip(found, read_all([files[n] for n in found]), strict=True):
            report.paths[name] = files[name]
            graph.add(name, _intree_needs(name, info, kernel))
        pending = graph.missing()


def _intree_needs(name: str, module: ModuleInfo, kernel: Kernel) -> list[str]:
    """The other modules an in-tree module takes symbols from, by the kernel's exports."""
    owners = (kernel.exports.get(symbol) for symbol in module.required)
    return [o.owner for o in owners if o is not None and o.owner not in (VMLINUX, name)]


# --- load order and insmod ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """The order to insmod a package's modules and the in-tree modules they need."""

    order: list[str]  # module names, dependencies first
    paths: dict[str, str]  # module name -> file
    intree: set[str]  # which of `order` come from the kernel's tree
    cycles: list[list[str]]


def load_order(modules: Sequence[ModuleInfo], kernel: Kernel) -> LoadPlan:
    """The order in which these modules (and the in-tree ones they need) can be insmod'ed."""
    report = check_modules(modules, kernel, closure=True)
    graph = report.graph
    return LoadPlan(
        graph.order([m.name for m in modules]), report.paths, report.intree, graph.cycles()
    )


@dataclass(frozen=True)
class InsmodFailure:
    """Where a sequence of insmods stops: the module, the symbol, what the kernel says."""

    position: int  # index in the sequence
    module: str
    symbol: str | None
    message: str
    verdict: Verdict


def first_insmod_failure(
    sequence: Sequence[ModuleInfo], kernel: Kernel, *, preloaded: Sequence[ModuleInfo] = ()
) -> InsmodFailure | None:
    """Simulate `insmod` of each module in turn into a kernel with only vmlinux (and
    `preloaded`) loaded; the first module that would fail, and at which symbol."""
    loaded = kernel.vmlinux_only().with_module_exports(preloaded)
    for position, module in enumerate(sequence):
        verdict = check_module(module, loaded)
        first = verdict.first_error
        if first is not None:
            return InsmodFailure(
                position,
                module.name,
                first.symbol,
                first.message or first.errno_text or first.detail,
                verdict,
            )
        loaded = loaded.with_module_exports([module])
    return None
