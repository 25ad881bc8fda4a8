"""LAVA job definitions for pvfront's scenarios, in lava-dispatcher's own schema.

One job per target and scenario: a `deploy` to tmpfs of the target's kernel, the scenario's
initramfs (pvfront.initramfs, a busybox shell on the kernel console) and its disk images,
a `boot` with `method: qemu`, and an `interactive` test whose every command is one check,
reported by LAVA as a test case (pass/fail). Beside the jobs: the device YAML a local
`lava-run` needs for each target, and the device dictionary a LAVA server's worker needs.

Why `interactive` and not a test definition with `lava-test-case`: a test shell needs
LAVA's overlay inside the guest, which for a tmpfs QEMU deploy lava-dispatcher 2023.01
writes with libguestfs onto an extra ext2 disk the guest must mount (ApplyOverlayGuest) —
an in-tree block driver and filesystem in a guest whose point is that our drivers own the
virtio devices. An interactive test needs nothing in the guest but its shell, and each of
its named commands is a test case in LAVA's results as a `lava-test-case` would be.

The QEMU command line comes from pvfront.qemu.command_line, cut in three: the machine
(device YAML: machine, CPU, memory, serial line), the boot files (each image's
`image_arg`, where LAVA substitutes the downloaded file's path) and the scenario's devices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pvfront import initramfs, qemu
from pvfront.console import INIT_STARTED
from pvfront.errors import UsageError
from pvfront.guest import make_disk, sha256_file, virtio_left_to_pvfront
from pvfront.kerneltree import KernelTree
from pvfront.qemu import Disk, Nic

PROMPT = initramfs.PROMPT
MEMORY_MIB = 256
# What each check prints after its command: the status, which the echoed command line
# (`$?` unexpanded) cannot match.
STATUS_MARK = "pvf-check-status="
PASSED = f"{STATUS_MARK}0"
FAILED = f"{STATUS_MARK}[1-9]"
FILE_SCHEME = "file://"
JOB_FILE = "{scenario}.yaml"
DEVICE_FILE = "device.yaml"
DEVICE_DICTIONARY = "qemu-pvfront.jinja2"
BLK_DISK_MIB = 16
BLK_DISK_SEED = 11
BLK_SERIAL = "pattern"
NET_MAC = "52:54:00:12:34:99"


@dataclass(frozen=True)
class Check:
    """One command in the guest's shell; its exit status is the test case's result."""

    name: str
    command: str


@dataclass(frozen=True)
class Artifacts:
    """What a scenario's checks may refer to: the digest of each disk image, by label."""

    disk_sha256: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DiskImage:
    """A raw disk a scenario attaches: seeded random bytes the host knows the digest of."""

    label: str  # the image's name in the job, and LAVA's placeholder {label} for its file
    size_mib: int
    pattern_seed: int
    serial: str  # what the guest finds it by (VIRTIO_BLK_T_GET_ID)


@dataclass(frozen=True)
class Scenario:
    """A scenario group: the modules insmod-ed in order, the devices, and the checks."""

    name: str
    description: str
    modules: tuple[str, ...]  # insmod order; each insmod is a check of its own
    disks: tuple[DiskImage, ...]
    nics: tuple[Nic, ...]
    checks: Callable[[Artifacts], tuple[Check, ...]]


def _wait_for(condition: str, tenths: int = 100) -> str:
    """Shell: poll a condition every 0.1 s (up to 10 s); its last status is the result."""
    return (
        f"i=0; until {condition}; do i=$((i+1)); [ $i -ge {tenths} ] && break; "
        f"sleep 0.1; done; {condition}"
    )


def _blk_checks(artifacts: Artifacts) -> tuple[Check, ...]:
    digest = artifacts.disk_sha256["disk0"]
    serial_file = f"grep -lx {BLK_SERIAL} /sys/block/pvd*/serial 2>/dev/null"
    return (
        Check("disk-appears", _wait_for(f"{serial_file} >/dev/null")),
        Check("disk-named", f'd=$({serial_file} | cut -d/ -f4); [ -b "/dev/$d" ]'),
        Check("disk-size", f'[ "$(cat /sys/block/$d/size)" = {BLK_DISK_MIB * 2048} ]'),
        Check(
            "disk-reads-host-pattern",
            f'[ "$(sha256sum < /dev/$d | cut -d" " -f1)" = {digest} ]',
        ),
        Check(
            "disk-write-reads-back",
            "echo pvfront-lava-write | dd of=/dev/$d bs=512 seek=8 conv=sync,fsync "
            "2>/dev/null && echo 3 > /proc/sys/vm/drop_caches && "
            "dd if=/dev/$d bs=512 skip=8 count=1 iflag=direct 2>/dev/null "
            "| grep -q pvfront-lava-write",
        ),
        Check("unload", "rmmod pvf_blk pvf_pci pvf_virtio pvf_ring"),
    )


