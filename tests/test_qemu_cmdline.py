"""The QEMU command line, the KVM-or-TCG choice and the kernel image QEMU boots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pvfront import qemu
from pvfront.errors import UsageError
from pvfront.qemu import Channels, Disk, Machine, Nic, Trace, command_line
from pvfront.targets import Target

Q35 = Target("t64", "bookworm", "amd64", "amd64", "qemu-system-x86_64", "q35")
PC = Target("t32", "bookworm", "i386", "686", "qemu-system-i386", "pc")
SOCKETS = Channels(Path("/r/con.sock"), Path("/r/sh.sock"))


def argv(target: Target = Q35, channels: Channels = SOCKETS, **options) -> list[str]:
    return command_line(Machine(target, Path("/k/vmlinuz"), Path("/r/initrd"), **options), channels)


def option_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args) if arg == flag]


def test_a_machine_without_a_kernel_boots_its_first_disk_through_the_firmware():
    args = command_line(
        Machine(
            Q35,
            None,
            None,
            cmdline=("root=/dev/vda1",),
            disks=(Disk(Path("/d/overlay.qcow2"), format="qcow2"),),
        ),
        SOCKETS,
    )
    assert not {"-kernel", "-initrd", "-append"} & set(args)
    assert option_values(args, "-drive") == ["if=none,id=disk0,format=qcow2,file=/d/overlay.qcow2"]


def test_a_bare_machine_is_minimal_and_dies_with_its_kernel():
    args = argv()
    assert args[0] == "qemu-system-x86_64"
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in args
    assert option_values(args, "-machine") == ["q35"]
    assert option_values(args, "-accel") == ["tcg"]
    assert option_values(args, "-cpu") == ["max"]
    assert option_values(args, "-nic") == ["none"]
    assert option_values(args, "-display") == ["none"]
    assert "-device" not in args and "-netdev" not in args
    cmdline = option_values(args, "-append")[0].split()
    for param in ("panic=-1", "softlockup_panic=1", "hung_task_panic=1", "console=ttyS0,115200"):
        assert param in cmdline


def test_the_target_picks_emulator_and_machine():
    args = argv(PC)
    assert args[0] == "qemu-system-i386" and option_values(args, "-machine") == ["pc"]


def test_a_32_bit_guest_under_tcg_gets_a_cpu_its_kernel_runs_smp_on():
    """TCG's max CPU is an AMD family 6, an Athlon to a 32-bit kernel, which warns on SMP."""
    [cpu] = option_values(argv(PC), "-cpu")
    assert cpu.split(",")[0] == "max" and "vendor=GenuineIntel" in cpu.split(",")[1:]


def test_several_vcpus_share_one_tcg_thread_when_asked_and_one_vcpu_never_needs_to():
    assert option_values(argv(smp=2, tcg_threads="single"), "-accel") == ["tcg,thread=single"]
    assert option_values(argv(smp=2, tcg_threads="multi"), "-accel") == ["tcg,thread=multi"]
    assert option_values(argv(smp=1, tcg_threads="single"), "-accel") == ["tcg"]
    assert option_values(argv(smp=2, accel="kvm", tcg_threads="single"), "-accel") == ["kvm"]
    with pytest.raises(UsageError, match="thread mode"):
        argv(smp=2, tcg_threads="many")


def test_qemu_before_8_1_runs_vcpus_on_one_thread_because_its_translation_races_code_patching():
    assert qemu.tcg_threads((7, 2)) == "single"
    assert qemu.tcg_threads((8, 0)) == "single"
    assert qemu.tcg_threads(None) == "single"  # unknown: the safe choice
    assert qemu.tcg_threads((8, 1)) == "multi"
    assert qemu.tcg_threads((10, 0)) == "multi"


def test_the_qemu_version_comes_from_the_binary_itself(tmp_path):
    fake = tmp_path / "qemu-system-fake"
    fake.write_text(
        "#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)'\n"
        "echo 'Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers'\n"
    )
    fake.chmod(0o755)
    assert qemu.qemu_version(str(fake)) == (7, 2)
    assert qemu.qemu_version(str(tmp_path / "missing")) is None
    silent = tmp_path / "qemu-system-silent"
    silent.write_text("#!/bin/sh\nexit 1\n")
    silent.chmod(0o755)
    assert qemu.qemu_version(str(silent)) is None


