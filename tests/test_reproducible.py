"""The DKMS tarball is byte-reproducible: the same sources give the same bytes, whenever it is
built and whatever the files' times and the umask on disk; the one timestamp it carries is
$SOURCE_DATE_EPOCH (when unset, the declared release date). The source package's
reproducibility is proven with dpkg-buildpackage in tests/test_package.py."""

import gzip
import io
import os
import shutil
import struct
import tarfile
import time

import pytest

from pvfront.errors import UsageError
from pvfront.metadata import load_family
from pvfront.package import build_dkms_source
from pvfront.workspace import Workspace


@pytest.fixture
def sources(tmp_path):
    """A copy of kmod/, so the test can change its files' times and load it as the family."""
    copy = tmp_path / "kmod"
    shutil.copytree(Workspace.discover().kmod_dir, copy)
    return copy


def _members(tar_gz):
    with tarfile.open(fileobj=io.BytesIO(tar_gz)) as archive:
        return archive.getmembers()


def _touch_everything(root, when):
    for path in [root, *root.rglob("*")]:
        os.utime(path, (when, when), follow_symlinks=False)


def _build_twice(sources, tmp_path, monkeypatch, build):
    """Build, then change every file's time, the clock and the umask, and build again."""
    outputs = []
    for attempt, (clock, umask) in enumerate([(1_600_000_000, 0o022), (1_800_000_000, 0o002)]):
        _touch_everything(sources, clock)
        monkeypatch.setattr(time, "time", lambda clock=clock: float(clock))
        old_umask = os.umask(umask)
        try:
            out = build(load_family(sources / "modules.toml"), tmp_path / f"out{attempt}", attempt)
        finally:
            os.umask(old_umask)
        outputs.append(out.read_bytes())
    return outputs


def test_the_dkms_tarball_is_the_same_bytes_whenever_it_is_built(sources, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first, second = _build_twice(
        sources, tmp_path, monkeypatch, lambda family, out, _: build_dkms_source(family, out)
    )
    assert first == second
    released = load_family(sources / "modules.toml").released_epoch
    assert struct.unpack_from("<I", first, 4) == (released,)  # the gzip header's mtime
    members = _members(first)
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (released, 0, 0, "root", "root", 0o644)
    }


def test_the_dkms_tarball_carries_source_date_epoch(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    data = build_dkms_source(load_family(sources / "modules.toml"), tmp_path).read_bytes()
    assert struct.unpack_from("<I", data, 4) == (1_700_000_000,)
    assert gzip.decompress(data)  # a whole gzip stream, with no file name in the header
    assert data[3] & 0x08 == 0
    members = _members(data)
    assert {m.mtime for m in members} == {1_700_000_000}


def test_a_source_date_epoch_that_is_not_seconds_is_one_usage_error(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match=r"^SOURCE_DATE_EPOCH='yesterday': not a number"):
        build_dkms_source(load_family(sources / "modules.toml"), tmp_path)