def _net_checks(artifacts: Artifacts) -> tuple[Check, ...]:
    carrier = "[ $(cat /sys/class/net/pvnet0/carrier 2>/dev/null) = 1 ]"
    return (
        Check("pvnet0-appears", _wait_for("[ -e /sys/class/net/pvnet0 ]")),
        Check("pvnet0-mac", f'[ "$(cat /sys/class/net/pvnet0/address)" = {NET_MAC} ]'),
        Check("pvnet0-carrier", f"ip link set pvnet0 up && {_wait_for(carrier)}"),
        # QEMU's user network answers DHCP and pings itself: frames both ways, no peer needed.
        Check("dhcp-lease", "udhcpc -i pvnet0 -n -q -t 5 -s /bin/true"),
        Check(
            "ping-gateway",
            "ip addr add 10.0.2.15/24 dev pvnet0 && ping -c 3 -W 5 10.0.2.2 >/dev/null",
        ),
        Check("unload", "ip link set pvnet0 down && rmmod pvf_net pvf_pci pvf_virtio pvf_ring"),
    )


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "blk",
            "pvf_blk: a disk appears, reads the host's pattern, writes read back",
            ("pvf_ring", "pvf_virtio", "pvf_pci", "pvf_blk"),
            (DiskImage("disk0", BLK_DISK_MIB, BLK_DISK_SEED, BLK_SERIAL),),
            (),
            _blk_checks,
        ),
        Scenario(
            "net",
            "pvf_net: pvnet0 appears with its MAC, gets a carrier, a DHCP lease and pings",
            ("pvf_ring", "pvf_virtio", "pvf_pci", "pvf_net"),
            (),
            (Nic(mac=NET_MAC),),
            _net_checks,
        ),
    )
}


def scenarios(names: Sequence[str]) -> list[Scenario]:
    """The named scenario groups, in the order given (all of them when none is)."""
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown LAVA scenario '{unknown[0]}' (known: {', '.join(SCENARIOS)})")
    return [SCENARIOS[n] for n in dict.fromkeys(names or SCENARIOS)]


# --------------------------------------------------------------------------- QEMU


def _machine(tree: KernelTree, disks: Sequence[Disk], nics: Sequence[Nic]) -> qemu.Machine:
    """The machine pvfront's own guests boot, with LAVA's placeholders for the files."""
    return qemu.Machine(
        tree.target,
        Path("{kernel}"),
        Path("{initrd}"),
        cmdline=virtio_left_to_pvfront(tree),
        memory_mib=MEMORY_MIB,
        accel="tcg",
        disks=tuple(disks),
        nics=tuple(nics),
    )


def _argv(machine: qemu.Machine) -> list[str]:
    # Channels(None, None): the kernel console and the shell on one serial line, stdio.
    return qemu.command_line(machine, qemu.Channels(None, None))


def _word(arg: str) -> str:
    """An argument as LAVA's command string needs it (it splits on blanks, keeps quotes)."""
    return f'"{arg}"' if " " in arg else arg


@dataclass(frozen=True)
class QemuParts:
    """pvfront's QEMU command line, cut where LAVA puts each part."""

    binary: str
    machine_options: list[str]  # the device YAML's boot options
    kernel_arg: list[str]  # -kernel {kernel} -append ...
    initrd_arg: list[str]  # -initrd {initrd}
    disk_args: list[str]  # the disks', with {disk0}, ... for their files
    nic_args: list[str]  # the NICs' (or -nic none)


