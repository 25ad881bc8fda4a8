"""Release packages: gated on the symbol checks, kmod-exact metadata, installable, signable."""

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pvfront import buildroot, commands, provision, sourcepackage
from pvfront.elf import read_module
from pvfront.metadata import load_family
from pvfront.package import (
    Signing,
    build_deb,
    build_dkms_source,
    package_target,
    stage,
)
from pvfront.symcheck import check_modules
from pvfront.symvers import kernel_for_tree
from pvfront.targets import load_targets
from pvfront.workspace import Workspace
from symcheck_support import (
    TARGET_IDS,
    generic,
    host_suite,
    layout_crcs_differ,
    same_suite_pair,
)

pytestmark = pytest.mark.kernel  # every test packages modules built for provisioned targets

ws = Workspace.discover()


@pytest.fixture(scope="module")
def family():
    return load_family(ws.kmod_dir / "modules.toml")


@pytest.fixture(scope="module")
def builds():
    results = commands.build(ws, all_targets=True)
    # a target of an unstable suite may be unavailable today; every other one must build
    assert all(r.ok or r.unavailable for r in results), [r.summary() for r in results if not r.ok]
    return {r.target_id: r for r in results}


def built(builds, target_id):
    """The modules built for a target, or a skip when its archive cannot provide it today."""
    result = builds[target_id]
    if result.unavailable:
        pytest.skip(result.summary())
    return result.modules


def tree_of(target_id):
    return provision.ensure(ws, [load_targets(ws.targets_file).get(target_id)])[0]


def doc_paths(package):
    """Debian policy 12.5 and 12.7: a copyright file, and a native package's changelog.gz."""
    return {f"usr/share/doc/{package}/copyright", f"usr/share/doc/{package}/changelog.gz"}


def run(*argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kwargs).stdout


# depmod's text tables; the .bin ones are the same content in kmod's binary trie.
INDEX_TABLES = ("modules.dep", "modules.alias", "modules.symbols", "modules.softdep")


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_the_stage_is_indexed_as_the_targets_own_depmod_indexes_it(
    target_id, family, builds, tmp_path
):
    """The stage's index (from the host's depmod) is what the depmod of the target's suite,
    which runs when the package is installed there, writes for the same modules."""
    modules = built(builds, target_id)
    tree = tree_of(target_id)
    staged = stage(tree, family, modules, tmp_path / "stage")
    ours = {name: (staged.modules_dir / name).read_text() for name in INDEX_TABLES}
    root = buildroot.ensure(ws, tree)
    run(*root.command(["depmod", "-b", str(staged.root), tree.release], binds=[staged.root]))
    for name, text in ours.items():
        assert (staged.modules_dir / name).read_text() == text, name
    assert "alias symbol:pvf_vq_add_sgs pvf_ring" in ours["modules.symbols"]
    assert "alias pci:v00001AF4d00001042sv*sd*bc*sc*i* pvf_pci" in ours["modules.alias"]


def test_the_load_order_puts_every_provider_first(family, builds, tmp_path):
    g = generic()
    staged = stage(tree_of(g), family, built(builds, g), tmp_path / "stage")
    order = staged.load_order()
    assert order[:2] == ["pvf_ring", "pvf_virtio"]
    # Declared in an order that loads (kmod/README.md): where the needs allow, it is kept.
    assert order == [m.name for m in family.modules]
    assert staged.load_order_file.read_text().split() == order
    assert [p.stem for p in staged.module_paths()] == order


