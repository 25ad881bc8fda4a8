"""kmod/modules.toml is the one declaration: Kbuild and modinfo come from it."""

import dataclasses
import subprocess
from pathlib import Path

import pytest

from pvfront import commands
from pvfront.depmod import ModuleIndex
from pvfront.errors import UsageError
from pvfront.metadata import build_files, load_config_files, load_family
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

ws = Workspace.discover()

MODULE = """
[[module]]
name = "{name}"
sources = ["{source}"]
description = "a test module"
"""


def declaration(tmp_path: Path, body: str) -> Path:
    (tmp_path / "a.c").write_text("/* empty */\n")
    path = tmp_path / "modules.toml"
    path.write_text(
        '[family]\nname = "fam"\nversion = "1.2"\nreleased = 2026-01-01\nlicense = "GPL"\n'
        'author = "someone"\nmaintainer = "Some One <one@example.org>"\n' + body
    )
    return path


def test_the_family_declares_the_five_modules_with_their_namespaces():
    family = load_family(ws.kmod_dir / "modules.toml")
    assert [m.name for m in family.modules] == [
        "pvf_ring",
        "pvf_virtio",
        "pvf_pci",
        "pvf_blk",
        "pvf_net",
    ]
    assert family.module("pvf_ring").namespace == "PVFRONT"
    assert family.module("pvf_blk").imports == ("PVFRONT",)
    assert [m.name for m in family.modules if m.transport] == ["pvf_pci"]


def test_generated_kbuild_and_headers_name_every_module(tmp_path):
    family = load_family(declaration(tmp_path, MODULE.format(name="fam_a", source="a.c")))
    files = build_files(family, "some-target", "$(src)", "$(src)")  # any build_for name
    assert "obj-m += fam_a.o\n" in files["Kbuild"]
    assert "CFLAGS_a.o += -include $(src)/fam_a.meta.h" in files["Kbuild"]
    assert "fam_a-y := a.o" in files["Kbuild"]  # the source is named differently
    header = files["fam_a.meta.h"]
    assert 'MODULE_VERSION("1.2");' in header and 'MODULE_LICENSE("GPL");' in header
    assert "fam 1.2 some-target src:" in header


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (MODULE.format(name="Bad-Name", source="a.c"), "is not a module name"),
        (MODULE.format(name="fam_a", source="missing.c"), "missing sources missing.c"),
        (MODULE.format(name="fam_a", source="a.c") * 2, "declared twice"),
        (MODULE.format(name="fam_a", source="a.c") + 'imports = ["lower"]\n', "not a namespace"),
        ("", "needs a [family] table and [[module]] tables"),
    ],
)
def test_a_broken_declaration_is_one_error_naming_the_file(tmp_path, body, problem):
    path = declaration(tmp_path, body)
    with pytest.raises(UsageError) as caught:
        load_family(path)
    assert str(caught.value).startswith(str(path)) and problem in str(caught.value)


@pytest.mark.kernel
def test_built_modules_carry_the_declared_modinfo_on_every_target():
    family = load_family(ws.kmod_dir / "modules.toml")
    results = commands.build(ws, all_targets=True)
    assert sorted(r.target_id for r in results) == sorted(load_targets(ws.targets_file).ids)
    built = [r for r in results if not r.unavailable]  # an unstable archive may be broken today
    assert built
    for result in built:
        assert result.ok, result.summary()
        for module in result.modules:
            declared = family.module(module.stem)

            def field(name, path=module):
                return subprocess.run(
                    ["modinfo", "-F", name, str(path)], capture_output=True, text=True, check=True
                ).stdout.split("\n")[0]

            assert field("description") == declared.description
            assert field("version") == declared.version
            assert field("license") == declared.license
            assert field("import_ns") == (declared.imports[0] if declared.imports else "")
            assert field("pvfront_build").startswith(
                f"pvfront {family.version} {result.target_id} src:"
            )


def test_an_upgrade_changes_no_conffile_when_only_the_version_changes():
    """dpkg asks an administrator who edited a conffile what to do whenever the package's
    copy changes too: /etc files carry no version, so a release that changes nothing in
    them upgrades silently, keeping the edit (the real-guest life-cycle test upgrades)."""
    family = load_family(Workspace.discover().kmod_dir / "modules.toml")
    core = "updates/pvfront/pvf_virtio.ko updates/pvfront/pvf_ring.ko"
    dep = (
        "updates/pvfront/pvf_ring.ko:\n"
        "updates/pvfront/pvf_virtio.ko: updates/pvfront/pvf_ring.ko\n"
        + "".join(f"updates/pvfront/{m}.ko: {core}\n" for m in ("pvf_pci", "pvf_blk", "pvf_net"))
    )
    index = ModuleIndex.parse("6.x", dep, "")
    next_release = dataclasses.replace(family, version=f"{family.version}+1")
    for exclusive in (False, True):
        now, then = (
            {
                path: text
                for path, text in load_config_files(f, index, exclusive=exclusive).items()
                if path.startswith("etc/")
            }
            for f in (family, next_release)
        )
        assert now and now == then