def qemu_parts(tree: KernelTree, disks: Sequence[Disk], nics: Sequence[Nic]) -> QemuParts:
    """command_line()'s argv for the target with these devices, cut at the options it always
    writes in one order: the machine, -kernel/-append, -initrd, -serial, then the devices."""
    bare = _argv(_machine(tree, (), ()))
    with_disks = _argv(_machine(tree, disks, ()))
    with_nics = _argv(_machine(tree, (), nics))
    kernel_at, initrd_at, serial_at = (
        bare.index("-kernel"),
        bare.index("-initrd"),
        bare.index("-serial"),
    )
    devices_at = serial_at + 2  # the disks, then the NICs (-nic none without any)
    no_nic = bare[devices_at:]
    return QemuParts(
        binary=bare[0],
        machine_options=[*bare[1:kernel_at], *bare[serial_at:devices_at]],
        kernel_arg=bare[kernel_at:initrd_at],
        initrd_arg=bare[initrd_at:serial_at],
        disk_args=with_disks[devices_at : len(with_disks) - len(no_nic)],
        nic_args=with_nics[devices_at:],
    )


# --------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class Export:
    """One target's exported jobs."""

    target_id: str
    directory: Path
    jobs: tuple[Path, ...]
    device: Path


def check_url_prefix(prefix: str) -> str | None:
    """The URL prefix a LAVA server fetches the artifacts from; None for file:// (this
    machine's own paths, for a local lava-run)."""
    if prefix == FILE_SCHEME:
        return None
    if prefix.startswith(("http://", "https://")) and len(prefix.split("/", 3)[2]) > 0:
        return prefix
    raise UsageError(f"--url-prefix {prefix!r}: give an http(s):// URL or {FILE_SCHEME}")


