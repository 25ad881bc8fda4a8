"""The package's life in a real Debian guest: apt, initramfs-tools, GRUB, udev, systemd.

The guest is the target's Debian image (`pvfront image`): its own kernel package, booted by
the firmware through GRUB, systemd with a root login shell on the second serial line. Each
test boots a throw-away overlay, so the cached image never changes. Traffic stays inside
QEMU's user network: the guest reaches a server on the host's loopback at 10.0.2.2.

These run on the default target; `--real-guests` runs them on every selected target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from abi_step_support import abi_step, older_workspace
from pvfront import aptrepo, commands, image, package, sourcepackage
from pvfront.guest import IMAGE_BOOT_TIMEOUT, Disk, Guest, GuestError, ImageBoot, Nic, make_disk
from pvfront.kerneltree import KernelTree
from pvfront.metadata import load_family
from pvfront.workspace import Workspace

# A 2-vCPU TCG guest of systemd starves the other suites' guests on a 2-core host, and they
# time out: `invoke test` runs these on their own, after the rest.
pytestmark = [pytest.mark.qemu, pytest.mark.real_guest]

PV_MODULES = ("pvf_ring", "pvf_virtio", "pvf_pci", "pvf_blk", "pvf_net")
EPOCH = 1_780_000_000  # the repository index's date; any fixed one


@pytest.fixture(scope="session")
def guest_image(ws: Workspace, real_target_tree: KernelTree) -> image.GuestImage:
    return image.ensure(ws, real_target_tree)


def exclusive_package(
    ws: Workspace, tree: KernelTree, work: Path, version: str | None = None
) -> package.PackageResult:
    """The tree's package as a user who wants pvfront on every virtio device builds it; of
    another version than the declared one when asked."""
    [built] = commands.build(ws, tree.target.id)
    assert built.ok, built.summary()
    family = load_family(ws.kmod_dir / "modules.toml")
    result = package.package_target(
        ws,
        tree,
        dataclasses.replace(family, version=version or family.version),
        built.modules,
        work,
        work / "out",
        exclusive=True,
    )
    assert result.deb is not None and result.staged is not None, result.refused
    return result


@pytest.fixture(scope="session")
def exclusive_packages(
    ws: Workspace, real_target_tree: KernelTree, tmp_path_factory
) -> package.PackageResult:
    return exclusive_package(ws, real_target_tree, tmp_path_factory.mktemp("exclusive"))


@pytest.fixture(scope="session")
def exclusive_deb(exclusive_packages: package.PackageResult) -> Path:
    assert exclusive_packages.deb is not None
    return exclusive_packages.deb


@pytest.fixture(scope="session")
def next_exclusive_deb(ws: Workspace, real_target_tree: KernelTree, tmp_path_factory) -> Path:
    """The same package as the next version (a later Debian version): what an upgrade brings."""
    version = f"{load_family(ws.kmod_dir / 'modules.toml').version}+1"
    deb = exclusive_package(ws, real_target_tree, tmp_path_factory.mktemp("next"), version).deb
    assert deb is not None
    return deb


@pytest.fixture(scope="session")
def dkms_deb(ws: Workspace, exclusive_packages: package.PackageResult, tmp_path_factory) -> Path:
    """The DKMS package, built from the source package with the same (--exclusive)
    configuration as the prebuilt one."""
    staged = exclusive_packages.staged
    assert staged is not None
    family = load_family(ws.kmod_dir / "modules.toml")
    out = tmp_path_factory.mktemp("dkms")
    [deb] = sourcepackage.build(ws, staged.tree.target, family, staged, out).debs
    return deb


@dataclass(frozen=True)
class Upgrade:
    """A guest of the kernel before the target's, with the package built for that kernel."""

    older: KernelTree  # provisioned in a private workspace
    image: image.GuestImage
    deb: Path


