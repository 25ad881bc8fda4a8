"""The exported LAVA jobs on the real engine: lava-dispatcher's lava-run, on this machine.

Every job passes `lava-run --validate`; the blk and net jobs run to their end with every
check a passing test case; and modules loaded in the wrong order make the job report the
failing checks by name, not a passed job. Each run's wall-clock time is printed (-s) and
kept in the test's properties.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from pathlib import Path

import pytest
import yaml

from pvf_support import modules_for, skip_unless_first_of_its_arch
from pvfront import lava, lavarun
from pvfront.errors import SetupError

# The engine and the export are pvfront's machinery; the driver's scenarios run on every
# target in the other QEMU tests: a real lava-run per architecture is enough.
pytestmark = [pytest.mark.qemu, pytest.mark.harness]
ONE_PER_ARCH = "a lava-run proves the export and the engine, whatever the kernel"

# A local lava-run of one job: a TCG boot and the checks take ~10 s; the rest is headroom
# for a loaded machine.
RUN_TIMEOUT_S = 300.0
_job_ids = itertools.count(1)


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def export(ws, tree, modules, out: Path, *chosen: lava.Scenario) -> lava.Export:
    return lava.export_target(
        tree, modules, chosen or list(lava.SCENARIOS.values()), out, None, ws.build_dir / "modindex"
    )


@pytest.fixture(scope="session")
def exported(ws, target_tree, pvf_modules, tmp_path_factory) -> lava.Export:
    return export(ws, target_tree, pvf_modules, tmp_path_factory.mktemp("lava"))


def lava_run(export: lava.Export, job: Path, tmp_path: Path, *, validate=False):
    # lava-run keeps its files under /var/lib/lava/dispatcher/tmp/<job id>: unique per run.
    job_id = f"{os.getpid()}{next(_job_ids):03d}"
    return lavarun.run(
        job,
        export.device,
        tmp_path / f"lava-{job.stem}",
        job_id=job_id,
        validate=validate,
        timeout=RUN_TIMEOUT_S,
    )


def check_names(job: Path) -> list[str]:
    (test,) = [a["test"] for a in yaml.safe_load(job.read_text())["actions"] if "test" in a]
    return [command["name"] for command in test["interactive"][0]["script"]]


def test_every_exported_job_passes_lava_run_validation(exported, tmp_path):
    assert [job.stem for job in exported.jobs] == list(lava.SCENARIOS)
    for job in exported.jobs:
        outcome = lava_run(exported, job, tmp_path, validate=True)
        assert outcome.job_result == "pass", (job, outcome.error, outcome.log)


@pytest.mark.parametrize("scenario", list(lava.SCENARIOS))
def test_the_job_passes_every_check_under_lava_run(
    target, selected_targets, exported, scenario, tmp_path, record_property, capsys
):
    skip_unless_first_of_its_arch(target, selected_targets, ONE_PER_ARCH)
    job = exported.directory / f"{scenario}.yaml"
    outcome = lava_run(exported, job, tmp_path)
    with capsys.disabled():
        print(f"\nlava-run {exported.target_id} {scenario}: {outcome.seconds:.1f} s")
    record_property("lava_run_seconds", round(outcome.seconds, 1))
    assert outcome.job_result == "pass", (outcome.error, outcome.log)
    assert [case.case for case in outcome.cases] == check_names(job)
    assert outcome.failed_cases() == [], outcome.log
    assert outcome.passed


def test_a_wrong_load_order_is_reported_as_the_failing_checks(
    ws, target, selected_targets, target_tree, pvf_modules, tmp_path
):
    skip_unless_first_of_its_arch(target, selected_targets, ONE_PER_ARCH)
    # pvf_virtio needs pvf_ring's symbols (kmod/README.md): loaded first, it is refused, and
    # so is everything that needs pvf_virtio; no disk ever appears.
    blk = lava.SCENARIOS["blk"]
    broken = dataclasses.replace(blk, modules=("pvf_virtio", "pvf_ring", "pvf_pci", "pvf_blk"))
    export_ = export(ws, target_tree, pvf_modules, tmp_path / "broken", broken)
    outcome = lava_run(export_, export_.jobs[0], tmp_path)
    assert not outcome.passed
    failed = outcome.failed_cases()
    for case in ("insmod-pvf_virtio", "insmod-pvf_pci", "insmod-pvf_blk", "disk-appears"):
        assert case in failed, (failed, outcome.log)
    assert "insmod-pvf_ring" not in failed  # the checks are told apart, not failed wholesale


def test_a_lava_run_past_its_time_is_killed_with_its_qemu(
    target, selected_targets, exported, tmp_path
):
    skip_unless_first_of_its_arch(target, selected_targets, ONE_PER_ARCH)
    job_id = f"{os.getpid()}999"
    with pytest.raises(SetupError, match="did not finish within 3s"):
        lavarun.run(exported.jobs[0], exported.device, tmp_path, job_id=job_id, timeout=3)
    # QEMU was running (a TCG boot takes longer than 3 s) and nothing outlives the kill:
    # no process runs on the files lava-run downloaded for this job.
    assert "Boot command: " in (tmp_path / "lava-run.log").read_text()
    needle = f"/dispatcher/tmp/{job_id}/".encode()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
            assert needle not in argv, argv