def test_the_package_installs_and_modprobe_finds_providers_in_order(family, builds, tmp_path):
    g = generic()
    tree = tree_of(g)
    result = package_target(ws, tree, family, built(builds, g), tmp_path / "work", tmp_path / "out")
    assert (
        result.deb
        and result.deb.name
        == f"pvfront-modules-{tree.release}_{family.version}_{tree.target.arch}.deb"
    )
    info = run("dpkg-deb", "--info", str(result.deb))
    assert f"Package: pvfront-modules-{tree.release}" in info and "postinst" in info
    contents = run("dpkg-deb", "--contents", str(result.deb))
    # Where the kernel's own modules are: /usr/lib/modules from Debian 13 (/lib is /usr/lib).
    modules = f"./{'usr/' if tree.merged_usr else ''}lib/modules/{tree.release}"
    for name in ("pvf_ring", "pvf_virtio", "pvf_pci", "pvf_blk", "pvf_net"):
        assert f"{modules}/updates/pvfront/{name}.ko" in contents
    for config in (
        "etc/modprobe.d/pvfront.conf",
        "etc/modules-load.d/pvfront.conf",
        "usr/share/initramfs-tools/hooks/pvfront",
    ):
        assert f"./{config}" in contents
    # The system's depmod owns the index, the kernel package modules.order and the rest.
    assert f"{modules}/modules." not in contents
    # Packages for two kernels share the configuration files: installing one replaces the other.
    for field in ("Provides", "Conflicts", "Replaces"):
        assert run("dpkg-deb", "-f", str(result.deb), field).strip() == "pvfront-modules"
    # debhelper added the policy's documents
    package = f"pvfront-modules-{tree.release}"
    assert {f"./{path}" for path in doc_paths(package)} <= set(contents.split())
    # Install into a root the way dpkg and the maintainer script would.
    root = tmp_path / "root"
    if tree.merged_usr:
        root.mkdir()
        (root / "lib").symlink_to("usr/lib")
    run("dpkg-deb", "-x", str(result.deb), str(root))
    run("depmod", "-b", str(root), tree.release)
    shown = run(
        "modprobe",
        "-d",
        str(root),
        "-S",
        tree.release,
        "-C",
        str(root / "etc/modprobe.d"),
        "--show-depends",
        "pvf_blk",
    )
    # --show-depends lists each chain in full (the softdep's too); modprobe skips what is loaded
    loaded = list(
        dict.fromkeys(
            Path(line.split()[1]).name for line in shown.splitlines() if line.startswith("insmod")
        )
    )
    assert loaded == ["pvf_ring.ko", "pvf_virtio.ko", "pvf_pci.ko", "pvf_blk.ko"]
    # The modules are the stage's, byte for byte: packaging strips nothing more.
    for staged_module in result.staged.module_paths():
        relative = staged_module.relative_to(result.staged.root)
        assert (root / relative).read_bytes() == staged_module.read_bytes(), relative
    config = (root / "etc/modprobe.d/pvfront.conf").read_text()
    assert "softdep pvf_blk pre: pvf_pci" in config
    assert "blacklist virtio_pci" not in config


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_the_maintainer_scripts_index_and_rebuild_the_initramfs_of_the_one_release_once(
    target_id, family, builds, tmp_path
):
    """What debhelper made of the suite's package: /etc files as conffiles, and maintainer
    scripts that run depmod and update-initramfs once, for the packaged release only (the
    suite's dh_installmodules would add a second depmod, dh_installinitramfs the newest
    kernel's initramfs)."""
    tree = tree_of(target_id)
    staged = stage(tree, family, built(builds, target_id), tmp_path / "stage")
    control = tmp_path / "control"
    run("dpkg-deb", "-e", str(build_deb(ws, staged, family, tmp_path / "out")), str(control))
    assert (control / "conffiles").read_text().split() == [
        "/etc/modprobe.d/pvfront.conf",
        "/etc/modules-load.d/pvfront.conf",
    ]
    assert not (control / "triggers").exists()
    for script in ("postinst", "postrm"):
        text = (control / script).read_text()
        assert run("sh", "-n", str(control / script)) == ""
        assert "#DEBHELPER#" not in text
        for command in ("depmod", "update-initramfs"):
            calls = [line.split() for line in text.splitlines() if line.strip().startswith(command)]
            assert len(calls) == 1, (script, command, calls)
            assert tree.release in calls[0], (script, calls[0])


def test_packaging_is_refused_with_every_reason_when_a_module_would_not_load(
    family, builds, tmp_path
):
    """Modules built for another flavour of the suite, whose module_layout differs."""
    generic_id, rt = same_suite_pair("amd64", "rt-amd64", where=layout_crcs_differ)
    tree = tree_of(generic_id)
    wrong_flavour = built(builds, rt)
    result = package_target(ws, tree, family, wrong_flavour, tmp_path / "work", tmp_path / "out")
    assert result.deb is None and not (tmp_path / "out").exists()
    assert len(result.refused) == len(wrong_flavour)
    assert all("disagrees about version of symbol module_layout" in r for r in result.refused)


def test_pvfront_disks_get_the_persistent_links_fstab_and_swap_name_them_by(
    family, builds, tmp_path
):
    g = generic()
    staged = stage(tree_of(g), family, built(builds, g), tmp_path / "stage")
    rules = staged.root / "usr/lib/udev/rules.d/60-pvfront-persistent-storage.rules"
    text = rules.read_text()
    assert 'KERNEL!="pvd*"' in text and "disk/by-uuid/" in text
    hook = (staged.root / "usr/share/initramfs-tools/hooks/pvfront").read_text()
    assert rules.name in hook


