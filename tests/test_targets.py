"""targets.toml declares the kernels; mistakes in it are one clear error naming the file."""

from pathlib import Path

import pytest

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


def test_the_repository_declares_the_seven_initial_targets_with_deb12_amd64_default():
    targets = load_targets(Workspace.discover().targets_file)
    assert targets.ids == [
        "deb12-amd64", "deb12-686", "deb12-cloud-amd64", "deb12-rt-amd64",
        "deb12bpo-amd64", "deb11-amd64", "deb11-686",
    ]
    assert targets.default.id == "deb12-amd64"
    assert targets.get("deb12-686").kbuild_arch == "i386"
    assert targets.get("deb12-686").qemu == "qemu-system-i386"
    assert targets.get("deb12bpo-amd64").suites == ("bookworm-backports",)
    assert targets.get("deb11-amd64").suites == ("bullseye", "bullseye-security")


def test_adding_a_target_is_adding_an_entry(tmp_path):
    path = write(tmp_path, ENTRY.format(id="a", arch="amd64") + ENTRY.format(id="b", arch="i386"))
    targets = load_targets(path)
    assert targets.ids == ["a", "b"]
    assert targets.default.id == "a"
    assert targets.get("b").kbuild_arch == "i386"


def test_selecting_all_or_one_or_the_default(tmp_path):
    targets = load_targets(write(tmp_path, ENTRY.format(id="a", arch="amd64")
                                 + ENTRY.format(id="b", arch="amd64")))
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
        (ENTRY.format(id="a", arch="amd64").replace('machine = "q35"\n', ""), "lacks machine"),
        (ENTRY.format(id="a", arch="arm64"), "arch 'arm64' is not one of"),
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
    targets = load_targets(Workspace.discover().targets_file)
    with pytest.raises(UsageError, match=r"unknown target 'deb99'.*deb12-amd64"):
        targets.get("deb99")
