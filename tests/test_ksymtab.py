"""vmlinux's exports read from the kernel image itself, checked against the headers'
Module.symvers of every provisioned target; symcheck against a module tree without headers
(merged-/usr trixie, /boot-less sid); broken images; vermagic on a kernel without
MODVERSIONS."""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from pvfront import compression, provision
from pvfront.elf import ModuleInfo, read_module
from pvfront.kerneltree import KernelTree
from pvfront.ksymtab import ImageExports, read_image
from pvfront.qemu import extract_vmlinux
from pvfront.symcheck import VERMAGIC, check_module
from pvfront.symvers import (
    VMLINUX,
    KernelSourceError,
    kernel_from_path,
    module_files,
    parse_config,
    parse_symvers,
    read_text,
    reference_module,
)
from pvfront.targets import load_targets
from pvfront.workspace import Workspace
from symcheck_support import intree, kernel, tree
from test_cli import assert_one_line_error, run

_WS = Workspace.discover()
TARGETS = [t.id for t in load_targets(_WS.targets_file).targets]
MODULE = "uas"  # an in-tree module that needs other in-tree modules (usb_storage, scsi_mod)


@functools.cache
def _image(target_id: str) -> ImageExports:
    return read_image(tree(target_id).vmlinuz)


@functools.cache
def _provisioned() -> list[KernelTree]:
    found = (provision.load_tree(_WS, t) for t in load_targets(_WS.targets_file).targets)
    return [t for t in found if t is not None]


def _pick(what: str, wanted: Callable[[KernelTree], bool]) -> KernelTree:
    """The first provisioned tree with a property, so no test names a target."""
    chosen = next((t for t in _provisioned() if wanted(t)), None)
    if chosen is None:
        pytest.skip(f"no provisioned target is {what}")
    return chosen


def _modversions(t: KernelTree) -> bool:
    return parse_config(t.config.read_text()).get("CONFIG_MODVERSIONS") == "y"


def _merged_usr(t: KernelTree) -> bool:
    """Trixie's shape: modules under usr/lib, an image in /boot, a System.map with nothing
    in it (Debian's one-line placeholder)."""
    system_map = t.root / "boot" / f"System.map-{t.release}"
    empty_map = not system_map.is_file() or len(system_map.read_text().splitlines()) <= 1
    return (
        (t.root / "usr" / "lib" / "modules" / t.release).is_dir()
        and empty_map
        and (t.root / "boot" / f"vmlinuz-{t.release}").is_file()
    )


def _image_beside_modules(t: KernelTree) -> bool:
    """Sid's 7.x shape: no /boot, the image in the module tree."""
    return not (t.root / "boot").exists() and t.vmlinuz.parent == t.modules_dir


# --- the exports themselves ----------------------------------------------------------------


@pytest.mark.parametrize("target_id", TARGETS)
def test_image_exports_equal_module_symvers(target_id):
    """Names, GPL-only flags and namespaces of every vmlinux export, and CRCs when the kernel
    has MODVERSIONS (Module.symvers says 0x00000000 without; the image has no __kcrctab)."""
    t = tree(target_id)
    image = _image(target_id)
    symvers = parse_symvers(read_text(t.symvers), str(t.symvers), owners=VMLINUX)
    with_crcs = _modversions(t)
    assert image.modversions == with_crcs
    mine = {e.name: (e.gpl, e.namespace, e.crc) for e in image.exports.values()}
    theirs = {e.name: (e.gpl, e.namespace, e.crc if with_crcs else None) for e in symvers.values()}
    assert set(mine) == set(theirs), (len(mine), len(theirs))
    differing = sorted(n for n in mine if mine[n] != theirs[n])
    assert not differing, [(n, mine[n], theirs[n]) for n in differing[:5]]
    assert all(e.owner == VMLINUX for e in image.exports.values())
    assert any(e.gpl for e in image.exports.values())
    assert any(not e.gpl for e in image.exports.values())


