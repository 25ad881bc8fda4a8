"""Oracle: the whole deb12-amd64 module tree checked against a Module.symvers finds exactly
what `depmod -b ROOT -n -e -E Module.symvers RELEASE` finds, module by module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from pvfront.symcheck import check_tree
from symcheck_support import tree

DEPMOD = shutil.which("depmod") or "/usr/sbin/depmod"
_WARNING = re.compile(r"depmod: WARNING: (\S+) (?:needs unknown symbol|disagrees about version "
                      r"of symbol) (\S+)$")


def depmod_findings(root, release, symvers) -> set[tuple[str, str, str]]:
    proc = subprocess.run([DEPMOD, "-b", str(root), "-n", "-e", "-E", str(symvers), release],
                          capture_output=True, text=True, check=True)
    found = set()
    for line in proc.stderr.splitlines():
        match = _WARNING.match(line)
        if match:
            kind = "unknown" if "needs unknown symbol" in line else "crc"
            found.add((match.group(1), kind, match.group(2)))
    return found


@pytest.mark.skipif(not os.path.exists(DEPMOD),
                    reason="depmod (kmod) is not installed")
@pytest.mark.parametrize("symvers_of", ["deb12-amd64", "deb12-rt-amd64", "deb11-amd64"])
def test_tree_findings_equal_depmods(tmp_path, symvers_of):
    modules = tree("deb12-amd64")
    symvers = tree(symvers_of).symvers
    expected = depmod_findings(modules.root, modules.release, symvers)
    report = check_tree(modules.modules_dir, symvers, cache_dir=tmp_path)
    assert not report.unreadable
    assert len(report.verdicts) > 4000
    ours = report.findings()
    assert ours == expected
    if symvers_of == "deb12-amd64":
        assert ours == set()
    else:
        assert {kind for _, kind, _ in ours} == {"unknown", "crc"}
