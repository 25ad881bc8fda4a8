"""A target with a Kconfig fragment is a kernel pvfront builds from its suite's source: the
fragment is declared in targets.toml, decides the build, and every option in it takes."""

from pathlib import Path

import pytest

from pvfront import kernelbuild, provision
from pvfront.apt import PackageVersion
from pvfront.errors import SetupError
from pvfront.kernelbuild import SourceKernel, options_not_taken
from pvfront.kerneltree import parse_config
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

ENTRY = """
[[target]]
id = "dbg"
suite = "bookworm"
arch = "amd64"
flavour = "debug"
kconfig = "{kconfig}"
"""

REPOSITORY = load_targets(Workspace.discover().targets_file)


def declare(tmp_path: Path, kconfig: str):
    path = tmp_path / "targets.toml"
    path.write_text(ENTRY.format(kconfig=kconfig))
    return load_targets(path).get("dbg")


def kernel_of(target, source_version: str, fragment: str) -> SourceKernel:
    def found(name: str, version: str):
        return (None, PackageVersion(name, version, "amd64", {}))

    return SourceKernel(
        target,
        found("linux-source-6.1", source_version),
        found("busybox-static", "1:1.35.0-4+b3"),
        fragment,
    )


def test_the_fragment_is_found_relative_to_the_targets_file(tmp_path):
    (tmp_path / "kconfig").mkdir()
    (tmp_path / "kconfig" / "d.config").write_text("CONFIG_KASAN=y\n")
    target = declare(tmp_path, "kconfig/d.config")
    assert target.from_source
    assert target.kconfig == tmp_path / "kconfig" / "d.config"


def test_a_missing_fragment_is_one_error_naming_it_when_the_kernel_is_resolved(tmp_path):
    target = declare(tmp_path, "nope.config")
    view = provision.apt_view(Workspace.discover())
    with pytest.raises(SetupError, match=rf"^{tmp_path}/nope\.config: cannot read: No such file"):
        kernelbuild.resolve(view, target)


def test_a_debian_kernel_target_is_not_built_from_source():
    assert not REPOSITORY.default.from_source


def test_the_release_is_the_sources_version_and_the_flavour(tmp_path):
    (tmp_path / "d.config").write_text("")
    kernel = kernel_of(declare(tmp_path, "d.config"), "6.1.192-3", "")
    assert kernel.release == "6.1.192-debug"
    assert kernel.headers_rel == "usr/src/linux-headers-6.1.192-debug"
    assert kernel.package_version.startswith("6.1.192-3+pvfront.")


def test_a_new_source_or_an_edited_fragment_is_a_new_kernel_and_nothing_else_is(tmp_path):
    (tmp_path / "d.config").write_text("")
    target = declare(tmp_path, "d.config")
    base = kernel_of(target, "6.1.192-3", "CONFIG_KASAN=y\n")
    assert kernel_of(target, "6.1.192-3", "CONFIG_KASAN=y\n").versions == base.versions
    assert kernel_of(target, "6.1.193-1", "CONFIG_KASAN=y\n").versions != base.versions
    assert kernel_of(target, "6.1.192-3", "CONFIG_KFENCE=y\n").versions != base.versions


def test_an_option_kconfig_dropped_is_named_with_what_the_config_has_instead():
    fragment = "CONFIG_KASAN=y\nCONFIG_KFENCE=y\nCONFIG_DEBUG_KMEMLEAK_AUTO_SCAN=n\n"
    config = "CONFIG_KASAN=y\n# CONFIG_KFENCE is not set\nCONFIG_DEBUG_KMEMLEAK_AUTO_SCAN=y\n"
    assert options_not_taken(fragment, config) == [
        "CONFIG_KFENCE=y (got n)",
        "CONFIG_DEBUG_KMEMLEAK_AUTO_SCAN=n (got y)",
    ]
    assert options_not_taken(fragment, "CONFIG_KASAN=y\nCONFIG_KFENCE=y\n") == []


def test_the_built_kernel_has_every_option_its_fragment_asks_for(target_tree):
    target = target_tree.target
    if target.kconfig is None:
        pytest.skip(f"{target.id} is Debian's kernel, not built from a fragment")
    fragment = target.kconfig.read_text()
    assert options_not_taken(fragment, target_tree.config.read_text()) == []
    # The checkers the debug target exists for are in the fragment, so in the kernel.
    for checker in ("KASAN", "KFENCE", "PROVE_LOCKING", "DEBUG_KMEMLEAK", "DMA_API_DEBUG"):
        assert parse_config(fragment).get(f"CONFIG_{checker}") == "y", checker


def test_a_kernel_to_build_is_prepared_in_a_thread_while_the_others_are_fetched_its_root_last(
    monkeypatch,
):
    import threading

    from pvfront import commands

    ws = Workspace.discover()
    targets = list(REPOSITORY.targets)
    building = [t for t in targets if t.from_source]
    assert building, "targets.toml declares a kernel built from source"
    roots = {(t.base_suite, t.arch) for t in building}
    calls: list[tuple[str, bool]] = []

    def prepare_one(ws, target):
        calls.append((target.id, threading.current_thread() is threading.main_thread()))
        return target.id  # stands for the tree and root

    monkeypatch.setattr(commands, "_prepare_one", prepare_one)
    monkeypatch.setattr(provision, "load_tree", lambda ws, target: None)
    prepared = commands._prepare(ws, targets)

    assert [(t.id, p) for t, p in prepared] == [(t.id, t.id) for t in targets]
    on_main = [target_id for target_id, main in calls if main]
    assert {target_id for target_id, main in calls if not main} == {t.id for t in building}
    assert sorted(on_main) == sorted(t.id for t in targets if not t.from_source)
    sharing = [(REPOSITORY.get(i).base_suite, REPOSITORY.get(i).arch) in roots for i in on_main]
    assert sharing == sorted(sharing), "the targets sharing the kernel's build root come last"
    # The kernel's suite on another architecture has a root of its own, and is not held back.
    suites = {suite for suite, _ in roots}
    own_root = [
        shared
        for target_id, shared in zip(on_main, sharing, strict=True)
        if REPOSITORY.get(target_id).base_suite in suites
    ]
    assert False in own_root

    # A cached kernel, or one target alone, is prepared in place like any other.
    calls.clear()
    monkeypatch.setattr(provision, "load_tree", lambda ws, target: object())
    commands._prepare(ws, targets)
    assert [target_id for target_id, _ in calls] == [t.id for t in targets]
    assert all(main for _, main in calls)
