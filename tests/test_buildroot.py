"""Making a build root survives a mirror caught mid-sync, and only that."""

from pathlib import Path

import pytest

from pvfront import buildroot
from pvfront.buildroot import RootSpec
from pvfront.errors import SetupError

SPEC = RootSpec("bookworm", "i386", ("bookworm", "bookworm-security"), unstable=False)
SYNC = (
    "build root bookworm/i386: mmdebstrap failed: Failed to fetch http://mirror/debian-security/"
    "dists/bookworm-security/main/binary-i386/Packages.xz  File has unexpected size (371952 != "
    "372316). Mirror sync in progress?"
)


@pytest.fixture
def attempts(monkeypatch, tmp_path):
    """run_step fails with each queued message in turn, then succeeds; sleeps are recorded."""
    state = {"errors": [], "runs": 0, "slept": []}

    def run_step(command, spec, step, log, subject=None):
        state["runs"] += 1
        if state["errors"]:
            raise SetupError(state["errors"].pop(0))
        if step == "mmdebstrap":
            Path(command[-1]).mkdir()  # the root it made

    monkeypatch.setattr(buildroot, "run_step", run_step)
    monkeypatch.setattr(buildroot.time, "sleep", state["slept"].append)
    monkeypatch.setattr(buildroot, "sources_lines", lambda suites: [])
    state["final"] = tmp_path / "bookworm_i386"
    return state


def make(state) -> None:
    buildroot._mmdebstrap(SPEC, SPEC.sources, [], state["final"], lambda line: None)


def test_a_mirror_mid_sync_is_tried_again_after_a_pause(attempts):
    attempts["errors"] = [SYNC, SYNC.replace("unexpected size", "Hash Sum mismatch")]
    make(attempts)
    assert attempts["final"].is_dir()
    assert attempts["runs"] == 3 and attempts["slept"] == list(buildroot.SYNC_RETRY_DELAYS)


def test_a_mirror_still_mid_sync_after_the_last_try_is_its_error(attempts):
    attempts["errors"] = [SYNC, SYNC.replace("372316", "372400"), SYNC.replace("372316", "1")]
    with pytest.raises(SetupError, match="Mirror sync in progress"):
        make(attempts)
    assert attempts["runs"] == 3


def test_a_mirror_failing_the_same_way_twice_is_stuck_and_not_tried_a_third_time(attempts):
    attempts["errors"] = [SYNC] * 3
    with pytest.raises(SetupError, match="Mirror sync in progress"):
        make(attempts)
    assert attempts["runs"] == 2 and attempts["slept"] == list(buildroot.SYNC_RETRY_DELAYS[:1])


def test_any_other_failure_is_not_retried(attempts):
    attempts["errors"] = [
        "build root bookworm/i386: mmdebstrap failed: E: Unable to locate package x"
    ]
    with pytest.raises(SetupError, match="Unable to locate"):
        make(attempts)
    assert attempts["runs"] == 1 and attempts["slept"] == []


def test_adding_packages_to_a_root_goes_on_past_an_index_the_mirror_is_syncing(attempts):
    """apt-get update keeps an index's last good copy when the mirror spoils it: the install
    that follows runs, and it alone says whether what it needs was there."""
    attempts["errors"] = [SYNC.replace("mmdebstrap", "apt-get update")]
    said: list[str] = []
    buildroot._apt_install(attempts["final"], SPEC, ["debhelper"], "debhelper", said.append)
    assert attempts["runs"] == 2 and "warning" in said[0] and "Mirror sync" in said[0]


def test_adding_packages_stops_at_any_other_update_failure(attempts):
    attempts["errors"] = ["build root bookworm/i386: apt-get update failed: E: The repository"]
    with pytest.raises(SetupError, match="The repository"):
        buildroot._apt_install(attempts["final"], SPEC, ["debhelper"], "debhelper", print)
    assert attempts["runs"] == 1