def test_exclusive_packages_give_pvfront_the_devices_and_other_kernels_their_own(
    family, builds, tmp_path
):
    g = generic()
    staged = stage(tree_of(g), family, built(builds, g), tmp_path / "stage", exclusive=True)
    # Asked for the in-tree transport, modprobe loads pvf_pci; a kernel without pvfront's
    # modules (installed after the package) falls back to its own. No blacklist: it would
    # leave that kernel without a transport for its root disk.
    shown = run("modprobe", "-c", "-C", str(staged.root / "etc/modprobe.d"))
    [rule] = [line for line in shown.splitlines() if line.startswith("install virtio_pci ")]
    first, fallback = rule.removeprefix("install virtio_pci ").split(" || ")
    assert first.split() == ["modprobe", "--ignore-install", "pvf_pci"]
    assert fallback.split()[:3] == ["modprobe", "--ignore-install", "virtio_pci"]
    assert "blacklist virtio_pci" not in shown
    # A kernel with virtio_pci built in has bound the devices before any blacklist applies:
    # the initramfs hands them over by driver override, before it looks for the root disk.
    premount = staged.root / "usr/share/initramfs-tools/scripts/init-premount/pvfront"
    assert premount.stat().st_mode & 0o111
    script = premount.read_text()
    assert "driver_override" in script and 'PREREQ="udev"' in script and "| grep" not in script
    assert run("sh", "-n", str(premount)) == ""
    plain = stage(tree_of(g), family, built(builds, g), tmp_path / "plain")
    assert not (plain.root / "usr/share/initramfs-tools/scripts").exists()


def test_signed_modules_name_their_signer(family, builds, tmp_path):
    g = generic()
    tree = tree_of(g)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    run(
        "openssl",
        "req",
        "-new",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=pvfront test signer",
        "-keyout",
        str(key),
        "-outform",
        "PEM",
        "-out",
        str(cert),
    )
    staged = stage(tree, family, built(builds, g), tmp_path / "stage", signing=Signing(key, cert))
    for module in staged.module_paths():
        assert run("modinfo", "-F", "signer", str(module)).strip() == "pvfront test signer"
    # and the package keeps the signatures: debhelper must not strip the modules again
    root = tmp_path / "root"
    run("dpkg-deb", "-x", str(build_deb(ws, staged, family, tmp_path / "out")), str(root))
    packaged = sorted(root.rglob("*.ko"))
    assert [p.name for p in packaged] == sorted(p.name for p in staged.module_paths())
    for module in packaged:
        assert run("modinfo", "-F", "signer", str(module)).strip() == "pvfront test signer"


def test_the_dkms_source_builds_with_dkms_against_a_target_and_passes_symcheck(family, tmp_path):
    """dkms builds on the host, with the host's compiler: against a kernel of its release."""
    tree = tree_of(generic(suite=host_suite()))
    tarball = build_dkms_source(family, tmp_path / "out")
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "src", filter="data")
    (tmp_path / "dkms").mkdir()
    run(
        "dkms",
        "build",
        "-m",
        family.name,
        "-v",
        family.version,
        "-k",
        tree.release,
        "--kernelsourcedir",
        str(tree.headers_dir),
        "--sourcetree",
        str(tmp_path / "src"),
        "--dkmstree",
        str(tmp_path / "dkms"),
    )
    built = sorted((tmp_path / "dkms").rglob("*.ko"))
    assert sorted(p.stem for p in built) == sorted(m.name for m in family.modules)
    report = check_modules([read_module(p) for p in built], kernel_for_tree(tree))
    assert report.ok, [v.reason for v in report.verdicts if not v.loads]