@pytest.fixture(scope="session")
def upgrade(
    ws: Workspace, real_target_tree: KernelTree, tmp_path_factory, request: pytest.FixtureRequest
) -> Upgrade:
    if not request.config.getoption("--real-guests"):
        # Another image, four boots and four initramfs builds under TCG: .ci/run's hour has
        # no room left for it.
        pytest.skip("the kernel upgrade runs with --real-guests")
    step = abi_step(ws, [real_target_tree.target])
    if step is None or step.newest.release != real_target_tree.release:
        pytest.skip(f"the archive offers {real_target_tree.target.id} in one ABI today")
    older_ws, older = older_workspace(ws, tmp_path_factory.mktemp("upgrade"), step)
    deb = exclusive_package(older_ws, older, tmp_path_factory.mktemp("older-package")).deb
    assert deb is not None
    return Upgrade(older, image.ensure(older_ws, older), deb)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def host_server(files: list[Path], directory: Path) -> Iterator[str]:
    """An HTTP server on the host's loopback serving copies of files from directory; yields
    the URL at which the guest reaches it."""
    directory.mkdir(exist_ok=True)
    for path in files:
        (directory / path.name).write_bytes(path.read_bytes())
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://10.0.2.2:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the life-cycle stage in the failure, with the console log the error names."""
    try:
        yield
    except GuestError as exc:
        pytest.fail(f"stage '{name}' failed: {exc}")


def install_debs(guest: Guest, url: str, debs: list[Path]) -> str:
    """One apt-get install of .debs the host serves at url, as a user installs downloads;
    apt's output."""
    for deb in debs:
        guest.run(f"wget -q -O /root/{deb.name} {url}/{deb.name}")
    # update-initramfs and dkms under TCG take minutes each, more on a loaded machine.
    paths = " ".join(f"/root/{deb.name}" for deb in debs)
    return guest.run(f"apt-get install -y {paths}", timeout=1800).output


def install_from_repository(guest: Guest, url: str, directory: Path, name: str, key) -> str:
    """apt-get install by name from pvfront's flat repository, made in the served directory
    and signed with key (the repository_key fixture), as a user with the repository and its
    keyring installs it; apt's output. Only that source is refreshed: the test does not
    depend on Debian's archive being reachable."""
    repository = aptrepo.sign(
        aptrepo.write_repository(directory, EPOCH), key.uid, EPOCH, key.gnupghome
    )
    assert repository.keyring is not None
    keyring = f"/etc/apt/keyrings/{repository.keyring.name}"
    guest.run(f"mkdir -p /etc/apt/keyrings && wget -q -O {keyring} {url}/{repository.keyring.name}")
    source = "/etc/apt/sources.list.d/pvfront.list"
    guest.run(f"echo '{repository.sources_line(url, keyring)}' > {source}")
    guest.run(
        f"apt-get update -o Dir::Etc::SourceList={source} -o Dir::Etc::SourceParts=- "
        "-o APT::Get::List-Cleanup=0",
        timeout=300,
    )
    return guest.run(f"apt-get install -y {name}", timeout=1800).output


def dkms_installed(guest: Guest) -> set[str]:
    """The kernel releases dkms says it has installed pvfront's modules for."""
    status = guest.run("dkms status -m pvfront").output
    return set(re.findall(r"^pvfront/[^,]+, ([^,]+), [^:]+: installed", status, re.M))


def package_of(deb: Path) -> str:
    return deb.name.split("_")[0]


def version_of(deb: Path) -> str:
    return deb.name.split("_")[1]


# What a running system changes whatever is installed (caches, logs, the package managers'
# own records, what daily timers write) and what the test itself writes (the repository's apt
# configuration, the files under /root): left out of the file lists.
_NOT_THE_PACKAGES = (
    "/tmp",
    "/var/tmp",
    "/var/log",
    "/var/cache",
    "/var/backups",
    "/var/spool",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/lib/systemd",
    "/var/lib/dhcp",
    "/var/lib/logrotate",
    "/etc/apt",
    "/root",
)