def test_kernel_console_and_shell_are_two_serial_sockets_qemu_waits_for():
    args = argv(channels=Channels(Path("/r/con.sock"), Path("/r/sh.sock"), Path("/r/qmp.sock")))
    assert option_values(args, "-chardev") == [
        "socket,id=con,path=/r/con.sock,server=on,wait=on",
        "socket,id=sh,path=/r/sh.sock,server=on,wait=on",
    ]
    assert option_values(args, "-serial") == ["chardev:con", "chardev:sh"]  # ttyS0, ttyS1
    assert option_values(args, "-qmp") == ["unix:/r/qmp.sock,server=on,wait=off"]


def test_the_interactive_console_is_the_terminal():
    args = argv(channels=Channels(None, None))
    assert option_values(args, "-serial") == ["mon:stdio"] and "-chardev" not in args


def test_size_smp_trace_and_extra_parameters_pass_through():
    args = argv(
        memory_mib=512,
        smp=2,
        cmdline=("oops=panic",),
        trace=Trace(Path("/e/events"), Path("/e/out")),
        extra_args=("-S",),
    )
    assert option_values(args, "-m") == ["512"] and option_values(args, "-smp") == ["2"]
    assert option_values(args, "-trace") == ["events=/e/events,file=/e/out"]
    assert option_values(args, "-append")[0].endswith("oops=panic")
    assert args[-1] == "-S"


def test_virtio_disks_modern_transitional_readonly_serial():
    args = argv(
        disks=(
            Disk(Path("/d/a.img"), readonly=True, serial="S1"),
            Disk(Path("/d/b.img"), modern_only=False),
        )
    )
    assert option_values(args, "-drive") == [
        "if=none,id=disk0,format=raw,file=/d/a.img,readonly=on",
        "if=none,id=disk1,format=raw,file=/d/b.img",
    ]
    assert option_values(args, "-device") == [
        "virtio-blk-pci,id=vblk0,drive=disk0,disable-legacy=on,disable-modern=off,serial=S1",
        "virtio-blk-pci,id=vblk1,drive=disk1,disable-legacy=off,disable-modern=off",
    ]


def test_hotpluggable_devices_get_a_root_port_on_q35_only():
    disk = Disk(Path("/d/a.img"), hotplug=True)
    q35 = option_values(argv(disks=(disk,)), "-device")
    assert q35[0] == "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"
    assert ",bus=rp0" in q35[1]
    assert option_values(argv(PC, disks=(disk,)), "-device")[0].startswith("virtio-blk-pci")


def test_blkdebug_wraps_the_image():
    args = argv(disks=(Disk(Path("/d/a.img"), blkdebug=Path("/d/rules.conf")),))
    assert option_values(args, "-drive") == [
        "if=none,id=disk0,driver=raw,file.driver=blkdebug,file.config=/d/rules.conf,"
        "file.image.driver=file,file.image.filename=/d/a.img"
    ]


def test_baseline_disks_use_the_machines_own_controllers():
    sata = Disk(Path("/d/s.img"), interface="ahci")
    assert option_values(argv(disks=(sata,)), "-device") == [
        "ide-hd,id=ahcidisk0,drive=disk0,bus=ide.0"
    ]  # q35's ICH9 AHCI
    assert option_values(argv(PC, disks=(sata,)), "-device") == [
        "ahci,id=ahci",
        "ide-hd,id=ahcidisk0,drive=disk0,bus=ahci.0",
    ]
    ide = Disk(Path("/d/i.img"), interface="ide")
    assert option_values(argv(PC, disks=(ide, ide)), "-device") == [
        "ide-hd,id=idedisk0,drive=disk0,bus=ide.0,unit=0",
        "ide-hd,id=idedisk1,drive=disk1,bus=ide.0,unit=1",
    ]
    with pytest.raises(UsageError, match="no legacy IDE"):
        argv(disks=(ide,))
    with pytest.raises(UsageError, match="unknown disk interface"):
        argv(disks=(Disk(Path("/d/x.img"), interface="scsi"),))


