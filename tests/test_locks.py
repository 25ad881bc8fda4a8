"""The one lock pvfront processes take on a shared cache or build directory: what a process
that has to wait says, and who it names as the holder."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from pvfront.locks import holders, locked, waiting_line


def test_the_waiting_line_names_what_is_awaited_and_who_holds_it():
    assert waiting_line("target deb13-amd64", [4242]) == (
        "waiting for target deb13-amd64 (held by pid 4242)"
    )
    assert waiting_line("build root trixie_amd64", [7, 12]) == (
        "waiting for build root trixie_amd64 (held by pids 7, 12)"
    )
    assert waiting_line("apt index sid/i386", []) == (
        "waiting for apt index sid/i386 (held by another process)"
    )


_TAKE = """
import fcntl, sys
handle = open(sys.argv[1])
fcntl.flock(handle, fcntl.LOCK_EX if sys.argv[2] == "exclusive" else fcntl.LOCK_SH)
print("held", flush=True)
input()
"""


def _take(path, mode: str) -> subprocess.Popen:
    """Another process that takes an flock on path and keeps it until killed."""
    return subprocess.Popen(
        [sys.executable, "-c", _TAKE, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _blocked_on(path) -> bool:
    """Whether /proc/locks shows a process blocked on path's lock (its `->` line)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return any(" -> " in line and inode in line.split() for line in lines)


def test_the_holders_of_a_lock_are_the_processes_that_took_it_and_not_those_waiting(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    assert holders(os.stat(path)) == []
    sharing = _take(path, "shared")
    waiting = None
    try:
        assert sharing.stdout is not None and sharing.stdout.readline() == "held\n"
        waiting = _take(path, "exclusive")  # only now: it must queue behind the shared lock
        deadline = time.monotonic() + 60  # only ends a broken test
        while not _blocked_on(path):
            assert waiting.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with path.open() as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            assert holders(os.stat(path)) == sorted([os.getpid(), sharing.pid])
    finally:
        for proc in (sharing, waiting):
            if proc:
                proc.kill()
                proc.wait()
    assert holders(os.stat(path)) == []


def test_an_uncontended_lock_says_nothing_and_is_free_again_afterwards(tmp_path):
    said: list[str] = []
    path = tmp_path / "sub" / "lock"
    with locked(path, "thing", said.append):
        assert holders(os.stat(path)) == [os.getpid()]
    assert said == [] and holders(os.stat(path)) == []
