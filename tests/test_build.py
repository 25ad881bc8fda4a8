"""Per-target Kbuild builds in each suite's build root, proven on the fixture modules against
every real Debian kernel: its release, its architecture and the very compiler it was built with."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pvfront import buildroot, provision
from pvfront.build import (
    BuildOptions,
    BuildResult,
    build_modules,
    build_one,
    finished_line,
    starting_line,
)
from pvfront.errors import UsageError
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

pytestmark = pytest.mark.kernel  # every test builds for every provisioned target

FIXTURE = Path(__file__).parent / "fixtures" / "kmod"
ELF_MACHINE = {
    "amd64": "ELF 64-bit LSB relocatable, x86-64",
    "i386": "ELF 32-bit LSB relocatable, Intel 80386",
}


@pytest.fixture(scope="module")
def trees():
    ws = Workspace.discover()
    return provision.ensure(ws, list(load_targets(ws.targets_file).targets))


@pytest.fixture(scope="module")
def roots(trees):
    ws = Workspace.discover()
    return [buildroot.ensure(ws, tree) for tree in trees]


@pytest.fixture(scope="module")
def built(trees, roots, tmp_path_factory):
    """The build directory, the results and the progress lines of one build of every target."""
    out = tmp_path_factory.mktemp("build")
    said: list[str] = []
    return out, build_modules(trees, roots, FIXTURE, out, out / "logs", progress=said.append), said


def test_every_target_builds_the_fixture_for_its_own_kernel_and_arch(trees, built):
    _, results, _ = built
    assert [r.target_id for r in results] == [t.target.id for t in trees]
    for tree, result in zip(trees, results, strict=True):
        assert result.ok, result.summary()
        assert [m.name for m in result.modules] == ["pvfix_provider.ko", "pvfix_consumer.ko"]
        for module in result.modules:
            assert module.parent == result.out_dir  # the .ko lands directly in build/<target>/
            vermagic = subprocess.run(
                ["modinfo", "-F", "vermagic", str(module)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert vermagic.startswith(tree.release + " ")
            kind = subprocess.run(
                ["file", "-b", str(module)], capture_output=True, text=True, check=True
            ).stdout
            assert kind.startswith(ELF_MACHINE[tree.target.arch])
            assert compiler_of_module(module) == compiler_of_kernel(tree), tree.target.id


def test_a_build_says_as_it_goes_which_target_of_how_many_starts_and_when_each_is_built(
    trees, built
):
    _, results, said = built
    ids = [t.target.id for t in trees]
    starts = [re.fullmatch(r"building (\S+) \((\d+)/(\d+)\)", line) for line in said]
    numbers = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in starts if m}
    assert sorted(numbers) == sorted(ids), said
    assert sorted(numbers.values()) == [(n, len(ids)) for n in range(1, len(ids) + 1)]
    for target_id, result in zip(ids, results, strict=True):
        finished = rf"built {target_id} in \d+ s"
        ends = [i for i, line in enumerate(said) if re.fullmatch(finished, line)]
        assert len(ends) == 1, (result.summary(), said)
        assert ends[0] > said.index(starting_line(target_id, *numbers[target_id]))


def test_the_progress_lines_name_the_target_its_place_and_its_time():
    assert starting_line("deb12-686", 3, 11) == "building deb12-686 (3/11)"
    out = Path("/build/deb12-686")
    built = BuildResult("deb12-686", out, out / "log", ok=True)
    assert finished_line(built, 41.4) == "built deb12-686 in 41 s"
    assert finished_line(BuildResult("deb12-686", out, out / "log"), 7.6) == (
        "failed to build deb12-686 in 8 s"
    )
    fresh = BuildResult("deb12-686", out, out / "log", ok=True, up_to_date=True)
    assert finished_line(fresh, 0.2) == "deb12-686 was up to date"


def compiler_of_kernel(tree) -> str:
    """The GCC build the kernel was compiled with: "(Debian 14.2.0-19) 14.2.0"."""
    text = re.search(r'^CONFIG_CC_VERSION_TEXT="\S+ (.*)"$', tree.config.read_text(), re.M)
    return text.group(1)


def compiler_of_module(module: Path) -> str:
    """What the module's .comment says compiled it (the last GCC line: the module's own
    objects; every line must agree)."""
    comment = subprocess.run(
        ["readelf", "-p", ".comment", str(module)], capture_output=True, text=True, check=True
    ).stdout
    versions = {v.strip() for v in re.findall(r"GCC: (.*)$", comment, re.M)}
    assert len(versions) == 1, versions
    return versions.pop()


def test_an_unchanged_second_build_does_no_work(trees, roots, built):
    out, _, _ = built
    tree = trees[0]
    before = {m: m.stat().st_mtime_ns for m in (out / tree.target.id).glob("*.ko")}
    again = build_one(tree, roots[0], FIXTURE, out / tree.target.id, out / "logs", BuildOptions())
    assert again.ok and again.up_to_date
    assert {m: m.stat().st_mtime_ns for m in before} == before


def test_the_build_leaves_the_source_directory_clean(built):
    assert sorted(p.name for p in FIXTURE.iterdir()) == [
        "Kbuild",
        "pvfix.h",
        "pvfix_consumer.c",
        "pvfix_provider.c",
    ]


def test_a_warning_fails_the_build_with_the_first_diagnostic_and_the_target(trees, roots, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(FIXTURE, source)
    consumer = source / "pvfix_consumer.c"
    consumer.write_text(
        consumer.read_text().replace(
            "static int __init pvfix_consumer_init(void)\n{",
            "static int __init pvfix_consumer_init(void)\n{\n\tint unused;\n",
        )
    )
    result = build_one(
        trees[0], roots[0], source, tmp_path / "out", tmp_path / "logs", BuildOptions()
    )
    assert not result.ok
    assert "pvfix_consumer.c:" in result.first_error and "unused" in result.first_error
    assert result.target_id in result.summary() and str(result.log) in result.summary()
    assert "unused variable" in result.log.read_text()


def test_a_source_change_is_rebuilt(trees, roots, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(FIXTURE, source)
    out = tmp_path / "out"
    options = BuildOptions(sparse=False)
    first = build_one(trees[0], roots[0], source, out, tmp_path / "logs", options)
    provider = source / "pvfix_provider.c"
    provider.write_text(provider.read_text().replace("return 42;", "return 43;"))
    second = build_one(trees[0], roots[0], source, out, tmp_path / "logs", options)
    assert first.ok and second.ok and not second.up_to_date


def test_a_directory_without_kbuild_is_a_one_line_usage_error(trees, roots, tmp_path):
    with pytest.raises(UsageError, match=rf"^{tmp_path}: no Kbuild file"):
        build_modules(trees[:1], roots[:1], tmp_path, tmp_path / "out", tmp_path / "logs")
