"""Locks that pvfront processes sharing one cache or build directory take on it.

Each is an flock on a file: the kernel drops it when its holder ends, however it ends, so a
killed process never leaves a lock behind. A process that has to wait says once what for and
which process holds it, so a second `invoke test` does not look hung behind the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

Log = Callable[[str], None]


@contextlib.contextmanager
def locked(path: Path, what: str, log: Log, *, shared: bool = False) -> Iterator[None]:
    """Hold an flock on path, exclusive unless shared; when another process holds it first,
    log one line naming `what` and that process, then wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log(waiting_line(what, holders(os.fstat(handle.fileno()))))
            fcntl.flock(handle, mode)
        yield


def waiting_line(what: str, pids: list[int]) -> str:
    """What a process says when it has to wait for a lock the processes `pids` hold."""
    if not pids:  # released meanwhile, or /proc/locks does not show it
        return f"waiting for {what} (held by another process)"
    label = "pid" if len(pids) == 1 else "pids"
    return f"waiting for {what} (held by {label} {', '.join(map(str, pids))})"


def holders(file: os.stat_result) -> list[int]:
    """The processes holding an flock on a file, as /proc/locks lists them.

    Each lock is a line `<n>: FLOCK  ADVISORY  WRITE|READ <pid> <major>:<minor>:<inode> ...`
    (fs/locks.c, lock_get_status(): the device in hex, the pid in our pid namespace, 0 for a
    process outside it); a process blocked on it has `->` after the number and is not a holder.
    """
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return []
    inode = f"{os.major(file.st_dev):02x}:{os.minor(file.st_dev):02x}:{file.st_ino}"
    pids = {
        int(fields[4])
        for fields in (line.split() for line in table.splitlines())
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode
    }
    return sorted(pids - {0})
