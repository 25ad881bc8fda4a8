"""Host programs for the guest: a binary and every library it loads (fio, iperf3)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pvfront import architectures
from pvfront.kerneltree import KernelTree


def host_program_files(tree: KernelTree, program: str) -> dict[str, Path] | None:
    """The host's `program` at /usr/bin in the guest, with the libraries ldd names at their
    own paths; None where it cannot run.

    A busybox guest has no libraries of its own, and the host's binaries run in a guest of
    the host's architecture only.
    """
    found = shutil.which(program)
    if found is None or tree.target.architecture is not architectures.host():
        return None
    output = subprocess.run(["ldd", found], capture_output=True, text=True, check=False).stdout
    files: dict[str, Path] = {f"/usr/bin/{program}": Path(found).resolve()}
    for line in output.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > 2 and parts[2].startswith("/"):
            files[parts[2]] = Path(parts[2]).resolve()
        elif parts and parts[0].startswith("/"):  # the dynamic loader itself
            files[parts[0]] = Path(parts[0]).resolve()
    return files
