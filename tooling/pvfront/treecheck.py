"""A whole /lib/modules/<release> tree checked as `depmod -e -E` checks it: every module's
unknown symbols and CRC mismatches against vmlinux's Module.symvers and the tree's own exports.

This is how the symbol checks are proven against depmod (tests/test_depmod_oracle.py) and
timed against it (the benchmark); a persistent cache makes a warm check of an unchanged tree
a stat() per file and one small read.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvfront.elf import read_modules
from pvfront.symcheck import CRC, GPL_ONLY, MODULE_LAYOUT, UNKNOWN, Verdict, check_module
from pvfront.symvers import (
    VMLINUX,
    Kernel,
    KernelExport,
    module_file_list,
    parse_symvers,
    read_text,
)


@dataclass
class TreeReport:
    """Unknown-symbol and CRC findings for every module of a tree, as depmod -e -E reports."""

    verdicts: dict[str, Verdict]  # path -> verdict of every module that could be read
    parsed: int  # how many were parsed rather than taken from the cache

    def findings(
        self, checks: Iterable[str] = (UNKNOWN, CRC, MODULE_LAYOUT)
    ) -> set[tuple[str, str, str]]:
        """(path, kind, symbol) for each finding of these checks; kind is "unknown" or
        "crc" (module_layout counts as a CRC, as it does for depmod)."""
        wanted = set(checks)
        out = set()
        for path, verdict in self.verdicts.items():
            for finding in verdict.findings:
                if finding.check in wanted:
                    kind = "unknown" if finding.check in (UNKNOWN, GPL_ONLY) else "crc"
                    out.add((path, kind, finding.symbol or ""))
        return out


def check_tree(
    modules_dir: Path, symvers: Path, *, cache_dir: Path | None = None, jobs: int = 2
) -> TreeReport:
    """Check every module of a /lib/modules/<release> tree against vmlinux's exports from a
    Module.symvers plus the tree's own exports: what `depmod -b ROOT -n -e -E SYMVERS` does."""
    files = module_file_list(modules_dir)
    # A whole-tree result, keyed by the identity of every file that went into it: a warm
    # check of an unchanged tree is a stat() per file and one small read.
    result_file = None
    if cache_dir is not None:
        # The checking code is part of the identity: a changed check must not reuse results.
        code = [
            __file__,
            inspect.getfile(check_module),
            inspect.getfile(read_modules),
            inspect.getfile(parse_symvers),
        ]
        result_file = cache_dir / f"tree-{_tree_identity([*files, str(symvers), *code])}.pickle"
        try:
            with result_file.open("rb") as stream:
                cached = pickle.load(stream)
            if isinstance(cached, TreeReport):
                return cached
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            pass
    scan = read_modules(files, cache_dir=cache_dir, cache_key=str(modules_dir), jobs=jobs)
    vmlinux = parse_symvers(read_text(symvers), str(symvers), owners=VMLINUX)
    # depmod knows __this_module and _GLOBAL_OFFSET_TABLE_ without being told.
    for fake in ("__this_module", "_GLOBAL_OFFSET_TABLE_"):
        vmlinux.setdefault(fake, KernelExport(fake, None, VMLINUX, False, None))
    kernel = Kernel(
        label=str(symvers),
        source=f"Module.symvers ({symvers})",
        exports=vmlinux,
        checks_licences=False,
        checks_namespaces=False,
    )
    kernel = kernel.with_module_exports(scan.modules.values())
    verdicts = {}
    for path, module in scan.modules.items():
        verdicts[path] = check_module(module, kernel)
    report = TreeReport(verdicts, scan.parsed)
    if result_file is not None:
        result_file.parent.mkdir(parents=True, exist_ok=True)
        partial = result_file.with_suffix(f".{os.getpid()}.tmp")
        with partial.open("wb") as stream:
            pickle.dump(TreeReport(verdicts, 0), stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(partial, result_file)
    return report


def _tree_identity(paths: Sequence[str]) -> str:
    """A digest of each file's path, size, mtime and inode: changes when any file does."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return digest.hexdigest()[:32]
