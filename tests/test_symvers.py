"""Kernel symbol tables: every Module.symvers layout, System.map, and kernels put together
from a target, a headers tree, a module tree, a symvers file or a System.map."""

from __future__ import annotations

import gzip

import pytest

from pvfront.elf import read_module
from pvfront.symvers import (
    KernelSourceError,
    kernel_from_path,
    parse_config,
    parse_symvers,
    parse_system_map,
    reference_module,
    vermagic_from_config,
)
from symcheck_support import TARGET_IDS, config, generic, kernel, modversions, pick, tree

MACHINE = {"amd64": 62, "i386": 3}  # EM_X86_64, EM_386

PRE_54 = (
    "0x1234abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\n"
    "0x0000beef\tbar\tdrivers/x/bar-mod\tEXPORT_SYMBOL_GPL\n"
)
V54 = (
    "0x1234abcd\tfoo\tNS_A\tvmlinux\tEXPORT_SYMBOL\n"
    "0x0000beef\tbar\t\tdrivers/x/bar-mod\tEXPORT_SYMBOL_GPL\n"
)
CURRENT = (
    "0x1234abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\tNS_A\n"
    "0x0000beef\tbar\tdrivers/x/bar-mod\tEXPORT_SYMBOL_GPL\t\n"
)


@pytest.mark.parametrize("text", [PRE_54, V54, CURRENT], ids=["pre-5.4", "5.4", "5.5+"])
def test_every_symvers_layout_gives_the_same_table(text):
    exports = parse_symvers(text, "Module.symvers")
    assert exports["bar"].crc == 0xBEEF and exports["bar"].gpl and exports["bar"].owner == "bar_mod"
    assert exports["foo"].owner == "vmlinux" and not exports["foo"].gpl
    expected_ns = None if text is PRE_54 else "NS_A"
    assert exports["foo"].namespace == expected_ns and exports["bar"].namespace is None


def test_vmlinux_only_keeps_what_depmod_keeps():
    assert set(parse_symvers(CURRENT, "x", owners="vmlinux")) == {"foo"}


@pytest.mark.parametrize(
    "bad, problem",
    [
        (
            "0x1\tfoo\tvmlinux\tEXPORT_SYMBOL\n\n0x2\tbar\tvmlinux\tEXPORT_SYMBOL\n",
            ":2: empty line",
        ),
        ("0x1\tfoo\n", ":1: malformed line"),
        ("zz\tfoo\tvmlinux\tEXPORT_SYMBOL\n", ":1: bad CRC"),
        ("0x1\tfoo\tvmlinux\tEXPORT_SOMETHING\n", ":1: unknown export type"),
        ("", ": empty Module.symvers"),
    ],
)
def test_malformed_symvers_names_file_and_line(bad, problem):
    with pytest.raises(KernelSourceError, match=problem):
        parse_symvers(bad, "S")


def test_gzipped_symvers_and_missing_file(tmp_path):
    path = tmp_path / "symvers-6.1.0-1-amd64.gz"
    path.write_bytes(gzip.compress(CURRENT.encode()))
    k = kernel_from_path(path)
    assert k.exports["foo"].namespace == "NS_A"
    assert any("vermagic unknown" in n for n in k.notes)
    with pytest.raises(KernelSourceError, match="no such file"):
        kernel_from_path(tmp_path / "nothing")


def test_system_map_with_and_without_ksymtab():
    listed, has = parse_system_map(
        "ffffffff81000000 T _text\nffffffff82000000 r __ksymtab_foo\n", "M"
    )
    assert has and set(listed) == {"foo"}
    debian, has = parse_system_map("ffffffff81000000 T _text\nffffffff81000010 t local\n", "M")
    assert not has and set(debian) == {"_text"}
    with pytest.raises(KernelSourceError, match=":1: malformed"):
        parse_system_map("nonsense\n", "M")


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_vermagic_built_from_config_matches_the_in_tree_modules(target_id):
    t = tree(target_id)
    config = parse_config(t.config.read_text())
    in_tree = read_module(reference_module(t.modules_dir)).vermagic
    assert vermagic_from_config(t.release, config) == in_tree


@pytest.mark.parametrize("target_id", TARGET_IDS)
def test_target_kernel_knows_its_loader(target_id):
    """Release, machine and loader settings from the tree; module_layout, the CRC the loader
    checks first, is exported by vmlinux exactly when the kernel has CONFIG_MODVERSIONS."""
    k = kernel(target_id)
    assert k.release == tree(target_id).release
    assert k.machine == MACHINE[tree(target_id).target.arch]
    assert k.config.known
    assert k.config.force_load == (config(target_id).get("CONFIG_MODULE_FORCE_LOAD") == "y")
    if modversions(target_id):
        assert k.exports["module_layout"].owner == "vmlinux"
    else:
        assert "module_layout" not in k.exports


def test_headers_and_module_trees_describe_the_same_kernel():
    g = generic()
    t = tree(g)
    from_headers = kernel_from_path(t.headers_dir)
    from_modules = kernel_from_path(t.modules_dir)
    target = kernel(g)
    for k in (from_headers, from_modules):
        assert (k.release, k.vermagic, k.machine) == (
            target.release,
            target.vermagic,
            target.machine,
        )
        assert k.exports == target.exports


def test_debian_placeholder_system_map_is_reported():
    """Debian's /boot/System.map is a one-line placeholder (the real one is in -dbg)."""
    with_map = pick(where=lambda t: tree(t).system_map.is_file())
    with pytest.raises(KernelSourceError, match=r"placeholder System\.map"):
        kernel_from_path(tree(with_map).system_map)


def test_system_map_fallback_says_what_it_cannot_check(tmp_path):
    """A System.map without __ksymtab_ entries (like Debian's -dbg one), beside a module
    tree: vmlinux's globals count as exports, the modules' exports come from the tree."""
    g = generic()
    t = tree(g)
    vmlinux = parse_symvers(t.symvers.read_text(), "S", owners="vmlinux")
    (tmp_path / "boot").mkdir()
    system_map = tmp_path / "boot" / f"System.map-{t.release}"
    system_map.write_text("".join(f"ffffffff81000000 T {name}\n" for name in vmlinux))
    (tmp_path / "lib" / "modules").mkdir(parents=True)
    (tmp_path / "lib" / "modules" / t.release).symlink_to(t.modules_dir)
    k = kernel_from_path(system_map, cache_dir=tmp_path / "cache")
    assert not k.checks_crcs and not k.checks_namespaces and not k.checks_licences
    assert any("no __ksymtab_ entries" in n for n in k.notes)
    assert any("exports of modules come from the module tree" in n for n in k.notes)
    assert k.exports["usb_stor_suspend"].owner == "usb_storage"
    assert k.vermagic == kernel(g).vermagic
