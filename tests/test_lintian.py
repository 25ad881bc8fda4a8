"""The packages pvfront writes pass Debian's lintian, the one of their target's suite: no error
and no warning. Below it, the files and fields lintian wanted, checked without lintian."""

from __future__ import annotations

import email.utils
import json
import shutil
import subprocess

import pytest

from pvfront import commands, lintian, metadata, package, sourcepackage
from pvfront.errors import UsageError
from pvfront.kerneltree import KernelTree
from pvfront.metadata import Family, load_family
from pvfront.targets import Target
from pvfront.workspace import Workspace


@pytest.fixture(scope="module")
def family() -> Family:
    return load_family(Workspace.discover().kmod_dir / "modules.toml")


@pytest.mark.parametrize("exclusive", [False, True], ids=["plain", "exclusive"])
def test_every_package_of_the_target_is_lintian_clean_by_its_suites_lintian(
    ws: Workspace,
    target: Target,
    selected_targets: list[Target],
    target_tree: KernelTree,
    family: Family,
    exclusive,
    tmp_path,
):
    # lintian judges a suite's packaging, which flavours of one suite and architecture share
    # (a minute per check: .ci/run checks each pair once).
    first = next(t for t in selected_targets if (t.suite, t.arch) == (target.suite, target.arch))
    if first != target:
        pytest.skip(f"{target.suite} {target.arch} packages are checked on {first.id}")
    [built] = commands.build(ws, target.id)
    if built.unavailable:
        pytest.skip(built.summary())
    assert built.ok, built.summary()
    result = package.package_target(
        ws,
        target_tree,
        family,
        built.modules,
        tmp_path / "work",
        tmp_path / "out",
        exclusive=exclusive,
    )
    assert result.deb is not None and result.staged is not None, result.refused
    source = sourcepackage.build(ws, target, family, result.staged, tmp_path / "out")
    report = lintian.ensure(ws, target).check([result.deb, source.dsc, *source.debs])
    assert not report.failing, f"lintian {report.version} of {report.suite}:\n" + "\n".join(
        map(str, report.failing)
    )
    # It saw every package: with nothing to say, it says nothing about any.
    assert {t.package for t in report.tags} <= {
        package.package_name(target_tree),
        package.dkms_package_name(family),
        f"{sourcepackage.source_name(family)} source",
    }


def test_lintian_lines_are_read_as_tags_and_only_errors_and_warnings_fail():
    lines = [
        "E: pvfront-dkms: no-copyright-file",
        "W: pvfront-dkms: extended-description-line-too-long line 1",
        "I: pvfront-dkms: some-information [usr/src/]",
        "N: a note that is no tag",
        "O: pvfront-dkms: overridden-tag",
    ]
    tags = [t for t in map(lintian.Tag.parse, lines) if t is not None]
    assert [(t.severity, t.name) for t in tags] == [
        ("E", "no-copyright-file"),
        ("W", "extended-description-line-too-long"),
        ("I", "some-information"),
        ("O", "overridden-tag"),
    ]
    report = lintian.Report("2.122.0", "trixie", tuple(tags))
    assert [t.name for t in report.failing] == [
        "no-copyright-file",
        "extended-description-line-too-long",
    ]
    assert str(tags[1]) == lines[1]


def test_control_fields_name_the_declared_maintainer_and_wrap_the_description(family):
    controls = [
        metadata.render(
            "modules-control.j2",
            family=family,
            standards_version="4.5.1",
            release="7.99.999+deb99-cloud-amd64",
            arch="amd64",
            package="pvfront-modules-7.99.999+deb99-cloud-amd64",
        ),
        metadata.render(
            "debian-control.j2", family=family, package="pvfront-dkms", standards_version="4.5.1"
        ),
    ]
    for control in controls:
        lines = control.splitlines()
        assert f"Maintainer: {family.maintainer}" in lines
        description = lines.index(next(x for x in lines if x.startswith("Description: ")))
        extended = lines[description + 1 :]
        synopsis = lines[description].removeprefix("Description: ")
        assert all(len(line) <= 80 for line in [synopsis, *extended]), control
        assert extended and all(line.startswith(" ") and line.strip() for line in extended)
        # Nothing is lost in the wrapping: every module is named.
        assert all(m.name in " ".join(extended) for m in family.modules)