@pytest.mark.parametrize("target_id", TARGETS)
def test_image_knows_its_release_machine_and_vermagic(target_id):
    t = tree(target_id)
    image = _image(target_id)
    assert image.release == t.release
    assert image.machine == read_module(reference_module(t.modules_dir)).machine
    assert image.vermagic == kernel(target_id).vermagic


def test_an_uncompressed_vmlinux_reads_the_same(tmp_path):
    t = _pick("provisioned", lambda t: True)
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(extract_vmlinux(t.vmlinuz))
    found = read_image(vmlinux)
    assert found.compression is None and found.release == t.release
    assert found.exports == _image(t.target.id).exports


def test_a_bare_image_says_module_exports_are_unknown(tmp_path):
    t = _pick("provisioned", lambda t: True)
    alone = tmp_path / t.vmlinuz.name
    alone.symlink_to(t.vmlinuz)
    k = kernel_from_path(alone)
    assert k.source == f"ksymtab of {alone}" and k.modules_dir is None
    assert k.exports == _image(t.target.id).exports
    assert (k.release, k.vermagic) == (t.release, kernel(t.target.id).vermagic)
    assert any("exports of in-tree modules are unknown" in n for n in k.notes)


# --- symcheck against a module tree without headers ------------------------------------------


def _headerless_copy(t: KernelTree, dest: Path) -> Path:
    """The tree's root without headers: its module tree (directories made, files symlinked,
    no build/ or source/), /boot and the /lib symlink. Nothing in the cache is touched."""
    real = t.modules_dir.resolve()
    modules = dest / real.relative_to(t.root.resolve())
    modules.mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name in ("build", "source"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, modules / entry.name, copy_function=os.symlink)
        else:
            (modules / entry.name).symlink_to(entry)
    if (t.root / "lib").is_symlink():
        (dest / "lib").symlink_to(os.readlink(t.root / "lib"))
    if (t.root / "boot").is_dir():
        (dest / "boot").mkdir()
        for entry in (t.root / "boot").iterdir():
            (dest / "boot" / entry.name).symlink_to(entry)
    return modules


def _pvfront(*argv: str, cache: Path):
    """`python -m pvfront ...` running this checkout's code (whatever pip's editable install
    points at), with its own cache."""
    return run(
        [sys.executable, "-m", "pvfront", *argv],
        PVFRONT_CACHE=str(cache),
        PYTHONPATH=str(Path(__file__).resolve().parents[1] / "tooling"),
    )


def _symcheck_json(module: Path, kernel_dir: Path, cache: Path) -> dict:
    proc = _pvfront("symcheck", str(module), "--kernel", str(kernel_dir), "--json", cache=cache)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)["reports"][0]


def _verdicts(report: dict) -> list:
    """What the kernel would do and say (our `detail` wording names the source: left out)."""
    return [
        (
            m["module"],
            m["loads"],
            m["dependencies"],
            m["providers"],
            [
                (f["check"], f["severity"], f["message"], f["symbol"], f["errno"])
                for f in m["findings"]
            ],
        )
        for m in report["modules"]
    ]


def _has_module(t: KernelTree) -> bool:
    return MODULE in module_files(t.modules_dir)


def _foreign_module(t: KernelTree) -> Path | None:
    """The same module from another provisioned kernel of the same machine, if any."""
    machine = read_module(intree(t.target.id, MODULE)).machine
    for other in _provisioned():
        if other.release != t.release and _has_module(other):
            path = intree(other.target.id, MODULE)
            if read_module(path).machine == machine:
                return path
    return None


@pytest.mark.parametrize(
    "shape, wanted",
    [
        ("merged-/usr with a placeholder System.map", _merged_usr),
        ("without /boot, its image beside the modules", _image_beside_modules),
    ],
    ids=["merged-usr", "image-beside-modules"],
)
def test_a_tree_without_headers_gives_the_verdict_of_its_headers(tmp_path, shape, wanted):
    t = _pick(f"{shape} and has {MODULE}", lambda t: wanted(t) and _has_module(t))
    headerless = _headerless_copy(t, tmp_path / "root")
    cache = tmp_path / "cache"
    modules = [intree(t.target.id, MODULE), _foreign_module(t)]
    for module in (m for m in modules if m is not None):
        with_headers = _symcheck_json(module, t.modules_dir, cache)
        without = _symcheck_json(module, headerless, cache)
        assert without["source"].startswith("ksymtab of ")
        assert with_headers["source"].startswith("Module.symvers")
        assert without["vermagic"] == with_headers["vermagic"]
        assert _verdicts(without) == _verdicts(with_headers), module
    assert _verdicts(_symcheck_json(modules[0], t.modules_dir, cache))[0][1], (
        "a tree's own module loads into it"
    )