def list_files(guest: Guest, listing: str) -> None:
    """Every path of the root filesystem, sorted, into a file under /root (in the guest: the
    list is too long for the console)."""
    pruned = " -o ".join(f"-path {path}" for path in _NOT_THE_PACKAGES)
    guest.run(f"find / -xdev \\( {pruned} \\) -prune -o -print | sort > {listing}", timeout=300)


def write_kept_file(guest: Guest) -> str:
    """An 8 MiB file written and synced; its checksum."""
    guest.run("dd if=/dev/urandom of=/root/kept bs=1M count=8 status=none && sync")
    return kept_file(guest)


def kept_file(guest: Guest) -> str:
    return guest.run("sha256sum /root/kept").output.split()[0]


def start_writing(guest: Guest) -> None:
    """Writes that are still in flight when the next command shuts the guest down."""
    guest.run("(dd if=/dev/zero of=/root/busy bs=1M count=64 status=none &)")


def boot(
    ws: Workspace,
    tree: KernelTree,
    overlay: Path,
    label: str,
    *,
    extra_disks: tuple[Disk, ...] = (),
    nics: tuple[Nic, ...] = (Nic(),),
) -> Guest:
    return Guest(
        ws,
        tree,
        image_boot=ImageBoot(),
        disks=[Disk(overlay, format="qcow2"), *extra_disks],
        nics=nics,
        memory_mib=1024,
        smp=2,
        boot_timeout=IMAGE_BOOT_TIMEOUT,
        command_timeout=120,
        label=label,
    )


def wait_for(guest: Guest, condition: str, seconds: int) -> None:
    """Poll a shell condition once a second (in a subshell: `exit` must not end the login)."""
    guest.run(
        f"(for i in $(seq {seconds}); do {condition} && exit 0; sleep 1; done; exit 1)",
        timeout=seconds + 30,
    )


def booted(guest: Guest) -> str:
    """Wait for systemd to finish the boot (the shell comes before swap is on); its state."""
    return guest.run("systemctl is-system-running --wait", check=False, timeout=300).output.strip()


def root_and_swap(guest: Guest) -> tuple[str, list[str]]:
    """The root filesystem's device and the swap devices, once the boot has finished."""
    assert booted(guest) in ("running", "degraded")
    root = guest.run("findmnt -n -o SOURCE /").output.strip()
    swaps = guest.run("swapon --show=NAME --noheadings").output.split()
    return root, swaps


def initramfs_modules_of(guest: Guest, release: str) -> set[str]:
    listing = guest.run(f"lsinitramfs /boot/initrd.img-{release}", timeout=120).output
    return {Path(line).name.split(".ko")[0] for line in listing.split() if ".ko" in line}


def initramfs_modules(guest: Guest) -> set[str]:
    return initramfs_modules_of(guest, "$(uname -r)")


def test_the_image_boots_through_its_boot_loader_with_root_and_swap_found_by_uuid(
    ws: Workspace, real_target_tree: KernelTree, guest_image: image.GuestImage, tmp_path: Path
):
    overlay = guest_image.overlay(tmp_path)
    image_written = guest_image.path.stat().st_mtime_ns
    started = time.monotonic()
    with boot(ws, real_target_tree, overlay, "real-guest-boot", nics=()) as guest:
        shell_after = time.monotonic() - started
        assert guest.run("uname -r").output.strip() == guest_image.release
        assert guest.run("cat /proc/cmdline").output.split()[0].startswith("BOOT_IMAGE=")
        root, swaps = root_and_swap(guest)
        assert (root, swaps) == ("/dev/vda1", ["/dev/vda2"])
        assert booted(guest) == "running", guest.run("systemctl --failed", check=False).output
        guest.poweroff()
    print(f"\n{real_target_tree.target.id}: firmware to a login shell: {shell_after:.1f} s")
    assert guest_image.path.stat().st_mtime_ns == image_written, "the guest wrote to the image"