def _url(prefix: str, target_id: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{target_id}/{name}"


def _image(url: str, image_arg: Sequence[str], sha256: str) -> dict[str, object]:
    return {"url": url, "sha256sum": sha256, "image_arg": " ".join(_word(a) for a in image_arg)}


def _checks_script(scenario: Scenario, artifacts: Artifacts) -> list[dict[str, object]]:
    checks = [
        Check(f"insmod-{module}", f"insmod /lib/modules/$(uname -r)/extra/{module}.ko")
        for module in scenario.modules
    ]
    checks += scenario.checks(artifacts)
    return [
        {
            "name": check.name,
            "command": f'{check.command}; echo "{STATUS_MARK}$?"',
            "successes": [{"message": PASSED}],
            "failures": [{"message": FAILED}],
        }
        for check in checks
    ]


def job_definition(
    tree: KernelTree,
    scenario: Scenario,
    images: dict[str, dict[str, object]],
    artifacts: Artifacts,
) -> dict[str, object]:
    """The job, in lava-dispatcher's schema (lava_common/schemas)."""
    target = tree.target
    return {
        "device_type": "qemu",
        "job_name": f"pvfront {scenario.name} on {target.id} ({tree.release})",
        "visibility": "public",
        "priority": "medium",
        "timeouts": {
            "job": {"minutes": 15},
            "action": {"minutes": 5},
            "connection": {"minutes": 2},
        },
        "context": {
            "arch": target.arch,
            "machine": target.qemu_machine.name,
            "cpu": target.architecture.tcg_cpu,
            "memory": MEMORY_MIB,
        },
        "metadata": {"pvfront.target": target.id, "pvfront.scenario": scenario.name},
        "actions": [
            {
                "deploy": {
                    "to": "tmpfs",
                    "timeout": {"minutes": 5},
                    "images": images,
                }
            },
            {
                "boot": {
                    "method": "qemu",
                    "media": "tmpfs",
                    "timeout": {"minutes": 3},
                    "prompts": [PROMPT],
                }
            },
            {
                "test": {
                    "timeout": {"minutes": 5},
                    "interactive": [
                        {
                            "name": f"pvfront-{scenario.name}",
                            "prompts": [PROMPT],
                            "script": _checks_script(scenario, artifacts),
                        }
                    ],
                }
            },
        ],
    }


def device_yaml(tree: KernelTree) -> dict[str, object]:
    """What a LAVA server renders from its qemu device type for this target's context:
    lava-run needs it rendered (it has no templates of its own)."""
    parts = qemu_parts(tree, (), ())
    return {
        "device_type": "qemu",
        "available_architectures": [tree.target.arch],
        "constants": {
            # The kernel console prints warnings and worse only (qemu.console_params), not
            # its banner: the boot has started when the initramfs's /init says so.
            "kernel-start-message": INIT_STARTED,
            "shutdown-message": "reboot: Power down",
            "default-shell-prompt": PROMPT,
            "spawn_maxread": "4092",
            # One try: a job that fails must say so, not pass on a second boot.
            "failure_retry": 1,
            "boot_retry": 1,
            "posix": {
                "lava_test_sh_cmd": "/bin/sh",
                "lava_test_results_dir": "/lava-%s",
                "lava_test_shell_file": "~/.profile",
            },
        },
        "parameters": {},
        "actions": {
            "deploy": {"methods": {"image": {"parameters": {}}}, "connections": {"serial": None}},
            "boot": {
                "connections": {"serial": None},
                "methods": {
                    "qemu": {
                        "parameters": {
                            "command": parts.binary,
                            "options": parts.machine_options,
                        }
                    }
                },
            },
        },
        "timeouts": {
            "actions": {"apply-overlay-image": {"minutes": 2}},
            "connections": {"lava-test-shell": {"seconds": 60}},
        },
    }


DEVICE_DICTIONARY_TEXT = """\
{# A LAVA server's device dictionary for a QEMU worker that runs pvfront's jobs.
   lava-server's qemu.jinja2 takes arch, machine, cpu and memory from each job's context
   and adds the images' image_arg; pvfront's jobs bring their own disks and NIC. Not
   rendered on the machine that wrote it (no lava-server there): a worker whose template
   adds a NIC of its own gives the guest one more virtio device, which pvf_pci takes too. #}
{% extends 'qemu.jinja2' %}
{% set no_kvm = True %}
"""


def _dump(data: object) -> str:
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
    return text


def _write(path: Path, data: bytes) -> None:
    """Write only what changed, so an unchanged export keeps its files as they were."""
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_target(
    tree: KernelTree,
    modules: Sequence[Path],
    chosen: Sequence[Scenario],
    out: Path,
    url_prefix: str | None,
    index_cache: Path,
) -> Export:
    """Write out/<target>/: the kernel, each scenario's initramfs, disks and job, and the
    device YAML. url_prefix None: file:// URLs to these very files, for a local lava-run."""
    target_id = tree.target.id
    directory = out / target_id
    directory.mkdir(parents=True, exist_ok=True)
    prefix = url_prefix if url_prefix is not None else FILE_SCHEME + str(out.resolve())
    by_name = {m.stem: m for m in modules}

    kernel_name = "vmlinuz"
    kernel = tree.vmlinuz.read_bytes()
    _write(directory / kernel_name, kernel)
    jobs = []
    for scenario in chosen:
        missing = [m for m in scenario.modules if m not in by_name]
        if missing:
            raise UsageError(f"{target_id}: the build made no {', '.join(missing)}")
        image = initramfs.build(
            tree,
            initramfs.ImageSpec(
                modules=[by_name[m] for m in scenario.modules],
                init=initramfs.InitOptions(shell_on_console=True, load_modules=False),
            ),
            directory / f"{scenario.name}-initramfs.cpio.gz",
            index_cache,
        )
        disks, digests = [], {}
        for disk in scenario.disks:
            name = f"{scenario.name}-{disk.label}.img"
            path = make_disk(directory, disk.size_mib, pattern_seed=disk.pattern_seed, name=name)
            digests[disk.label] = sha256_file(path)
            placeholder = Path("{" + disk.label + "}")
            disks.append((disk.label, name, Disk(placeholder, serial=disk.serial)))
        parts = qemu_parts(tree, [d for _, _, d in disks], scenario.nics)
        images = {
            "kernel": _image(
                _url(prefix, target_id, kernel_name), parts.kernel_arg, _sha256(kernel)
            ),
            # The NICs go with the initramfs: every job has one, and a NIC has no file.
            "initrd": _image(
                _url(prefix, target_id, image.path.name),
                [*parts.initrd_arg, *parts.nic_args],
                sha256_file(image.path),
            ),
        }
        for label, name, _ in disks:
            images[label] = _image(_url(prefix, target_id, name), [], digests[label])
        if disks:
            # All disks' options on the first disk: qemu_parts gives them as one list.
            first = disks[0][0]
            images[first]["image_arg"] = " ".join(_word(a) for a in parts.disk_args)
        definition = job_definition(tree, scenario, images, Artifacts(digests))
        job = directory / JOB_FILE.format(scenario=scenario.name)
        _write(job, _dump(definition).encode())
        jobs.append(job)
    device = directory / DEVICE_FILE
    _write(device, _dump(device_yaml(tree)).encode())
    _write(out / DEVICE_DICTIONARY, DEVICE_DICTIONARY_TEXT.encode())
    return Export(target_id, directory, tuple(jobs), device)
