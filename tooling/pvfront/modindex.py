"""kmod's index files (modules.dep, .alias, .symbols, .softdep) and the load order, computed.

The text files match what kmod's `depmod -b` writes for the same tree byte for byte, so the
package can ship them and the tests can hold them against the real depmod. That fixes the
orders too: modules in modules.order order; each module's dependencies (all of them, not only
the direct ones) sorted by depmod's topological index, which puts a provider after its users
(modprobe loads a line from the right); symbols in the order of depmod's 2048-bucket hash table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pvfront.elf import ModuleInfo

SYMBOL_BUCKETS = 2048  # depmod's symbol hash table size
_MASK = 0xFFFFFFFF


def superfast_hash(key: bytes) -> int:
    """Paul Hsieh's SuperFastHash over the key, as kmod's hash table computes it."""
    value = len(key) & _MASK
    whole, rem = divmod(len(key), 4)
    pos = 0
    for _ in range(whole):
        value = (value + (key[pos] | key[pos + 1] << 8)) & _MASK
        tmp = (((key[pos + 2] | key[pos + 3] << 8) << 11) ^ value) & _MASK
        value = ((value << 16) ^ tmp) & _MASK
        pos += 4
        value = (value + (value >> 11)) & _MASK
    if rem == 3:
        value = (value + (key[pos] | key[pos + 1] << 8)) & _MASK
        value ^= (value << 16) & _MASK
        value ^= (_signed_char(key[pos + 2]) << 18) & _MASK
        value = (value + (value >> 11)) & _MASK
    elif rem == 2:
        value = (value + (key[pos] | key[pos + 1] << 8)) & _MASK
        value ^= (value << 11) & _MASK
        value = (value + (value >> 17)) & _MASK
    elif rem == 1:
        value = (value + _signed_char(key[pos])) & _MASK
        value ^= (value << 10) & _MASK
        value = (value + (value >> 1)) & _MASK
    for shift, op in ((3, "x"), (5, "a"), (4, "x"), (17, "a"), (25, "x"), (6, "a")):
        if op == "x":
            value ^= (value << shift) & _MASK
        else:
            value = (value + (value >> shift)) & _MASK
    return value


def _signed_char(byte: int) -> int:
    # kmod reads these bytes through a plain `char`, which is signed on x86.
    return byte - 256 if byte >= 128 else byte


@dataclass(eq=False)
class _Node:
    relpath: str
    info: ModuleInfo
    deps: list[_Node] = field(default_factory=list)
    users: int = 0
    sort_index: int = 0

    @property
    def modname(self) -> str:
        base = self.relpath.rsplit("/", 1)[-1]
        return base.split(".ko", 1)[0].replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """The dependency graph of a set of modules and the index files that describe it."""

    nodes: tuple[_Node, ...]
    owners: dict[str, _Node]

    def _all_deps(self, node: _Node) -> list[_Node]:
        found: list[_Node] = []

        def walk(n: _Node) -> None:
            for dep in n.deps:
                if dep not in found:
                    found.append(dep)
                    walk(dep)

        walk(node)
        return sorted(found, key=lambda n: n.sort_index)

    def dependencies(self, name: str) -> list[str]:
        """Every module `name` needs, in modules.dep order (the first provider last)."""
        node = next(n for n in self.nodes if n.modname == name)
        return [d.modname for d in self._all_deps(node)]

    def load_order(self) -> list[str]:
        """All modules in an order in which each loads after everything it needs."""
        return [n.modname for n in sorted(self.nodes, key=lambda n: -n.sort_index)]

    def unused(self) -> list[str]:
        """Modules no other module here needs: the top of the graph."""
        return [n.modname for n in self.nodes if n.users == 0]

    def modules_dep(self) -> str:
        lines = []
        for node in self.nodes:
            deps = "".join(f" {d.relpath}" for d in self._all_deps(node))
            lines.append(f"{node.relpath}:{deps}\n")
        return "".join(lines)

    def modules_alias(self) -> str:
        return "# Aliases extracted from modules themselves.\n" + "".join(
            f"alias {alias} {n.modname}\n" for n in self.nodes for alias in n.info.info_all("alias")
        )

    def modules_softdep(self) -> str:
        return "# Soft dependencies extracted from modules themselves.\n" + "".join(
            f"softdep {n.modname} {dep}\n" for n in self.nodes for dep in n.info.info_all("softdep")
        )

    def modules_symbols(self) -> str:
        ordered = sorted(
            self.owners,
            key=lambda s: (superfast_hash(s.encode()) & (SYMBOL_BUCKETS - 1), s.encode()),
        )
        return "# Aliases for symbols, used by symbol_request().\n" + "".join(
            f"alias symbol:{s} {self.owners[s].modname}\n" for s in ordered
        )

    def files(self) -> dict[str, str]:
        return {
            "modules.dep": self.modules_dep(),
            "modules.alias": self.modules_alias(),
            "modules.symbols": self.modules_symbols(),
            "modules.softdep": self.modules_softdep(),
        }


class DependencyCycle(ValueError):
    """Modules that need each other: no order loads them."""


def _depmod_symbols(info: ModuleInfo) -> list[str]:
    """The symbols depmod says a module exports.

    kmod names them after the module's `__crc_` symbols; a module built without
    modversions has none, and kmod then takes every string of `__ksymtab_strings`, where the
    exports' namespace strings stand beside their names (libkmod-elf.c,
    kmod_elf_get_symbols()): such a module "exports" its namespace too.
    """
    exports = info.exports
    names = [export.name for export in exports]
    if exports and all(export.crc is None for export in exports):
        names += [e.namespace for e in exports if e.namespace and e.namespace not in names]
    return names


def build_index(modules: Sequence[tuple[str, ModuleInfo]]) -> ModuleIndex:
    """Index modules given as (path relative to lib/modules/<release>, info), in modules.order.

    Symbols no module here exports (the kernel's own) are left out, as depmod without -E does.
    """
    nodes = tuple(_Node(relpath, info) for relpath, info in modules)
    owners: dict[str, _Node] = {}
    for node in nodes:
        for name in _depmod_symbols(node.info):
            owners[name] = node  # a later module replaces an earlier one, as in depmod
    for node in nodes:
        for symbol in node.info.imports:
            owner = owners.get(symbol)
            if owner is None or owner is node or owner in node.deps:
                continue
            node.deps.append(owner)
            owner.users += 1
    _topological_sort(nodes)
    return ModuleIndex(nodes, owners)


def _topological_sort(nodes: tuple[_Node, ...]) -> None:
    """Kahn's algorithm from the modules nobody uses, with depmod's stack discipline."""
    users = {id(n): n.users for n in nodes}
    roots = [n for n in nodes if n.users == 0]
    placed = 0
    while roots:
        node = roots.pop()
        node.sort_index = placed
        placed += 1
        for dep in node.deps:
            users[id(dep)] -= 1
            if users[id(dep)] == 0:
                roots.append(dep)
    if placed < len(nodes):
        stuck = [n.modname for n in nodes if users[id(n)] > 0]
        raise DependencyCycle(f"modules in a dependency cycle: {', '.join(stuck)}")
    for node in nodes:
        node.deps.sort(key=lambda n: n.sort_index)