# --- broken images ------------------------------------------------------------------------------


def _payload_span(image: bytes) -> tuple[int, int]:
    """Start and length of the compressed payload (Documentation/arch/x86/boot.rst)."""
    start = ((image[0x1F1] or 4) + 1) * 512 + struct.unpack_from("<I", image, 0x248)[0]
    return start, struct.unpack_from("<I", image, 0x24C)[0]


def _zero_middle(image: bytes) -> bytes:
    start, length = _payload_span(image)
    middle = start + length // 2
    return image[:middle] + bytes(65536) + image[middle + 65536 :]


def _cut_stream(image: bytes) -> bytes:
    """The payload fields say the stream is half as long as it is."""
    start, length = _payload_span(image)
    data = bytearray(image[: start + length // 2])
    struct.pack_into("<I", data, 0x24C, length // 2)
    return bytes(data)


def _one_per_compression() -> list[KernelTree]:
    seen: dict[str, KernelTree] = {}
    for t in _provisioned():
        seen.setdefault(_image(t.target.id).compression or "none", t)
    return list(seen.values())


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda b: b[: len(b) // 2], "truncated kernel image"),
        (_zero_middle, "corrupt"),
        (_cut_stream, "truncated"),
        (lambda b: b[:0x206] + b"\x07\x02" + b[0x208:], "boot protocol 2.07"),
        (lambda b: b.replace(b"HdrS", b"Hdr_", 1), "not a kernel image"),
    ],
    ids=["file-cut", "payload-zeroed", "stream-cut", "old-protocol", "no-setup-header"],
)
def test_a_broken_image_is_one_error_naming_the_file(tmp_path, damage, words):
    trees = _one_per_compression()
    if not trees:
        pytest.skip("no target is provisioned")
    for t in trees:
        broken = tmp_path / f"vmlinuz-{t.release}"
        broken.write_bytes(damage(t.vmlinuz.read_bytes()))
        with pytest.raises(KernelSourceError) as caught:
            read_image(broken)
        message = str(caught.value)
        assert message.startswith(f"{broken}: ") and "\n" not in message
        if words != "corrupt" or _image(t.target.id).compression != "lz4":
            assert words in message, (_image(t.target.id).compression, message)


def _bzimage(payload: bytes) -> bytes:
    """The smallest bzImage the payload fields describe (Documentation/arch/x86/boot.rst): one
    setup sector after the boot sector, boot protocol 2.15, then the payload."""
    image = bytearray(1024)
    image[0x1F1] = 1  # setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    struct.pack_into("<II", image, 0x248, 0, len(payload))
    return bytes(image) + payload


@pytest.mark.parametrize("kind", compression.FORMATS)
def test_a_payload_its_decompressor_refuses_is_one_error_naming_the_image(tmp_path, kind):
    magic = next(m for m, k in compression.MAGIC.items() if k == kind)
    broken = tmp_path / "vmlinuz"
    broken.write_bytes(_bzimage(magic + b"not a stream of that format" * 4 + bytes(4)))
    with pytest.raises(KernelSourceError) as caught:
        read_image(broken)
    message = str(caught.value)
    assert message.startswith(f"{broken}: kernel payload: ") and "\n" not in message
    assert kind in message


def test_an_unreadable_compression_is_named(tmp_path):
    t = _pick("provisioned", lambda t: True)
    image = bytearray(t.vmlinuz.read_bytes())
    start, _ = _payload_span(bytes(image))
    image[start : start + 4] = b"BZh9"
    broken = tmp_path / "vmlinuz"
    broken.write_bytes(bytes(image))
    with pytest.raises(KernelSourceError, match="compressed with bzip2"):
        read_image(broken)


def test_the_cli_reports_a_broken_image_in_one_line(tmp_path):
    t = _pick(f"provisioned with {MODULE}", _has_module)
    module = intree(t.target.id, MODULE)
    truncated = tmp_path / "vmlinuz"
    truncated.write_bytes(t.vmlinuz.read_bytes()[:100_000])
    proc = _pvfront("symcheck", str(module), "--kernel", str(truncated), cache=tmp_path / "c")
    assert_one_line_error(proc, str(truncated), "truncated kernel image")
    corrupt = tmp_path / f"vmlinuz-{t.release}"
    corrupt.write_bytes(_zero_middle(t.vmlinuz.read_bytes()))
    headerless = _headerless_copy(t, tmp_path / "root")
    image = next(
        p
        for p in (tmp_path / "root" / "boot" / corrupt.name, headerless / t.vmlinuz.name)
        if p.is_symlink()
    )
    image.unlink()
    image.symlink_to(corrupt)
    proc = _pvfront("symcheck", str(module), "--kernel", str(headerless), cache=tmp_path / "c")
    assert_one_line_error(proc, str(image), "corrupt")


def test_a_placeholder_system_map_names_the_image_beside_it():
    t = _pick("merged-/usr", _merged_usr)
    with pytest.raises(KernelSourceError, match=r"placeholder System\.map.*vmlinuz-"):
        kernel_from_path(t.root / "boot" / f"System.map-{t.release}")


# --- vermagic on a kernel without MODVERSIONS ---------------------------------------------------


def _with_vermagic(
    module: ModuleInfo,
    magic: str,
    *,
    versions: dict[str, int] | None = None,
    keep_versions: bool = True,
) -> ModuleInfo:
    modinfo = tuple((k, magic if k == "vermagic" else v) for k, v in module.modinfo)
    return replace(module, modinfo=modinfo, versions=module.versions if keep_versions else versions)


def _other_release(magic: str) -> str:
    """The same vermagic for a kernel of another release (one more ABI number)."""
    release, rest = magic.split(" ", 1)
    return f"{release}9 {rest}"


def _vermagic_errors(module: ModuleInfo, k) -> list:
    return [f for f in check_module(module, k).findings if f.check == VERMAGIC and f.error]


def test_without_modversions_no_module_loads_into_another_release():
    """kernel/module/internal.h (!CONFIG_MODVERSIONS): same_magic() is a plain strcmp, so a
    module of another release is refused whether or not it has __versions."""
    t = _pick(
        f"built without MODVERSIONS, with {MODULE}",
        lambda t: not _modversions(t) and _has_module(t),
    )
    k = kernel(t.target.id)
    assert k.vermagic == _image(t.target.id).vermagic and "modversions" not in k.vermagic
    own = read_module(intree(t.target.id, MODULE))
    assert own.versions is None and not _vermagic_errors(own, k)
    other = _with_vermagic(own, _other_release(own.vermagic))
    errors = _vermagic_errors(other, k)
    assert [e.message for e in errors] == [
        f"{MODULE}: version magic '{other.vermagic}' should be '{k.vermagic}'"
    ]
    with_versions = _with_vermagic(
        own, other.vermagic, versions={"module_layout": 1}, keep_versions=False
    )
    assert _vermagic_errors(with_versions, k), "no CONFIG_MODVERSIONS: the release counts"


def test_with_modversions_only_a_module_with_versions_skips_the_release():
    """kernel/module/version.c same_magic(): the release is skipped when the module has CRCs."""
    t = _pick(
        f"built with MODVERSIONS, with {MODULE}", lambda t: _modversions(t) and _has_module(t)
    )
    k = kernel(t.target.id)
    own = read_module(intree(t.target.id, MODULE))
    other = _with_vermagic(own, _other_release(own.vermagic))
    assert own.versions is not None and not _vermagic_errors(other, k)
    stripped = _with_vermagic(other, other.vermagic, versions=None, keep_versions=False)
    assert _vermagic_errors(stripped, k)