def test_the_package_moves_root_swap_disks_and_network_to_pvfront_upgrades_and_purges_cleanly(
    ws: Workspace,
    real_target_tree: KernelTree,
    guest_image: image.GuestImage,
    exclusive_deb: Path,
    next_exclusive_deb: Path,
    tmp_path: Path,
    disk_dir: Path,
    repository_key,
):
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * 4096)
    overlay = guest_image.overlay(tmp_path)
    second = Disk(make_disk(disk_dir, 16, pattern_seed=5))
    name = package_of(exclusive_deb)
    status = f"dpkg-query -W -f '${{Status}} ${{Version}}' {name}"
    conffile = "/etc/modprobe.d/pvfront.conf"
    with (
        host_server([exclusive_deb, next_exclusive_deb, payload], tmp_path / "www") as url,
        boot(ws, real_target_tree, overlay, "real-guest-life", extra_disks=(second,)) as g,
    ):
        with stage("install"):
            list_files(g, "/root/files-before-install")
            version = version_of(exclusive_deb)
            install_from_repository(g, url, tmp_path / "www", f"{name}={version}", repository_key)
            assert g.run(status).output.strip() == f"install ok installed {version}"
        with stage("upgrade keeps a conffile the administrator changed"):
            local = "# a local change, which an upgrade keeps"
            g.run(f"echo '{local}' >> {conffile}")
            # The next version from the repository, as `apt-get upgrade` would bring it.
            g.run(f"apt-get install -y {name}", timeout=1800)
            upgraded = f"install ok installed {version_of(next_exclusive_deb)}"
            assert g.run(status).output.strip() == upgraded
            assert g.run(f"tail -n 1 {conffile}").output.strip() == local
            # dpkg kept it without asking: no copy of the package's version beside it
            assert g.run(f"ls {conffile}.* 2>/dev/null | wc -l").output.strip() == "0"
        with stage("initramfs"):
            assert set(PV_MODULES) <= initramfs_modules(g)
        with stage("reboot onto pvfront"):
            g.reboot()
        with stage("root mount"):
            root, swaps = root_and_swap(g)
            assert (root, swaps) == ("/dev/pvda1", ["/dev/pvda2"])
            assert g.run("cat /sys/block/pvdb/size").output.strip() == str(16 * 2048)
            drivers = g.run(
                "for d in /sys/bus/pci/devices/*/driver; do basename $(readlink $d); done"
            ).output.split()
            assert "virtio-pci" not in drivers and drivers.count("pvf_pci") == 3
            loaded = g.run("cut -d' ' -f1 /proc/modules").output.split()
            assert set(PV_MODULES) <= set(loaded)
            # The in-tree drivers may have loaded before the handover; they drive nothing.
            assert g.run("ls /sys/bus/virtio/devices | wc -l").output.strip() == "0"
        with stage("network"):
            link = g.run("basename /sys/bus/pvf_virtio/drivers/pvf_net/*/net/*").output.strip()
            assert link == "pvnet0"  # udev keeps the driver's name: no enp0sN rename
            wait_for(g, f"ip -4 -o addr show dev {link} | grep -q inet", 60)
            fetched = g.run(f"wget -q -O - {url}/payload | sha256sum").output.split()[0]
            assert fetched == hashlib.sha256(payload.read_bytes()).hexdigest()
        with stage("reboot with I/O in flight"):
            kept = write_kept_file(g)
            start_writing(g)
            g.reboot()
            assert kept_file(g) == kept
            assert root_and_swap(g)[0] == "/dev/pvda1"
        with stage("purge"):
            g.run(f"apt-get purge -y {name}", timeout=1200)
            list_files(g, "/root/files-after-purge")
            # Not one file or directory more or fewer than before the install, conffiles
            # (changed by the administrator, too) included.
            diff = "diff /root/files-before-install /root/files-after-purge"
            assert g.run(diff, check=False).output.strip() == ""
            assert not set(PV_MODULES) & initramfs_modules(g)
            g.reboot()
        with stage("back on the in-tree driver"):
            # The fstab names UUIDs, so the same system boots whichever driver has the disk.
            assert root_and_swap(g) == ("/dev/vda1", ["/dev/vda2"])
            assert g.run("cat /sys/block/vdb/size").output.strip() == str(16 * 2048)
            g.poweroff()


