"""Oracle: the whole module tree of a generic kernel checked against a Module.symvers finds
exactly what `depmod -b ROOT -n -e -E Module.symvers RELEASE` finds, module by module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pvfront.symvers import module_file_list
from pvfront.treecheck import check_tree
from symcheck_support import generic, line, pick, tree

DEPMOD = shutil.which("depmod") or "/usr/sbin/depmod"
_WARNING = re.compile(
    r"depmod: WARNING: (\S+) (?:needs unknown symbol|disagrees about version "
    r"of symbol) (\S+)$"
)


def depmod_findings(root, release, symvers) -> set[tuple[str, str, str]]:
    proc = subprocess.run(
        [DEPMOD, "-b", str(root), "-n", "-e", "-E", str(symvers), release],
        capture_output=True,
        text=True,
        check=True,
    )
    found = set()
    for text in proc.stderr.splitlines():
        match = _WARNING.match(text)
        if match:
            kind = "unknown" if "needs unknown symbol" in text else "crc"
            found.add((match.group(1), kind, match.group(2)))
    return found


def _own(g: str) -> str:
    return g


def _rt_of_its_suite(g: str) -> str:
    target = tree(g).target
    return pick(suite=target.suite, arch=target.arch, variant="rt")


def _another_line(g: str) -> str:
    return pick(arch=tree(g).target.arch, modversions=True, where=lambda t: line(t) != line(g))


# Whose Module.symvers the generic kernel's modules are checked against.
SYMVERS_OF = {
    "its own kernel": _own,
    "the rt kernel of its suite": _rt_of_its_suite,
    "a kernel of another line": _another_line,
}


@pytest.fixture(scope="module")
def scan_cache(tmp_path_factory):
    """One module cache for the three checks of the same tree: it is read once."""
    return tmp_path_factory.mktemp("scan")


@pytest.mark.skipif(not os.path.exists(DEPMOD), reason="depmod (kmod) is not installed")
@pytest.mark.parametrize("symvers_of", SYMVERS_OF)
def test_tree_findings_equal_depmods(scan_cache, symvers_of):
    g = generic()
    modules = tree(g)
    other = SYMVERS_OF[symvers_of](g)
    symvers = tree(other).symvers
    expected = depmod_findings(modules.root, modules.release, symvers)
    report = check_tree(modules.modules_dir, symvers, cache_dir=scan_cache)
    assert len(report.verdicts) == len(module_file_list(modules.modules_dir))
    ours = report.findings()
    assert ours == expected
    if other == g:
        assert ours == set()
    else:
        assert {kind for _, kind, _ in ours} == {"unknown", "crc"}
