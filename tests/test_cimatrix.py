"""The CI matrix export: a workflow a CI system accepts, one job per target of targets.toml,
each caching $PVFRONT_CACHE; the same tree gives the same bytes; an existing file is not lost.
And pytest's --shard, for runners without a job per target."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from cli_support import run_pvfront
from pvfront import cimatrix, commands
from pvfront.errors import UsageError
from pvfront.targets import load_targets
from pvfront.workspace import Workspace
from pytest_support import REPO, run_pytest

ws = Workspace.discover()


def exported(system: str, targets_file: Path | None = None) -> str:
    targets = load_targets(targets_file or ws.targets_file)
    return cimatrix.workflow(targets, cimatrix.system(system))


def github_jobs(text: str) -> tuple[list[str], dict]:
    job = yaml.safe_load(text)["jobs"]["test"]
    return job["strategy"]["matrix"]["target"], job


def gitlab_jobs(text: str) -> tuple[list[str], dict]:
    job = yaml.safe_load(text)["test"]
    [axis] = job["parallel"]["matrix"]
    return axis["TARGET"], job


def test_the_github_workflow_has_a_job_per_target_that_sets_up_tests_and_caches_it():
    ids, job = github_jobs(exported("github"))
    assert ids == load_targets(ws.targets_file).ids
    assert job["env"]["PVFRONT_CACHE"].endswith(cimatrix.CACHE_DIR)
    [cache] = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert cache["with"]["path"] == cimatrix.CACHE_DIR and "matrix.target" in cache["with"]["key"]
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert 'invoke setup build --target "${{ matrix.target }}"' in script
    assert 'invoke test --target "${{ matrix.target }}"' in script


def test_the_gitlab_pipeline_has_a_job_per_target_that_sets_up_tests_and_caches_it():
    ids, job = gitlab_jobs(exported("gitlab"))
    assert ids == load_targets(ws.targets_file).ids
    assert job["variables"]["PVFRONT_CACHE"].endswith(cimatrix.CACHE_DIR)
    assert job["cache"]["paths"] == [f"{cimatrix.CACHE_DIR}/"] and "$TARGET" in job["cache"]["key"]
    script = "\n".join(job["script"])
    assert 'invoke setup build --target "$TARGET"' in script
    assert 'invoke test --target "$TARGET"' in script


def test_a_target_added_to_targets_toml_gets_its_job(tmp_path):
    declared = ws.targets_file.read_text()
    first = load_targets(ws.targets_file).targets[0]
    extra = declared + (
        f'\n[[target]]\nid = "ci-extra"\nsuite = "{first.suite}"\narch = "{first.arch}"\n'
        f'flavour = "{first.flavour}"\n'
    )
    (tmp_path / "targets.toml").write_text(extra)
    for target in load_targets(ws.targets_file).targets:  # the fragments it names, in place
        if target.kconfig and not (tmp_path / target.kconfig.parent.name).exists():
            (tmp_path / target.kconfig.parent.name).symlink_to(target.kconfig.parent)
    for jobs, system in ((github_jobs, "github"), (gitlab_jobs, "gitlab")):
        ids, _ = jobs(exported(system, tmp_path / "targets.toml"))
        assert ids[-1] == "ci-extra" and len(ids) == len(load_targets(ws.targets_file).ids) + 1


@pytest.mark.parametrize("system", sorted(cimatrix.SYSTEMS))
def test_an_export_is_the_same_bytes_each_time_and_names_no_path_of_this_machine(system):
    first, second = exported(system), exported(system)
    assert first == second
    assert str(REPO) not in first and not re.search(r"(?m)(^|\s)/(root|home|work|tmp)/", first)


def test_an_unknown_ci_system_is_one_line_naming_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown CI system 'jenkins' \(known: github, gitlab\)"):
        cimatrix.system("jenkins")


def test_the_export_never_overwrites_a_different_file_without_force(tmp_path, capsys):
    out = tmp_path / "ci.yml"
    out.write_text("# the user's own pipeline\n")
    with pytest.raises(UsageError, match=r"ci\.yml: exists and differs .*--force"):
        commands.export_ci(ws, "gitlab", str(out))
    assert out.read_text() == "# the user's own pipeline\n"
    assert commands.export_ci(ws, "gitlab", str(out), force=True) == 0
    assert out.read_text() == exported("gitlab")
    assert commands.export_ci(ws, "gitlab", str(out)) == 0  # the same text: left alone
    assert "unchanged" in capsys.readouterr().out


def test_the_cli_writes_prints_and_refuses_a_directory(tmp_path):
    def pvfront(*args: str) -> subprocess.CompletedProcess:
        return run_pvfront("export", "ci", *args)

    printed = pvfront("--github", "--out", "-")
    assert printed.returncode == 0 and printed.stdout == exported("github")
    written = pvfront("--gitlab", "--out", str(tmp_path / "sub" / "gitlab.yml"))
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "sub" / "gitlab.yml").read_text() == exported("gitlab")
    refused = pvfront("--github", "--out", str(tmp_path))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"pvfront: error: {tmp_path}: a directory; give the workflow file's name"
    ]
    assert pvfront("--github", "--gitlab").returncode == 2  # one system per export


SHARD_CASES = """
import pytest

def test_plain_one(): pass
def test_plain_two(): pass
def test_plain_three(): pass

@pytest.mark.parametrize("n", range(4))
def test_numbered(n): pass

def test_on_target(target): pass
def test_on_target_again(target): pass
"""


def collected(tmp_path: Path, *args: str) -> list[str]:
    result = run_pytest(tmp_path, SHARD_CASES, "--collect-only", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_shards_split_the_tests_without_overlap_and_keep_each_targets_tests_together(tmp_path):
    everything = collected(tmp_path, "--all-targets")
    shards = [collected(tmp_path, "--all-targets", "--shard", f"{i}/3") for i in (1, 2, 3)]
    assert sorted(t for shard in shards for t in shard) == sorted(everything)
    assert all(shards), shards
    for target_id in load_targets(ws.targets_file).ids:
        holding = [i for i, s in enumerate(shards) if any(f"[{target_id}]" in t for t in s)]
        assert len(holding) == 1, (target_id, holding)


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_bad_shard_is_one_line_and_a_setup_error(tmp_path, bad):
    result = run_pytest(tmp_path, SHARD_CASES, "--shard", bad)
    assert result.returncode == 2
    assert f"--shard {bad}: give I/N with 1 <= I <= N" in result.stdout + result.stderr