def test_dkms_builds_the_package_in_the_guest_and_its_modules_boot_the_root_disk(
    ws: Workspace,
    real_target_tree: KernelTree,
    guest_image: image.GuestImage,
    dkms_deb: Path,
    tmp_path: Path,
    disk_dir: Path,
    repository_key,
):
    overlay = guest_image.overlay(tmp_path)
    pattern = Disk(make_disk(disk_dir, 8, pattern_seed=9))
    release = guest_image.release
    with (
        host_server([dkms_deb], tmp_path / "www") as url,
        boot(ws, real_target_tree, overlay, "real-guest-dkms", extra_disks=(pattern,)) as g,
    ):
        with stage("install"):
            name = package_of(dkms_deb)
            installed = install_from_repository(g, url, tmp_path / "www", name, repository_key)
        with stage("modules"):
            assert dkms_installed(g) == {release}
            path = g.run("modinfo -n pvf_blk").output.strip()
            assert path.startswith(f"/lib/modules/{release}/updates/dkms/pvf_blk.ko"), path
            assert g.run("modinfo -F vermagic pvf_blk").output.split()[0] == release
            # dkms signs with its machine owner key when it can make one (openssl is there);
            # a dkms that does not must have said why.
            if g.run("test -e /var/lib/dkms/mok.pub", check=False).status == 0:
                subject = g.run(
                    "openssl x509 -in /var/lib/dkms/mok.pub -noout -subject "
                    "-nameopt multiline | sed -n 's/^ *commonName *= //p'"
                )
                signer = g.run("modinfo -F signer pvf_blk").output.strip()
                assert signer == subject.output.strip() != ""
            else:
                assert "won't be signed" in installed, installed[-2000:]
        with stage("initramfs"):
            assert set(PV_MODULES) <= initramfs_modules(g)
        with stage("reboot onto the modules dkms built"):
            g.reboot()
            assert root_and_swap(g) == ("/dev/pvda1", ["/dev/pvda2"])
            digest = g.run("sha256sum /dev/pvdb").output.split()[0]
            assert digest == hashlib.sha256(pattern.image.read_bytes()).hexdigest()
        with stage("poweroff with I/O in flight"):
            kept = write_kept_file(g)
            start_writing(g)
            g.poweroff()
    with (
        boot(ws, real_target_tree, overlay, "real-guest-dkms-poweron", extra_disks=(pattern,)) as g,
        stage("power on after the poweroff"),
    ):
        assert root_and_swap(g) == ("/dev/pvda1", ["/dev/pvda2"])
        assert kept_file(g) == kept
        # systemd-shutdown left the root filesystem clean: its journal needs no replay.
        assert "recovery complete" not in g.run("dmesg").output
        g.poweroff()


