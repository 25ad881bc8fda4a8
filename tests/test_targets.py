"""targets.toml declares the kernels; mistakes in it are one clear error naming the file."""

from pathlib import Path

import pytest

from pvfront import architectures
from pvfront.errors import UsageError
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

ENTRY = """
[[target]]
id = "{id}"
suite = "bookworm"
arch = "{arch}"
flavour = "amd64"
qemu = "qemu-system-x86_64"
machine = "q35"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    return path


REPOSITORY = load_targets(Workspace.discover().targets_file)


def _generic_flavour(flavour: str) -> str:
    """The generic flavour a variant one is built on: "rt-amd64" -> "amd64"."""
    return flavour.partition("-")[2] or flavour


def test_declared_ids_are_unique_and_the_default_is_one_that_builds_every_day():
    """The default target is what a bare command acts on: not an unstable suite, which may be
    uninstallable for a day."""
    ids = REPOSITORY.ids
    assert len(set(ids)) == len(ids)
    assert REPOSITORY.default_id in ids
    assert not REPOSITORY.default.unstable


def test_each_suite_declares_each_kernel_once():
    kernels = [(t.suite, t.arch, t.flavour) for t in REPOSITORY.targets]
    assert len(set(kernels)) == len(kernels)


def test_a_variant_flavour_comes_with_its_suites_generic_kernel():
    """An rt or cloud kernel is compared with the generic one of the same suite and arch."""
    declared = {(t.suite, t.arch, t.flavour) for t in REPOSITORY.targets}
    for target in REPOSITORY.targets:
        generic = (target.suite, target.arch, _generic_flavour(target.flavour))
        assert generic in declared, f"{target.id}: no {generic[2]} target in {target.suite}"


def test_every_declared_target_takes_kernels_from_its_own_suite_first():
    for target in REPOSITORY.targets:
        assert target.suites[0] == target.suite
        assert target.base_suite == target.suite.split("-")[0]


def test_a_release_pulls_its_security_suite_but_backports_and_unstable_do_not(tmp_path):
    text = "".join(
        ENTRY.format(id=i, arch="amd64").replace('"bookworm"', f'"{suite}"')
        for i, suite in (("rel", "bookworm"), ("bpo", "bookworm-backports"), ("uns", "sid"))
    )
    targets = load_targets(write(tmp_path, text))
    assert targets.get("rel").suites == ("bookworm", "bookworm-security")
    assert targets.get("bpo").suites == ("bookworm-backports",)
    assert targets.get("bpo").base_suite == "bookworm"
    assert targets.get("uns").suites == ("sid",)
    assert [t.unstable for t in targets.targets] == [False, False, True]


def test_adding_a_target_is_adding_an_entry(tmp_path):
    path = write(tmp_path, ENTRY.format(id="a", arch="amd64") + ENTRY.format(id="b", arch="i386"))
    targets = load_targets(path)
    assert targets.ids == ["a", "b"]
    assert targets.default.id == "a"  # without a default, the first entry
    assert targets.get("a").architecture.debian_arch == "amd64"
    assert targets.get("b").architecture.debian_arch == "i386"
    chosen = load_targets(write(tmp_path, 'default = "b"\n' + path.read_text()))
    assert chosen.default.id == "b"


def test_emulator_and_machine_come_from_the_architecture_unless_a_target_names_its_own(tmp_path):
    """targets.toml need not repeat an architecture's QEMU; a target that names one keeps it."""
    bare = "".join(
        ENTRY.format(id=arch, arch=arch).replace(
            'qemu = "qemu-system-x86_64"\nmachine = "q35"\n', ""
        )
        for arch in ("amd64", "i386")
    )
    named = ENTRY.format(id="own", arch="amd64").replace('"q35"', '"pc"')
    targets = load_targets(write(tmp_path, bare + named))
    for arch in ("amd64", "i386"):
        defaults = architectures.for_debian_arch(arch)
        assert targets.get(arch).qemu == defaults.qemu_binary
        assert targets.get(arch).qemu_machine == defaults.default_machine
    assert (targets.get("own").qemu, targets.get("own").machine) == ("qemu-system-x86_64", "pc")


def test_selecting_all_or_one_or_the_default(tmp_path):
    targets = load_targets(
        write(tmp_path, ENTRY.format(id="a", arch="amd64") + ENTRY.format(id="b", arch="amd64"))
    )
    assert [t.id for t in targets.select(all_targets=True)] == ["a", "b"]
    assert [t.id for t in targets.select("b")] == ["b"]
    assert [t.id for t in targets.select()] == ["a"]
    with pytest.raises(UsageError, match="either --target or --all"):
        targets.select("a", all_targets=True)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[target]\n", "not valid TOML"),
        ("default = 'x'\n", "declares no"),
        (ENTRY.format(id="a", arch="amd64").replace('flavour = "amd64"\n', ""), "lacks flavour"),
        (ENTRY.format(id="a", arch="arm64"), "unknown architecture 'arm64' (pvfront supports"),
        (ENTRY.format(id="a", arch="amd64").replace('"q35"', '"virt"'), "no QEMU machine 'virt'"),
        (ENTRY.format(id="a", arch="amd64").replace('"q35"', "35"), "machine must be a non-empty"),
        (ENTRY.format(id="a", arch="amd64") * 2, "duplicate target ids a"),
        ('default = "zz"\n' + ENTRY.format(id="a", arch="amd64"), "unknown target 'zz'"),
        (ENTRY.format(id="a", arch="amd64") + 'colour = "red"\n', "unknown keys colour"),
    ],
)
def test_a_broken_targets_file_is_one_error_naming_it(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_targets(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and problem in message
    assert "\n" not in message


def test_an_unknown_target_id_names_the_known_ones():
    with pytest.raises(UsageError) as caught:
        REPOSITORY.get("deb99")
    message = str(caught.value)
    assert "unknown target 'deb99'" in message
    assert message.endswith(f"(known: {', '.join(REPOSITORY.ids)})")
