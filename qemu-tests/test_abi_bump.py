"""The ABI-bump question, answered on a real step of the archive and checked in a guest.

Debian bumps a kernel's ABI when exported symbols changed incompatibly; a prebuilt package for
the old ABI then may or may not load on the new one. `pvfront symcheck --against-newest` says
which, from files alone. Here the step is taken from the archive as it is today: the first
target of each release suite whose flavour has two ABIs of one kernel line. Our modules are
built for the older ABI (provisioned into a private cache), checked against the newest, and
then insmod'ed on the newest kernel: every module loads or fails exactly as predicted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from abi_step_support import abi_step, older_workspace, suite_targets
from insmod_support import LOAD_FAILURES, insmod_script, parse_results
from pvfront import commands, provision
from pvfront.elf import read_module
from pvfront.symcheck import load_order
from pvfront.symvers import kernel_for_tree
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

pytestmark = pytest.mark.qemu


def release_suites() -> list[str]:
    """Every release suite targets.toml builds for (not unstable, not backports)."""
    targets = load_targets(Workspace.discover().targets_file).targets
    return list(dict.fromkeys(t.suite for t in targets if not t.unstable and "-" not in t.suite))


@pytest.fixture(scope="module", params=release_suites())
def older_build(ws: Workspace, tmp_path_factory, request):
    """Our modules built for the older ABI of a suite's step, in a private workspace whose
    cache shares the package downloads, indexes and build roots of the real one."""
    step = abi_step(ws, suite_targets(ws, request.param))
    if step is None:
        pytest.skip(f"{request.param} lists no two ABIs of one kernel line today")
    step_ws, _ = older_workspace(ws, tmp_path_factory.mktemp("abi-step"), step)
    [result] = commands.build(step_ws, step.older.target.id)
    assert result.ok, result.summary()
    return step_ws, step.older, step.newest, result.modules


def test_the_archive_offers_an_abi_step_and_the_older_build_is_for_the_older_abi(older_build):
    _, older, newest, modules = older_build
    assert older.release != newest.release
    for module in modules:
        assert read_module(module).vermagic.startswith(older.release + " ")


def test_targets_list_shows_that_a_newer_abi_has_appeared(older_build, capsys):
    step_ws, older, newest, _ = older_build
    commands.targets_list(step_ws)
    row = next(
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(older.target.id + " ")
    )
    assert older.release in row and f"newer: {newest.release}" in row


def test_the_prediction_for_the_newest_abi_holds_when_loaded_on_it(ws, older_build, guest_factory):
    step_ws, older, newest, modules = older_build
    [report] = commands.symcheck_against_newest(step_ws, older.target.id, False)
    assert newest.release in report.kernel.label
    newest_tree = provision.ensure(ws, [older.target])[0]
    if newest_tree.release != newest.release:
        pytest.skip(f"the cache holds {newest_tree.release}, not the newest {newest.release}")
    kernel = kernel_for_tree(newest_tree)
    infos = {m.stem: read_module(m) for m in modules}
    order = [n for n in load_order(list(infos.values()), kernel).order if n in infos]
    files = {f"/x/old/{name}.ko": Path(infos[name].path) for name in order}
    with guest_factory(newest_tree, files=files, allow=LOAD_FAILURES) as guest:
        observed = parse_results(
            guest.run(insmod_script([("old", n) for n in order]), timeout=120).output
        )
    first_failure = next((n for n in order if not report.verdict(n).loads), None)
    for name in order:
        verdict = report.verdict(name)
        if name not in observed:
            assert first_failure is not None and order.index(name) > order.index(first_failure)
            continue
        status, said = observed[name]
        assert (status == 0) == verdict.loads, (
            f"{name} built for {older.release} on {newest.release}: predicted "
            f"{verdict.reason}, insmod said {said!r}"
        )
        if not verdict.loads:
            assert verdict.kernel_message and verdict.kernel_message in said
    print(
        f"{older.release} -> {newest.release}: "
        f"{'rebuild needed' if first_failure else 'the old build loads'}"
    )