def test_nics_forward_host_ports_on_loopback_only_and_load_no_rom():
    args = argv(nics=(Nic(forwards=((2222, 22), (8080, 80))), Nic(model="e1000")))
    assert "-nic" not in args
    assert option_values(args, "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
        "user,id=net1",
    ]
    assert option_values(args, "-device") == [
        "virtio-net-pci,id=vnet0,netdev=net0,disable-legacy=on,disable-modern=off,romfile=",
        "e1000,id=e1000n1,netdev=net1,romfile=",
    ]
    with pytest.raises(UsageError, match="unknown NIC model"):
        argv(nics=(Nic(model="rtl8139"),))


def test_a_viommu_comes_before_every_pci_device_and_brings_q35_along():
    disk = Disk(Path("/d/a.img"), iommu_platform=True)
    nic = Nic(iommu_platform=True)
    for target in (Q35, PC):
        args = argv(target, viommu=True, disks=(disk,), nics=(nic,), cmdline=("intel_iommu=on",))
        assert option_values(args, "-machine") == ["q35"]
        devices = option_values(args, "-device")
        assert devices[0] == "intel-iommu"
        assert devices[1].endswith(",disable-legacy=on,disable-modern=off,iommu_platform=on")
        assert ",iommu_platform=on,romfile=" in devices[2]
        assert "intel_iommu=on" in option_values(args, "-append")[0].split()
    assert "intel-iommu" not in argv(disks=(disk,))  # iommu_platform alone: no IOMMU


def test_s3_is_offered_through_the_machines_acpi_pm_device():
    assert not [g for g in option_values(argv(), "-global") if "disable_s3" in g]
    assert option_values(argv(Q35, s3=True), "-global") == ["ICH9-LPC.disable_s3=0"]
    assert option_values(argv(PC, s3=True), "-global") == ["PIIX4_PM.disable_s3=0"]


def test_iommu_platform_needs_a_modern_only_virtio_device():
    with pytest.raises(UsageError, match="modern-only"):
        argv(disks=(Disk(Path("/d/a.img"), modern_only=False, iommu_platform=True),))
    with pytest.raises(UsageError, match="modern-only"):
        argv(nics=(Nic(modern_only=False, iommu_platform=True),))
    with pytest.raises(UsageError, match="virtio option"):
        argv(disks=(Disk(Path("/d/a.img"), interface="ahci", iommu_platform=True),))
    with pytest.raises(UsageError, match="virtio option"):
        argv(nics=(Nic(model="e1000", iommu_platform=True),))


def test_kvm_uses_the_host_cpu():
    args = argv(accel="kvm")
    assert option_values(args, "-accel") == ["kvm"] and option_values(args, "-cpu") == ["host"]
    with pytest.raises(UsageError):
        argv(accel="hvf")


# ------------------------------------------------------------------ KVM or TCG


@pytest.fixture
def kvm_device(monkeypatch):
    monkeypatch.delenv("PVFRONT_ACCEL", raising=False)
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: path == "/dev/kvm")


def test_the_probe_runs_once_and_its_verdict_is_cached(tmp_path, kvm_device):
    calls = []

    def probe():
        calls.append(1)
        return False, "no userspace within 5s"

    cache = tmp_path / "accel.json"
    first = qemu.choose_accel(probe, "qemu-system-x86_64", cache)
    second = qemu.choose_accel(probe, "qemu-system-x86_64", cache)
    assert (first.accel, second.accel) == ("tcg", "tcg")
    assert len(calls) == 1 and "cached" in second.reason
    assert [v["accel"] for v in json.loads(cache.read_text()).values()] == ["tcg"]


def test_a_probe_that_boots_chooses_kvm(tmp_path, kvm_device):
    choice = qemu.choose_accel(
        lambda: (True, "userspace after 0.8s"), "qemu-system-x86_64", tmp_path / "accel.json"
    )
    assert choice.accel == "kvm"


def test_no_kvm_device_means_tcg_without_probing(tmp_path, monkeypatch):
    monkeypatch.delenv("PVFRONT_ACCEL", raising=False)
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: False)
    choice = qemu.choose_accel(lambda: pytest.fail("probed"), "q", tmp_path / "a.json")
    assert choice.accel == "tcg"


