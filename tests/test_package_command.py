"""`pvfront package` over several targets: a refused target stops only itself.

The build, the kernels, the per-target packaging, the source package and the repository index
are injected: what is under test is the command's loop (which targets get a package, what is
said, the exit code), not the packaging, which tests/test_package.py proves on real kernels
(the index: tests/test_aptrepo.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pvfront import aptrepo, commands, sourcepackage
from pvfront import package as packaging
from pvfront.build import BuildResult
from pvfront.errors import EXIT_FAILED, EXIT_OK
from pvfront.kerneltree import KernelTree
from pvfront.workspace import Workspace


@dataclass
class FakeStage:
    target_id: str
    tree: KernelTree

    def load_order(self) -> list[str]:
        return ["pvf_ring", "pvf_virtio"]


@dataclass
class Packaging:
    """package_target that refuses the targets it is told to and records every call."""

    refuse: set[str]
    calls: list[str] = field(default_factory=list)
    dkms_debs_from: list[str] = field(default_factory=list)

    def package_target(self, ws, tree: KernelTree, *args, **kwargs) -> packaging.PackageResult:
        target_id = tree.target.id
        self.calls.append(target_id)
        if target_id in self.refuse:
            return packaging.PackageResult(
                target_id, refused=["pvf_ring: disagrees about version of symbol module_layout"]
            )
        deb = Path(f"/out/pvfront-modules-{target_id}.deb")
        return packaging.PackageResult(target_id, deb=deb, staged=FakeStage(target_id, tree))

    def build_source(self, ws, target, family, staged: FakeStage, out_dir: Path):
        self.dkms_debs_from.append(staged.target_id)
        return sourcepackage.SourcePackage(
            *(out_dir / name for name in ("pvfront.dsc", "pvfront.tar.xz")),
            (out_dir / "pvfront-dkms.deb",),
            *(out_dir / name for name in ("pvfront.changes", "pvfront.buildinfo")),
        )


@pytest.fixture
def three_targets(monkeypatch, tmp_path) -> list[str]:
    ws = Workspace.discover()
    targets = commands.select(ws, None, True)[:3]
    ids = [t.id for t in targets]
    monkeypatch.setattr(
        commands,
        "build",
        lambda ws, target_id, all_targets: [
            BuildResult(t, tmp_path / t, tmp_path / t / "log", ok=True) for t in ids
        ],
    )
    monkeypatch.setattr(
        commands.provision,
        "ensure",
        lambda ws, wanted, log: [KernelTree(wanted[0], tmp_path, "0.0-test", {}, "headers")],
    )
    monkeypatch.setattr(
        packaging, "build_dkms_source", lambda family, out_dir: out_dir / "pvfront.tar.gz"
    )
    monkeypatch.setattr(
        commands.aptrepo,
        "write_repository",
        lambda directory, epoch: aptrepo.Repository(directory, (), directory / "Release"),
    )
    return ids


def test_a_refused_target_gets_no_package_says_why_and_the_others_still_get_theirs(
    three_targets, monkeypatch, capsys
):
    first, refused, last = three_targets
    fake = Packaging(refuse={refused})
    monkeypatch.setattr(packaging, "package_target", fake.package_target)
    monkeypatch.setattr(sourcepackage, "build", fake.build_source)

    code = commands.package(Workspace.discover(), all_targets=True)

    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert fake.calls == [first, refused, last]
    assert [line.split(":")[0] for line in out.splitlines() if ".deb" in line][:2] == [first, last]
    assert f"{refused}: refused: 1 module(s) would not load" in err
    assert "disagrees about version of symbol module_layout" in err
    assert fake.dkms_debs_from == [first]


def test_with_no_target_refused_every_target_is_packaged_and_the_exit_is_0(
    three_targets, monkeypatch, capsys
):
    fake = Packaging(refuse=set())
    monkeypatch.setattr(packaging, "package_target", fake.package_target)
    monkeypatch.setattr(sourcepackage, "build", fake.build_source)

    assert commands.package(Workspace.discover(), all_targets=True) == EXIT_OK
    assert fake.calls == three_targets
    assert "refused" not in capsys.readouterr().err


def test_with_a_repository_key_the_repository_is_signed_and_the_line_names_its_keyring(
    three_targets, monkeypatch, capsys
):
    fake = Packaging(refuse=set())
    monkeypatch.setattr(packaging, "package_target", fake.package_target)
    monkeypatch.setattr(sourcepackage, "build", fake.build_source)
    signed_with = []

    def sign(repository, key, epoch):
        signed_with.append(key)
        return aptrepo.Repository(
            repository.directory, (), repository.release, repository.directory / aptrepo.KEYRING
        )

    monkeypatch.setattr(commands.aptrepo, "sign", sign)

    assert commands.package(Workspace.discover(), all_targets=True, repo_key="ABCD") == EXIT_OK
    out = capsys.readouterr().out
    assert signed_with == ["ABCD"]
    assert f"deb [signed-by=/etc/apt/keyrings/{aptrepo.KEYRING}] http://HOST/PATH/ ./" in out
    assert "its key: " in out and "trusted=yes" not in out