def test_a_kernel_upgrade_boots_on_the_in_tree_driver_until_the_package_for_it_is_installed(
    ws: Workspace,
    real_target_tree: KernelTree,
    upgrade: Upgrade,
    exclusive_deb: Path,
    tmp_path: Path,
):
    """The field's kernel upgrade with prebuilt modules: a package is for one kernel ABI, so
    the new kernel must still boot without it (on the in-tree drivers), and its own package
    brings it back onto pvfront."""
    new_kernel = image.kernel_package(ws, real_target_tree)
    older, newer = upgrade.older.release, real_target_tree.release
    overlay = upgrade.image.overlay(tmp_path)
    with (
        host_server([upgrade.deb, exclusive_deb, new_kernel], tmp_path / "www") as url,
        boot(ws, upgrade.older, overlay, "real-guest-upgrade") as g,
    ):
        with stage("install the package for the running kernel"):
            assert g.run("uname -r").output.strip() == older
            install_debs(g, url, [upgrade.deb])
            g.reboot()
            assert root_and_swap(g) == ("/dev/pvda1", ["/dev/pvda2"])
        with stage("kernel upgrade"):
            install_debs(g, url, [new_kernel])
            assert not set(PV_MODULES) & initramfs_modules_of(g, newer)
            kept = write_kept_file(g)
            g.reboot()
        with stage("the new kernel, without a package for it"):
            # GRUB boots the newest kernel; no pvfront module exists for it, so the package's
            # initramfs script and modprobe rule leave the devices to the in-tree drivers.
            assert g.run("uname -r").output.strip() == newer
            assert root_and_swap(g) == ("/dev/vda1", ["/dev/vda2"])
            assert kept_file(g) == kept
            assert g.run("modinfo -n pvf_pci", check=False).status != 0
            # Nothing fails for the missing modules (modules-load.d skips them).
            assert booted(g) == "running", g.run("systemctl --failed", check=False).output
        with stage("the package for the new kernel"):
            # One prebuilt package at a time (they share the configuration files): it takes
            # the older one's place.
            install_debs(g, url, [exclusive_deb])
            state = g.run(f"dpkg-query -W -f '${{db:Status-Status}}' {package_of(upgrade.deb)}")
            assert state.output.strip() == "config-files"
            assert set(PV_MODULES) <= initramfs_modules_of(g, newer)
            g.reboot()
            assert g.run("uname -r").output.strip() == newer
            assert root_and_swap(g) == ("/dev/pvda1", ["/dev/pvda2"])
            assert kept_file(g) == kept
            g.poweroff()


def test_with_dkms_a_kernel_upgrade_gets_its_modules_built_and_boots_root_from_pvfront(
    ws: Workspace, real_target_tree: KernelTree, upgrade: Upgrade, dkms_deb: Path, tmp_path: Path
):
    """What DKMS is for: the modules follow the kernel. The new kernel comes with its headers
    in one apt run (as the linux-image-amd64 and linux-headers-amd64 metapackages bring
    them); dkms's kernel hook builds the modules before initramfs-tools' hook makes the new
    initramfs, and the new kernel mounts its root from the pvfront disk."""
    new_kernel = [
        image.kernel_package(ws, real_target_tree),
        *image.headers_packages(ws, real_target_tree),
    ]
    older, newer = upgrade.older.release, real_target_tree.release
    overlay = upgrade.image.overlay(tmp_path)
    with (
        host_server([dkms_deb, *new_kernel], tmp_path / "www") as url,
        boot(ws, upgrade.older, overlay, "real-guest-dkms-upgrade") as g,
    ):
        with stage("install the DKMS package"):
            install_debs(g, url, [dkms_deb])
            assert dkms_installed(g) == {older}
        with stage("kernel upgrade"):
            install_debs(g, url, new_kernel)
            assert dkms_installed(g) == {older, newer}
            assert g.run(f"modinfo -k {newer} -F vermagic pvf_blk").output.split()[0] == newer
            assert set(PV_MODULES) <= initramfs_modules_of(g, newer)
            kept = write_kept_file(g)
            g.reboot()
        with stage("the new kernel, on the modules dkms built for it"):
            assert g.run("uname -r").output.strip() == newer
            assert root_and_swap(g) == ("/dev/pvda1", ["/dev/pvda2"])
            assert kept_file(g) == kept
        with stage("purge"):
            g.run(f"apt-get purge -y {package_of(dkms_deb)}", timeout=1800)
            assert dkms_installed(g) == set()
            assert (
                g.run(
                    "ls /lib/modules/*/updates/dkms/pvf_* /usr/src/pvfront-* 2>/dev/null | wc -l"
                ).output.strip()
                == "0"
            )
            for release in (older, newer):
                assert not set(PV_MODULES) & initramfs_modules_of(g, release), release
            g.reboot()
        with stage("back on the in-tree driver"):
            assert root_and_swap(g) == ("/dev/vda1", ["/dev/vda2"])
            assert kept_file(g) == kept
            g.poweroff()
