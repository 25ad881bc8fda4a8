"""`--kcidb FILE` writes the target-parametrized tests as a KCIDB v4 report that KernelCI's
own schema accepts, with each test's status taken from pvfront's exit classes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kcidb_io import schema

from pvfront import kcidb
from pvfront.targets import load_targets
from pvfront.workspace import Workspace
from pytest_support import run_pytest

TARGETS = load_targets(Workspace.discover().targets_file)
RELEASE = "0.0.0-made-up"  # the synthetic suite's kernel tree names this release

SUITE = f'''
import types
from pathlib import Path
import pytest
from pvfront.console import GuestHang, KernelPanic
from pvfront.errors import SetupError

@pytest.fixture
def target_tree(target):
    return types.SimpleNamespace(release="{RELEASE}")

@pytest.fixture
def broken():
    raise RuntimeError("no qemu")

def test_passes(target, target_tree):
    pass

def test_asserts(target):
    assert 1 == 2

def test_panics(target):
    raise KernelPanic("Kernel panic - not syncing", log_path=Path("console.log"),
                      excerpt="Kernel panic - not syncing: Fatal exception")

def test_hangs(target):
    raise GuestHang("no shell within 60s")

def test_has_a_broken_fixture(target, broken):
    pass

def test_finds_no_kernel(target):
    raise SetupError("no kernel")

def test_skips(target):
    pytest.skip("not on this target")

def test_needs_no_target():
    pass
'''

STATUSES = {
    "pvfront.case.passes": "PASS",
    "pvfront.case.asserts": "FAIL",
    "pvfront.case.panics": "ERROR",
    "pvfront.case.hangs": "ERROR",
    "pvfront.case.has_a_broken_fixture": "MISS",
    "pvfront.case.finds_no_kernel": "MISS",
    "pvfront.case.skips": "SKIP",
}


def kcidb_report(tmp_path: Path, *args: str) -> dict:
    report = tmp_path / "out" / "kcidb.json"
    result = run_pytest(tmp_path, SUITE, "--kcidb", str(report), *args)
    assert result.returncode == 3, result.stdout + result.stderr  # the panic is the gravest
    assert f"KCIDB report: {report}" in result.stdout
    data = json.loads(report.read_text())
    version = data["version"]
    assert version["major"] == 4
    # KernelCI's own schema of the exact version the report names
    getattr(schema, f"V{version['major']}_{version['minor']}").validate_exactly(data)
    return data


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_each_target_test_gets_the_status_of_its_exit_class(tmp_path, workers):
    data = kcidb_report(tmp_path, *workers)
    assert {t["path"]: t["status"] for t in data["tests"]} == STATUSES
    assert len(data["checkouts"]) == 1


def test_every_test_of_a_target_belongs_to_its_one_build(tmp_path):
    two = [TARGETS.ids[0], TARGETS.ids[-1]]
    data = kcidb_report(tmp_path, "--target", two[0], "--target", two[1])
    builds = {b["id"]: b for b in data["builds"]}
    assert len(builds) == 2 and len(data["tests"]) == 2 * len(STATUSES)
    for target_id in two:
        target = TARGETS.get(target_id)
        (build,) = [b for b in builds.values() if f"({target_id})" in b["comment"]]
        assert build["architecture"] == target.architecture.kbuild_arch
        assert RELEASE in build["comment"]  # tests without a tree share the tree's build
        ran = [t for t in data["tests"] if t["build_id"] == build["id"]]
        assert sorted(t["path"] for t in ran) == sorted(STATUSES)


def test_a_guest_failure_carries_its_console_log_and_excerpt(tmp_path):
    data = kcidb_report(tmp_path)
    (panic,) = [t for t in data["tests"] if t["path"] == "pvfront.case.panics"]
    assert panic["log_url"] == (tmp_path / "console.log").as_uri()
    assert panic["log_excerpt"] == "Kernel panic - not syncing: Fatal exception"
    (hang,) = [t for t in data["tests"] if t["path"] == "pvfront.case.hangs"]
    assert "log_url" not in hang and hang["log_excerpt"] == "no shell within 60s"


def test_a_test_reports_the_gravest_of_its_phases():
    assert kcidb.worst(["PASS", "ERROR"]) == "ERROR"  # passed, then its teardown crashed
    assert kcidb.worst(["MISS", "FAIL"]) == "FAIL"
    assert kcidb.worst(["SKIP", "PASS"]) == "PASS"


def test_paths_keep_only_what_the_schema_allows():
    assert kcidb.kcidb_path("test_pvf_blk", "test_reads") == "pvfront.pvf_blk.reads"
    assert kcidb.kcidb_path("test_x", "test_a.b/c") == "pvfront.x.a_b_c"


def test_a_directory_is_no_report_file(tmp_path):
    result = run_pytest(tmp_path, "def test_it(target):\n    pass\n", "--kcidb", str(tmp_path))
    assert result.returncode == 2
    assert f"pvfront: error: {tmp_path}: a directory" in result.stdout


def test_the_checkout_is_the_commit_and_says_when_the_tree_differs_from_it(tmp_path):
    ws = Workspace(root=tmp_path, cache=tmp_path / "cache")
    (tmp_path / "kmod").mkdir()
    (tmp_path / "kmod" / "pvf_ring.c").write_text("int x;\n")
    outside_git = kcidb.Checkout.of(ws)
    assert outside_git.git_commit_hash is None and outside_git.id.startswith("pvfront:kmod-")

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *argv],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", "kmod")
    git("commit", "-q", "-m", "one")
    commit = git("rev-parse", "HEAD")
    assert kcidb.Checkout.of(ws).to_json() == {
        "id": f"pvfront:{commit}",
        "origin": "pvfront",
        "tree_name": "pvfront",
        "git_commit_hash": commit,
    }
    (tmp_path / "kmod" / "pvf_ring.c").write_text("int y;\n")
    modified = kcidb.Checkout.of(ws)
    assert modified.id == f"pvfront:{commit}-modified"
    assert "not yet committed" in modified.to_json()["comment"]
