"""pvfront export lava: what a LAVA server or a local lava-run consumes, without running it.

The jobs deploy this target's kernel and each scenario's initramfs and disks, boot them with
pvfront's own QEMU command line, and the same tree always exports the same bytes with no
path of this machine in them (except under --url-prefix file://, for a local run).
(qemu-tests/test_lava_run.py runs them with the real engine.)
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from cli_support import assert_one_line_error, run_pvfront
from pvfront import commands, lava, qemu
from pvfront.guest import virtio_left_to_pvfront
from pvfront.qemu import Disk, Nic

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "https://lava.example.org/pvfront"


def export_lava(ws, target, out: Path, prefix: str, *scenarios: str) -> None:
    commands.export_lava(ws, target.id, False, list(scenarios), str(out), prefix)


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_pvfront("export", "lava", *args)


def test_the_same_tree_exports_the_same_bytes_and_no_path_of_this_machine(
    ws, target, target_tree, tmp_path
):
    first, second = tmp_path / "first", tmp_path / "second"
    export_lava(ws, target, first, PREFIX)
    export_lava(ws, target, second, PREFIX)
    exported = files_under(first)
    assert exported == files_under(second)
    texts = {n: b.decode() for n, b in exported.items() if n.endswith((".yaml", ".jinja2"))}
    assert sorted(texts) == sorted(
        [f"{target.id}/{s}.yaml" for s in lava.SCENARIOS]
        + [f"{target.id}/{lava.DEVICE_FILE}", lava.DEVICE_DICTIONARY]
    )
    machine_paths = {str(tmp_path), str(ws.root), str(ws.cache), str(Path.home())}
    for name, text in texts.items():
        for path in machine_paths:
            assert path not in text, f"{name} names {path}"


def test_each_job_deploys_its_artifacts_for_the_targets_machine(ws, target, target_tree, tmp_path):
    export_lava(ws, target, tmp_path, PREFIX)
    arch = target.architecture
    for scenario in lava.SCENARIOS.values():
        job = yaml.safe_load((tmp_path / target.id / f"{scenario.name}.yaml").read_text())
        assert job["device_type"] == "qemu"
        assert job["context"] == {
            "arch": target.arch,
            "machine": target.qemu_machine.name,
            "cpu": arch.tcg_cpu,
            "memory": lava.MEMORY_MIB,
        }
        deploy, boot, test = (action for entry in job["actions"] for action in entry.values())
        assert deploy["to"] == "tmpfs" and boot["method"] == "qemu"
        expected = {"kernel", "initrd"} | {disk.label for disk in scenario.disks}
        assert set(deploy["images"]) == expected
        for image in deploy["images"].values():
            assert image["url"].startswith(f"{PREFIX}/{target.id}/")
            artifact = tmp_path / target.id / image["url"].rsplit("/", 1)[1]
            assert hashlib.sha256(artifact.read_bytes()).hexdigest() == image["sha256sum"]
        # One test case per module insmod-ed, in load order, then the scenario's checks.
        (interactive,) = test["interactive"]
        names = [command["name"] for command in interactive["script"]]
        assert names[: len(scenario.modules)] == [f"insmod-{m}" for m in scenario.modules]
        assert len(names) > len(scenario.modules) and len(set(names)) == len(names)


def test_file_urls_name_the_exported_files_for_a_local_run(ws, target, target_tree, tmp_path):
    export_lava(ws, target, tmp_path, "file://", "blk")
    job = yaml.safe_load((tmp_path / target.id / "blk.yaml").read_text())
    for image in job["actions"][0]["deploy"]["images"].values():
        assert image["url"].startswith("file:///")
        assert Path(image["url"].removeprefix("file://")).is_file()


def option_pairs(argv: list[str]) -> list[tuple[str, str]]:
    return sorted(zip(argv[0::2], argv[1::2], strict=True))


def test_lava_boots_the_command_line_pvfronts_own_guests_boot(target_tree):
    disks, nics = (Disk(Path("{disk0}"), serial="s"),), (Nic(mac="52:54:00:12:34:56"),)
    parts = lava.qemu_parts(target_tree, disks, nics)
    machine = qemu.Machine(
        target_tree.target,
        Path("{kernel}"),
        Path("{initrd}"),
        cmdline=virtio_left_to_pvfront(target_tree),
        memory_mib=lava.MEMORY_MIB,
        disks=disks,
        nics=nics,
    )
    own = qemu.command_line(machine, qemu.Channels(None, None))
    lavas = [*parts.machine_options, *parts.kernel_arg, *parts.initrd_arg]
    lavas += [*parts.disk_args, *parts.nic_args]
    assert parts.binary == own[0]
    # -nodefaults, -no-user-config, -no-reboot take no value: compare them apart.
    flags = [a for a in own[1:] if a in ("-nodefaults", "-no-user-config", "-no-reboot")]
    assert [a for a in lavas if a in flags] == flags
    rest = [a for a in lavas if a not in flags]
    assert option_pairs(rest) == option_pairs([a for a in own[1:] if a not in flags])


def test_an_unknown_scenario_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("--scenario", "nope", "--out", str(tmp_path), "--url-prefix", "file://")
    assert_one_line_error(proc, "unknown LAVA scenario 'nope'", "blk, net")


def test_a_url_prefix_without_http_or_file_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("--out", str(tmp_path), "--url-prefix", "lava.example.org/jobs")
    assert_one_line_error(proc, "--url-prefix", "http(s)://")


def test_an_unknown_target_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("--target", "deb99-sparc", "--out", str(tmp_path), "--url-prefix", "file://")
    assert_one_line_error(proc, "unknown target 'deb99-sparc'", "targets.toml")


@pytest.mark.kernel
def test_an_out_that_is_a_file_is_one_line_and_exit_2(tmp_path, target):
    out = tmp_path / "taken"
    out.write_text("")
    proc = run_cli("--target", target.id, "--out", str(out), "--url-prefix", "file://")
    assert_one_line_error(proc, str(out))