def test_a_maintainer_without_an_address_is_one_error_naming_the_declaration(tmp_path):
    shutil.copytree(Workspace.discover().kmod_dir, tmp_path, dirs_exist_ok=True)
    source = tmp_path / "modules.toml"
    text = source.read_text()
    [line] = [x for x in text.splitlines() if x.startswith("maintainer = ")]
    source.write_text(text.replace(line, 'maintainer = "pvfront developers"'))
    with pytest.raises(UsageError, match=r"'maintainer' must be 'Name <address>'") as caught:
        load_family(source)
    assert str(caught.value).startswith(str(source))


def test_the_copyright_is_dep5_and_the_changelog_entry_is_dated_source_date_epoch(
    family, tmp_path, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01
    copyright = package.copyright_file(family)
    assert copyright.startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    )
    paragraphs = copyright.split("\n\n")
    assert "Files: *" in paragraphs[1] and "License: GPL-2" in paragraphs[1].splitlines()
    assert paragraphs[2].startswith("License: GPL-2\n")
    assert "/usr/share/common-licenses/GPL-2" in paragraphs[2]
    changelog = tmp_path / "changelog"
    changelog.write_text(package.changelog(family, "pvfront-dkms"))
    if shutil.which("dpkg-parsechangelog"):
        fields = subprocess.run(
            ["dpkg-parsechangelog", "-l", str(changelog)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "Source: pvfront-dkms\n" in fields and f"Version: {family.version}\n" in fields
        assert f"Maintainer: {family.maintainer}\n" in fields
        assert "Timestamp: 1767225600\n" in fields
    trailer = changelog.read_text().splitlines()[-1]
    date = trailer.split("  ", 1)[1]
    assert email.utils.parsedate_to_datetime(date).timestamp() == 1767225600
    assert package.changelog(family, "pvfront-dkms") == changelog.read_text()  # every time


def test_a_source_under_another_licence_stops_the_copyright_file(tmp_path):
    kmod = tmp_path / "kmod"
    shutil.copytree(Workspace.discover().kmod_dir, kmod)
    header = kmod / "pvf_ring.h"
    header.write_text(header.read_text().replace("GPL-2.0", "MIT", 1))
    with pytest.raises(UsageError, match=r"pvf_ring\.h: MIT: .*GPL-2 only"):
        package.copyright_file(load_family(kmod / "modules.toml"))


def test_every_declared_source_says_its_licence(family):
    """The copyright file covers what the packages ship: each source has an SPDX line."""
    assert package.copyright_file(family)
    assert all("SPDX-License-Identifier" in p.read_text() for p in family.source_files())


def test_a_lintian_root_is_made_again_only_for_a_newer_lintian_in_the_archive():
    assert lintian.outdated("2.116.3", "2.116.4")
    assert lintian.outdated("2.116.3", "2.117.0~bpo12+1")
    assert not lintian.outdated("2.116.3", "2.116.3")
    assert not lintian.outdated("2.117.0", "2.116.3")  # an archive behind the root: keep it
    assert not lintian.outdated("2.116.3", None)  # no index here (offline)
    assert not lintian.outdated(None, "2.116.3")


def test_the_lintian_root_records_the_version_it_has_and_stays_while_the_archive_has_no_newer(
    ws: Workspace, target: Target, selected_targets: list[Target]
):
    # The same code for every suite, and two lintian runs in a chroot (about 40 s): once.
    if target != selected_targets[0]:
        pytest.skip(f"checked on {selected_targets[0].id}")
    root = lintian.ensure(ws, target)
    record = root.path.with_suffix(".json")
    made = json.loads(record.read_text())
    assert made.get("lintian", root.version()) == root.version()
    before = record.stat().st_mtime_ns
    assert lintian.ensure(ws, target).path == root.path
    assert record.stat().st_mtime_ns == before
