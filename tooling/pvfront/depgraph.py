"""Which modules need which, the order that loads each after everything it needs, and cycles.

The one dependency graph of pvfront: symcheck feeds it the module that provides each symbol a
module imports, the initramfs writer each module's modinfo `depends=`, and the module index
depmod's modules.dep. Every answer is deterministic: where the needs leave a choice, module
names decide, in sorted order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class DependencyGraph:
    """Modules and, for each, the modules it needs loaded before it.

    A module that is needed but was never added itself (an in-tree module the package uses,
    say) is `missing`: nothing is known of its own needs, and it still comes before its users.
    """

    _needs: dict[str, set[str]] = field(default_factory=dict)

    def add(self, module: str, needs: Iterable[str] = ()) -> None:
        """Add a module, or more of what it needs."""
        self._needs.setdefault(module, set()).update(needs)

    def __contains__(self, module: object) -> bool:
        return module in self._needs

    @property
    def modules(self) -> list[str]:
        """The modules added, by name."""
        return sorted(self._needs)

    def needs(self, module: str) -> list[str]:
        """What `module` needs directly, by name."""
        return sorted(self._needs.get(module, ()))

    def _needed(self) -> set[str]:
        return {provider for needs in self._needs.values() for provider in needs}

    def missing(self) -> list[str]:
        """Modules needed here but never added, by name: they come from somewhere else."""
        return sorted(self._needed() - self._needs.keys())

    def unused(self) -> list[str]:
        """Modules nothing here needs (the top of the graph), by name."""
        needed = self._needed()
        return [module for module in self.modules if module not in needed]

    def order(self, roots: Iterable[str] | None = None) -> list[str]:
        """`roots` and everything they need, each module after all it needs.

        The roots keep the order given (every module, by name, when None); each is preceded by
        what it needs and is not yet placed, visited by name. A cycle is cut where the walk
        closes it: `cycles()` names it.
        """
        placed: list[str] = []
        done: set[str] = set()
        for root in self.modules if roots is None else roots:
            if root in done:
                continue
            walk: list[tuple[str, Iterator[str]]] = [(root, iter(self.needs(root)))]
            on_walk = {root}
            while walk:
                module, pending = walk[-1]
                needed = next((n for n in pending if n not in done and n not in on_walk), None)
                if needed is not None:
                    walk.append((needed, iter(self.needs(needed))))
                    on_walk.add(needed)
                    continue
                walk.pop()
                on_walk.discard(module)
                done.add(module)
                placed.append(module)
        return placed

    def cycles(self) -> list[list[str]]:
        """Groups of modules that need each other, directly or not (two or more, or one that
        needs itself): each group's names sorted, the groups sorted."""
        # Tarjan's strongly connected components, with an explicit stack: a module tree's
        # chains are short, but a generated graph need not be.
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def enter(module: str) -> tuple[str, Iterator[str]]:
            index[module] = low[module] = len(index)
            stack.append(module)
            on_stack.add(module)
            return module, iter(self.needs(module))

        for start in sorted(self._needs.keys() | self._needed()):
            if start in index:
                continue
            walk = [enter(start)]
            while walk:
                module, pending = walk[-1]
                needed = next(pending, None)
                if needed is not None:
                    if needed not in index:
                        walk.append(enter(needed))
                    elif needed in on_stack:
                        low[module] = min(low[module], index[needed])
                    continue
                walk.pop()
                if walk:
                    parent = walk[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    group: list[str] = []
                    while not group or group[-1] != module:
                        group.append(stack.pop())
                        on_stack.discard(group[-1])
                    if len(group) > 1 or module in self._needs.get(module, ()):
                        found.append(sorted(group))
        return sorted(found)


def describe_cycle(members: list[str]) -> str:
    """A cycle as one line: "a -> b -> a"."""
    return " -> ".join([*members, members[0]])
