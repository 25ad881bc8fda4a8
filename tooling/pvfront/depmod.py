"""kmod's depmod over a set of modules, and the module index read back from what it writes.

pvfront does not compute kmod's index files itself: the real `depmod` writes them (for the
guest images and the package stage), and `ModuleIndex` reads modules.dep back into a
dependency graph, for the closure of in-tree modules an image needs and the order a package's
modules load in.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pvfront.depgraph import DependencyGraph
from pvfront.elf import module_name_from_path
from pvfront.errors import SetupError, UsageError
from pvfront.kerneltree import KernelTree

# What the kernel package installs beside its modules that depmod reads (and warns without).
_BUILTIN_LISTS = ("modules.builtin", "modules.builtin.modinfo")
_DEP_LINE = re.compile(r"^[^\s:#]+\.ko(\.(xz|zst|gz))?:[^\n]*$", re.M)


def run(root: Path, tree: KernelTree, what: str) -> Path:
    """Index the modules laid out under root/lib/modules/<release> with `depmod -b`, beside
    the kernel's lists of built-in modules; the directory, now holding depmod's files.

    A failure or any warning (a dependency cycle, say) is one SetupError naming `what`.
    """
    modules_dir = root / "lib" / "modules" / tree.release
    for name in _BUILTIN_LISTS:
        if (tree.modules_dir / name).exists():
            shutil.copyfile(tree.modules_dir / name, modules_dir / name)
    proc = subprocess.run(
        ["depmod", "-b", str(root), tree.release], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or proc.stderr.strip():
        raise SetupError(f"depmod -b failed for {what}: {proc.stderr.strip()}")
    return modules_dir


@dataclass(frozen=True)
class ModuleIndex:
    """The modules of a kernel release: where each file is and what each needs (modules.dep)."""

    release: str
    paths: dict[str, str]  # name -> path relative to lib/modules/<release>, in modules.dep order
    graph: DependencyGraph  # name -> every module it needs (modules.dep lists the closure)
    builtin: frozenset[str]

    @classmethod
    def parse(cls, release: str, modules_dep: str, modules_builtin: str) -> ModuleIndex:
        paths: dict[str, str] = {}
        graph = DependencyGraph()
        for line in modules_dep.splitlines():
            if ":" not in line:
                continue
            path, needs = line.split(":", 1)
            name = module_name_from_path(path)
            paths[name] = path.strip()
            graph.add(name, (module_name_from_path(n) for n in needs.split()))
        builtin = frozenset(module_name_from_path(p) for p in modules_builtin.split())
        return cls(release, paths, graph, builtin)

    @classmethod
    def read(cls, modules_dir: Path, release: str) -> ModuleIndex:
        """The index of a directory depmod has indexed (see run())."""
        builtin = modules_dir / "modules.builtin"
        return cls.parse(
            release,
            (modules_dir / "modules.dep").read_text(),
            builtin.read_text() if builtin.exists() else "",
        )

    @classmethod
    def for_tree(cls, tree: KernelTree, cache_dir: Path) -> ModuleIndex:
        """The index of a provisioned tree, from `depmod -n` run once and cached.

        The provisioned tree has no modules.dep (Debian's postinst makes it) and stays read-only
        here; `depmod -n` writes its tables to stdout instead.
        """
        cached = cache_dir / f"{tree.target.id}-{tree.release}.modules.dep"
        order = tree.modules_dir / "modules.order"
        if not cached.exists() or cached.stat().st_mtime < order.stat().st_mtime:
            proc = subprocess.run(
                ["depmod", "-n", "-b", str(tree.root), tree.release],
                capture_output=True,
                check=False,
            )
            if proc.returncode != 0:
                raise SetupError(
                    f"depmod -n failed for {tree.target.id}: "
                    f"{proc.stderr.decode(errors='replace').strip()}"
                )
            # -n prints every table (some hold binary); keep the modules.dep lines.
            text = proc.stdout.decode("utf-8", errors="replace")
            dep_section = "".join(m.group(0) + "\n" for m in _DEP_LINE.finditer(text))
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(dep_section)
            tmp.replace(cached)
        builtin_file = tree.modules_dir / "modules.builtin"
        builtin = builtin_file.read_text() if builtin_file.exists() else ""
        return cls.parse(tree.release, cached.read_text(), builtin)

    def closure(self, names: Iterable[str]) -> list[str]:
        """Modules to load for names, each after what it needs; built-in ones need nothing."""
        wanted = []
        for raw in names:
            name = module_name_from_path(raw)
            if name in self.builtin:
                continue
            if name not in self.paths:
                raise UsageError(
                    f"{self.release} has no module '{raw}' (neither loadable nor built in)"
                )
            wanted.append(name)
        return self.graph.order(wanted)

    def load_order(self) -> list[str]:
        """Every module of the index, each after what it needs, otherwise in modules.dep's
        order (which is modules.order's)."""
        return self.graph.order(self.paths)

    def needing_others(self) -> list[str]:
        """The modules that need another loaded first, in load order."""
        return [name for name in self.load_order() if len(self.closure([name])) > 1]

    def unused(self) -> list[str]:
        """Modules no other module here needs: the top of the graph."""
        return self.graph.unused()