def test_the_source_package_builds_a_dkms_package_with_the_source_and_configuration_only(
    family, builds, tmp_path
):
    g = generic()
    staged = stage(tree_of(g), family, built(builds, g), tmp_path / "stage", exclusive=True)
    target = load_targets(ws.targets_file).get(g)
    built_source = sourcepackage.build(ws, target, family, staged, tmp_path / "out")
    [deb] = built_source.debs
    assert deb.name == f"pvfront-dkms_{family.version}_all.deb"
    assert built_source.dsc.name == f"pvfront_{family.version}.dsc"
    assert built_source.tarball.name in built_source.dsc.read_text()
    fields = {
        name: run("dpkg-deb", "-f", str(deb), name).strip()
        for name in ("Package", "Source", "Architecture", "Provides", "Conflicts")
    }
    # It takes the place of a per-kernel package: both ship the same configuration files.
    assert fields == {
        "Package": "pvfront-dkms",
        "Source": "pvfront",
        "Architecture": "all",
        "Provides": "pvfront-modules",
        "Conflicts": "pvfront-modules",
    }
    assert run("dpkg-deb", "-f", str(deb), "Depends").startswith("dkms")  # dh_dkms's
    root = tmp_path / "root"
    run("dpkg-deb", "-x", str(deb), str(root))
    shipped = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    configuration = {
        str(p.relative_to(staged.root))
        for p in staged.root.rglob("*")
        if p.is_file() and p.parts[len(staged.root.parts)] != "lib"
    }
    source = f"usr/src/{family.name}-{family.version}"
    generated = {"dkms.conf", "Kbuild", *(f"{m.name}.meta.h" for m in family.modules)}
    # Besides: the copyright, the changelog and (for an exclusive package) lintian overrides.
    policy = {*doc_paths("pvfront-dkms"), "usr/share/lintian/overrides/pvfront-dkms"}
    assert shipped - configuration - policy == {
        f"{source}/{name}" for name in {p.name for p in family.source_files()} | generated
    }
    assert policy <= shipped
    for path in configuration:
        assert (root / path).read_bytes() == (staged.root / path).read_bytes(), path
        assert (root / path).stat().st_mode == (staged.root / path).stat().st_mode, path
    dkms_conf = (root / source / "dkms.conf").read_text()
    assert 'AUTOINSTALL="yes"' in dkms_conf  # dkms's kernel hook builds for new kernels
    control = tmp_path / "control"
    run("dpkg-deb", "-e", str(deb), str(control))
    for script in ("postinst", "prerm", "postrm"):
        assert run("sh", "-n", str(control / script)) == ""
    postinst = (control / "postinst").read_text()
    # dh_dkms's part registers and builds the source; pvfront's then updates the initramfs
    assert "#DEBHELPER#" not in postinst
    assert postinst.index("dkms") < postinst.index("update-initramfs")
    # and no initramfs-tools trigger makes the newest kernel's initramfs a second time
    assert not (control / "triggers").exists()
    assert (control / "conffiles").read_text().split() == sorted(
        f"/{path}" for path in configuration if path.startswith("etc/")
    )


def test_two_builds_of_the_source_package_are_the_same_bytes(family, builds, tmp_path):
    """Built again from a tree written at another time, under another umask: the .dsc, the
    source tarball and the .deb do not change (the .buildinfo records the build's
    environment, as it should)."""
    g = generic()
    staged = stage(tree_of(g), family, built(builds, g), tmp_path / "stage", exclusive=True)
    target = load_targets(ws.targets_file).get(g)
    outputs = []
    for attempt, umask in enumerate((0o022, 0o002)):
        old = os.umask(umask)
        try:
            outputs.append(
                sourcepackage.build(ws, target, family, staged, tmp_path / f"out{attempt}")
            )
        finally:
            os.umask(old)
        time.sleep(1.1)  # the second tree's files are written a second later
    first, second = outputs
    pairs = [(first.dsc, second.dsc), (first.tarball, second.tarball)]
    for a, b in [*pairs, *zip(first.debs, second.debs, strict=True)]:
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs"


def parameters_for_testing_only(modules: list[Path]) -> set[str]:
    """module.parameter for each parameter whose description says it is for testing only."""
    found = set()
    for path in modules:
        module = read_module(path)
        for parm in module.info_all("parm"):
            name, _, description = parm.partition(":")
            if description.lower().startswith("testing only"):
                found.add(f"{module.name}.{name}")
    return found


def test_what_is_packaged_has_no_test_hook_and_the_test_build_has_them_all(
    selected_targets, builds
):
    """The fault-injection parameters the QEMU tests drive exist in the test build only."""
    target = selected_targets[0]
    shipped = built(builds, target.id)
    [test_build] = commands.build(ws, target.id, sparse=False, test_hooks=True)
    assert test_build.ok, test_build.summary()
    assert test_build.out_dir != builds[target.id].out_dir
    assert parameters_for_testing_only(shipped) == set()
    assert parameters_for_testing_only(test_build.modules) == {
        "pvf_ring.inject_bad_used",
        "pvf_pci.test_stuck_resets",
        "pvf_net.test_stall_tx",
        "pvf_net.test_fail_restarts",
        "pvf_net.test_reset_delay_ms",
        "pvf_net.test_mute_ctrl",
    }


def test_two_builds_of_a_modules_package_are_the_same_bytes(family, builds, tmp_path):
    """The binary-only debhelper build of one stage, from trees written a second apart under
    two umasks, gives the same .deb."""
    g = generic()
    staged = stage(tree_of(g), family, built(builds, g), tmp_path / "stage", exclusive=True)
    debs = []
    for attempt, umask in enumerate((0o022, 0o002)):
        old = os.umask(umask)
        try:
            debs.append(build_deb(ws, staged, family, tmp_path / f"out{attempt}"))
        finally:
            os.umask(old)
        time.sleep(1.1)
    first, second = debs
    assert first.name == second.name
    assert first.read_bytes() == second.read_bytes(), f"{first.name} differs"
