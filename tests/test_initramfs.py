"""The guest image: a deterministic newc archive holding busybox, /init and modules."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pvfront import architectures, elf, initramfs
from pvfront.depmod import ModuleIndex
from pvfront.initramfs import Entry, ImageSpec, InitOptions, read_newc, write_newc


@pytest.fixture(scope="module")
def index_cache(ws) -> Path:
    # The shared cache: `depmod -n` over a whole 6.12 tree takes seconds.
    return ws.build_dir / "modindex"


def entries_by_path(image: Path) -> dict[str, Entry]:
    return {e.path: e for e in read_newc(image.read_bytes())}


# ------------------------------------------------------------------ the archive format


def test_newc_round_trips_and_sorts_entries_with_parents_first():
    archive = write_newc(
        [
            Entry("sbin/init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
            Entry("bin", stat.S_IFDIR | 0o755),
            Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
            Entry("sbin", stat.S_IFDIR | 0o755),
            Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        ]
    )
    back = read_newc(archive)
    assert [e.path for e in back] == ["bin", "bin/sh", "dev/console", "sbin", "sbin/init"]
    assert back[4].data == b"#!/bin/sh\n"
    assert back[2].rdev == (5, 1)
    assert len(archive) % 4 == 0


def test_newc_refuses_duplicate_paths():
    with pytest.raises(initramfs.UsageError, match="duplicate"):
        write_newc([Entry("a", stat.S_IFREG | 0o644), Entry("a", stat.S_IFREG | 0o644)])


def test_gzip_header_has_no_mtime_and_no_name():
    packed = initramfs.compress(b"x" * 1000, 1)
    assert packed[:3] == b"\x1f\x8b\x08"
    assert packed[3] == 0  # FLG: no FNAME
    assert packed[4:8] == b"\0\0\0\0"  # MTIME
    assert gzip.decompress(packed) == b"x" * 1000
    assert initramfs.compress(b"raw", None) == b"raw"


def test_gnu_cpio_reads_what_we_write(tmp_path):
    archive = write_newc(
        [
            Entry("etc", stat.S_IFDIR | 0o755),
            Entry("etc/motd", stat.S_IFREG | 0o644, b"hello\n"),
            Entry("etc/link", stat.S_IFLNK | 0o777, b"motd"),
        ]
    )
    listing = (
        subprocess.run(["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True)
        .stdout.decode()
        .split()
    )
    assert listing == ["etc", "etc/link", "etc/motd"]
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "etc/motd").read_bytes() == b"hello\n"
    assert (tmp_path / "etc/link").readlink() == Path("motd")


# ------------------------------------------------------------------ module dependencies


def test_module_index_loads_dependencies_first_and_skips_builtins():
    dep = (
        "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz "
        "kernel/drivers/virtio/virtio_ring.ko.xz\n"
        "kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz\n"
        "kernel/drivers/virtio/virtio_ring.ko.xz:\n"
        "kernel/drivers/scsi/scsi-mod.ko.xz:\n"
    )
    index = ModuleIndex.parse("6.x", dep, "kernel/drivers/virtio/virtio_pci.ko\n")
    assert index.closure(["virtio_blk"]) == ["virtio_ring", "virtio", "virtio_blk"]
    assert index.closure(["virtio-pci", "scsi_mod"]) == ["scsi_mod"]
    with pytest.raises(initramfs.UsageError, match="no module 'nonesuch'"):
        index.closure(["nonesuch"])


@pytest.mark.parametrize(
    "chain",
    [("virtio_blk", "virtio", "virtio_ring"), ("virtio_net", "net_failover", "failover")],
    ids=lambda chain: chain[0],
)
def test_load_order_sorts_modules_under_test_by_modinfo_depends(
    chain, target_tree, tmp_path, index_cache
):
    index = ModuleIndex.for_tree(target_tree, index_cache)
    builtin = [name for name in chain if name not in index.paths]
    if builtin:
        pytest.skip(f"{target_tree.target.id} has {', '.join(builtin)} built in")
    copies = []
    for name in chain:  # users first: the order must come from the modules' depends
        source = target_tree.modules_dir / index.paths[name]
        copy = tmp_path / f"{name}.ko"
        copy.write_bytes(elf.read_bytes(source))
        copies.append(copy)
    ordered, outside = initramfs.load_order(copies)
    # Which of virtio and virtio_ring needs the other differs between kernels (6.1 amd64:
    # virtio needs virtio_ring; 5.10 and 6.1-686 the other way): hold each to its depends,
    # as kmod's modinfo reads them.
    names = [p.stem for p in ordered]
    for position, module in enumerate(ordered):
        assert set(_modinfo_depends(module)) & set(chain) <= set(names[:position]), names
    assert names[-1] == chain[0]
    # What the chain needs beyond itself (virtio on kernels with it a module) is modprobed.
    declared = {needed for module in copies for needed in _modinfo_depends(module)}
    assert set(outside) == declared - set(chain)
    # Alone, its depends are the modules to modprobe first, by name.
    ordered, outside = initramfs.load_order([copies[0]])
    assert ordered == [copies[0]] and outside == sorted(_modinfo_depends(copies[0]))


# ------------------------------------------------------------------ the whole image


def test_image_holds_busybox_init_modules_their_closure_and_files(
    target_tree, tmp_path, index_cache
):
    extra = tmp_path / "script.sh"
    extra.write_text("echo hi\n")
    extra.chmod(0o755)
    # A module that needs another: sd_mod and scsi_mod on Debian's kernels.
    index = ModuleIndex.for_tree(target_tree, index_cache)
    top = index.needing_others()[0]
    dependency = index.closure([top])[0]
    spec = ImageSpec(
        in_tree_modules=[top], files={"/opt/script.sh": extra, "/etc/pvf.conf": b"x=1\n"}
    )
    image = initramfs.build(target_tree, spec, tmp_path / "img", index_cache)
    entries = entries_by_path(image.path)
    release = target_tree.release
    assert entries["bin/busybox"].data == target_tree.busybox.read_bytes()
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode)
    init = entries["init"].data.decode()
    assert entries["init"].mode & 0o111
    for needed in (
        "--install -s",
        "mount -t proc",
        "mount -t sysfs",
        "mount -t devtmpfs",
        f"/dev/{target_tree.target.architecture.shell_tty}",
        "poweroff -f",
    ):
        assert needed in init
    assert entries["opt/script.sh"].mode & 0o111 and entries["etc/pvf.conf"].data == b"x=1\n"

    # The module and what it needs, decompressed, with depmod's own modules.dep for them.
    assert image.in_tree_modules[-1] == top and dependency in image.in_tree_modules
    modules = {p for p in entries if p.endswith(".ko")}
    assert {elf.module_name_from_path(p) for p in modules} == set(image.in_tree_modules)
    for path in modules:
        assert entries[path].data[:4] == b"\x7fELF"
    dep = entries[f"lib/modules/{release}/modules.dep"].data.decode()
    needs = {
        elf.module_name_from_path(path): [elf.module_name_from_path(n) for n in rest.split()]
        for path, _, rest in (line.partition(":") for line in dep.splitlines())
    }
    assert dependency in needs[top] and ".xz" not in dep
    assert f"lib/modules/{release}/modules.builtin" in entries


def test_same_inputs_give_the_same_bytes(target_tree, tmp_path, index_cache):
    spec = ImageSpec(in_tree_modules=["virtio_blk"], files={"/a": b"1"})
    first = initramfs.build(target_tree, spec, tmp_path / "one", index_cache).path.read_bytes()
    second = initramfs.build(target_tree, spec, tmp_path / "two", index_cache).path.read_bytes()
    assert first == second
    raw = gzip.decompress(first)
    entries = read_newc(raw)
    # Fixed owner and time, inodes counting up: check the raw headers.
    for ino, offset in enumerate(_header_offsets(raw), start=1):
        fields = [int(raw[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        assert (fields[0], fields[2], fields[3], fields[5]) == (ino, 0, 0, 0)
    assert len(list(_header_offsets(raw))) == len(entries)


def _header_offsets(raw: bytes):
    offset = 0
    while True:
        name_size = int(raw[offset + 94 : offset + 102], 16)
        size = int(raw[offset + 54 : offset + 62], 16)
        name = raw[offset + 110 : offset + 110 + name_size - 1]
        if name == b"TRAILER!!!":
            return
        yield offset
        data = offset + 110 + name_size
        data += -data % 4
        offset = data + size + (-size % 4)


def test_cpio_extracts_the_image_and_its_modules_dep_follows_each_modules_own_depends(
    target_tree, tmp_path, index_cache
):
    """Checked against what each extracted module declares (kmod's `modinfo -F depends`), not
    against depmod, which made the image's modules.dep in the first place: every module of the
    image has a modules.dep line naming exactly the files of its dependency closure, and every
    file modules.dep names is in the image."""
    image = initramfs.build(
        target_tree,
        ImageSpec(
            in_tree_modules=[
                ModuleIndex.for_tree(target_tree, index_cache).needing_others()[0],
                "virtio_blk",
            ]
        ),
        tmp_path / "img",
        index_cache,
    )
    root = tmp_path / "root"
    root.mkdir()
    raw = gzip.decompress(image.path.read_bytes())
    # --no-absolute-filenames and no device nodes as non-root: extract regular content only.
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
        input=raw,
        cwd=root,
        check=True,
    )
    assert (root / "init").read_bytes() == entries_by_path(image.path)["init"].data
    modules = root / "lib" / "modules" / target_tree.release
    files = {_name(p): p.relative_to(modules).as_posix() for p in modules.rglob("*.ko")}
    declared = {name: _modinfo_depends(modules / rel) for name, rel in files.items()}
    dep = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        dep[path] = needs.split()
    assert set(dep) == set(files.values())
    for name, rel in files.items():
        closure, todo = set(), list(declared[name])
        while todo:
            needed = todo.pop()
            assert needed in declared, f"{name} needs {needed}, which the image lacks"
            if needed not in closure:
                closure.add(needed)
                todo.extend(declared[needed])
        assert sorted(dep[rel]) == sorted(files[n] for n in closure), name
    assert any(dep.values()), "no module of the image needs another: nothing was checked"


def _name(path: Path) -> str:
    return path.name.removesuffix(".ko").replace("-", "_")


def _modinfo_depends(module: Path) -> list[str]:
    out = subprocess.run(
        ["modinfo", "-F", "depends", str(module)], capture_output=True, text=True, check=True
    ).stdout
    return [d.strip().replace("-", "_") for d in out.strip().split(",") if d.strip()]


def test_generated_init_loads_modules_in_order_when_asked():
    init = initramfs.render_init(
        InitOptions(load_modules=True),
        "6.1.0-x",
        ["virtio_ring"],
        ["pvf_core.ko", "pvf_blk.ko"],
        architectures.AMD64,
    )
    lines = init.splitlines()
    assert (
        lines.index("modprobe -a virtio_ring")
        < lines.index("insmod /lib/modules/6.1.0-x/extra/pvf_core.ko")
        < lines.index("insmod /lib/modules/6.1.0-x/extra/pvf_blk.ko")
    )


def test_the_shell_reads_the_second_serial_line_or_the_console_when_interactive():
    arch = architectures.AMD64
    own_line = initramfs.render_init(InitOptions(), "r", [], [], arch)
    assert f"<>/dev/{arch.shell_tty}" in own_line and arch.console_tty not in own_line
    console = initramfs.render_init(InitOptions(shell_on_console=True), "r", [], [], arch)
    assert f"<>/dev/{arch.console_tty}" in console and arch.shell_tty not in console


def test_bad_guest_paths_are_usage_errors(target_tree, tmp_path, index_cache):
    with pytest.raises(initramfs.UsageError, match="bad guest path"):
        initramfs.build(
            target_tree, ImageSpec(files={"/../etc/x": b""}), tmp_path / "i", index_cache
        )


@pytest.mark.skipif(shutil.which("depmod") is None, reason="needs kmod's depmod")
def test_xz_modules_are_stored_decompressed(tmp_path, index_cache, ws):
    from pvfront import provision
    from pvfront.targets import load_targets

    targets = load_targets(ws.targets_file)
    tree = provision.load_tree(ws, targets.get("deb12bpo-amd64"))
    if tree is None:
        pytest.skip("deb12bpo-amd64 (6.12, .ko.xz modules) is not provisioned")
    image = initramfs.build(
        tree, ImageSpec(in_tree_modules=["virtio_blk"]), tmp_path / "i", index_cache
    )
    entries = entries_by_path(image.path)
    path = next(p for p in entries if p.endswith("/virtio_blk.ko"))
    assert entries[path].data[:4] == b"\x7fELF"
    assert not any(p.endswith(".xz") for p in entries)