def test_the_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("PVFRONT_ACCEL", "tcg")
    assert qemu.choose_accel(lambda: pytest.fail("probed"), "q", tmp_path / "a").accel == "tcg"
    monkeypatch.setenv("PVFRONT_ACCEL", "fast")
    with pytest.raises(UsageError, match="PVFRONT_ACCEL"):
        qemu.choose_accel(lambda: (True, ""), "q", tmp_path / "a")


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU")
def test_a_hanging_probe_gives_up_quickly():
    # -S: QEMU starts with the CPU stopped, so nothing ever reaches the serial line.
    ok, detail = qemu.run_probe(
        ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-serial", "stdio", "-S"],
        b"never",
        timeout=1.0,
    )
    assert not ok and "within" in detail


# ------------------------------------------------------------------ the kernel image


def test_64bit_pvh_kernels_boot_from_the_bare_elf(target_tree, tmp_path):
    arch = target_tree.target.architecture
    chosen = qemu.boot_kernel(target_tree.vmlinuz, target_tree.config, arch, tmp_path, "k")
    pvh = "CONFIG_PVH=y" in target_tree.config.read_text().splitlines()
    if arch.boots_bare_vmlinux and pvh:
        assert chosen == tmp_path / "k.vmlinux" and chosen.read_bytes()[:4] == b"\x7fELF"
        again = qemu.boot_kernel(target_tree.vmlinuz, target_tree.config, arch, tmp_path, "k")
        assert again == chosen
    else:
        assert chosen == target_tree.vmlinuz


def test_a_file_that_is_no_bzimage_yields_nothing(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 4096)
    assert qemu.extract_vmlinux(junk) == b""


def test_device_layout_and_config_options_reach_the_virtio_devices():
    disk = Disk(Path("/d/a.img"), page_per_vq=True, block_size=8192)
    nic = Nic(page_per_vq=True, mtu=60)
    blk, net = option_values(argv(disks=(disk,), nics=(nic,)), "-device")
    assert blk.endswith(",page-per-vq=on,logical_block_size=8192,physical_block_size=8192"), blk
    assert ",page-per-vq=on,host_mtu=60,romfile=" in net, net
    ahci = Disk(Path("/d/a.img"), interface="ahci", block_size=4096)
    assert "logical_block_size=4096" in option_values(argv(disks=(ahci,)), "-device")[-1]
    for option in ({"page_per_vq": True}, {"mtu": 9000}):
        with pytest.raises(UsageError, match="virtio option"):
            argv(nics=(Nic(model="e1000", **option),))
    with pytest.raises(UsageError, match="virtio option"):
        argv(disks=(Disk(Path("/d/a.img"), interface="ide", page_per_vq=True),))


def test_a_tap_nic_runs_qemu_in_its_namespace_with_virtio_net_headers_and_given_offers():
    nic = Nic(tap="tap0", properties=("host_tso4=off", "mrg_rxbuf=off"))
    args = argv(nics=(nic,), netns="pvfront-1-ab")
    assert args[:5] == ["ip", "netns", "exec", "pvfront-1-ab", "qemu-system-x86_64"]
    assert option_values(args, "-netdev") == [
        "tap,id=net0,ifname=tap0,script=no,downscript=no,vnet_hdr=on"
    ]
    [device] = option_values(args, "-device")
    assert device.startswith("virtio-net-pci,id=vnet0,netdev=net0,")
    assert ",host_tso4=off,mrg_rxbuf=off," in device
    # User networking stays the default, and runs where pvfront runs.
    assert argv(nics=(Nic(),))[0] == "qemu-system-x86_64"


def test_a_tap_nic_without_a_namespace_or_with_port_forwards_is_refused():
    with pytest.raises(UsageError, match="NIC on tap0: a TAP NIC needs the machine's network"):
        argv(nics=(Nic(tap="tap0"),))
    with pytest.raises(UsageError, match="NIC on tap0: port forwards are a user-networking"):
        argv(nics=(Nic(tap="tap0", forwards=((8080, 80),)),), netns="n")
    with pytest.raises(UsageError, match="properties is a virtio option, not one of e1000"):
        argv(nics=(Nic(model="e1000", properties=("x=y",)),))
