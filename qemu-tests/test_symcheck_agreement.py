"""symcheck's predictions hold in a real guest: the matrix, the load order, the wrong orders.

For the target's kernel (one boot), the pvfront modules built for every target are insmod'ed
in their load order; each module loads exactly when symcheck says so, and fails with the
message symcheck predicts. Then every way of loading a module before its provider fails at
the predicted module and symbol.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from insmod_support import LOAD_FAILURES, guest_path, insmod_script, parse_results
from pvfront import commands
from pvfront.elf import read_module
from pvfront.kerneltree import KernelTree
from pvfront.symcheck import check_modules, first_insmod_failure, load_order
from pvfront.symvers import kernel_for_tree
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

pytestmark = [pytest.mark.qemu, pytest.mark.harness]


@pytest.fixture(scope="session")
def builds(ws: Workspace) -> dict[str, list]:
    """Our modules built for every target: target id -> ModuleInfo list, in load order."""
    results = commands.build(ws, all_targets=True)
    assert all(r.ok for r in results), [r.summary() for r in results if not r.ok]
    return {r.target_id: [read_module(m) for m in r.modules] for r in results}


def test_every_build_loads_or_fails_on_this_kernel_exactly_as_predicted(
    ws, target_tree: KernelTree, builds, guest_factory
):
    kernel = kernel_for_tree(target_tree)
    ids = load_targets(ws.targets_file).ids
    files = {guest_path(t, m.name): Path(m.path) for t in ids for m in builds[t]}
    with guest_factory(target_tree, files=files, allow=LOAD_FAILURES, memory_mib=384) as guest:
        for built_for in ids:
            modules = builds[built_for]
            by_name = {m.name: m for m in modules}
            order = [by_name[n] for n in load_order(modules, kernel).order if n in by_name]
            report = check_modules(order, kernel, closure=False)
            script = insmod_script([(built_for, m.name) for m in order])
            observed = parse_results(guest.run(script, timeout=120).output)
            first_failure = next((m.name for m in order if not report.verdict(m.name).loads), None)
            for module in order:
                verdict = report.verdict(module.name)
                if module.name not in observed:
                    # insmod stopped at the first failure; only modules before it were tried
                    assert first_failure is not None and order.index(module) > [
                        m.name for m in order
                    ].index(first_failure), (built_for, module.name)
                    continue
                status, said = observed[module.name]
                cell = f"{built_for} on {target_tree.target.id}: {module.name}"
                assert (status == 0) == verdict.loads, (
                    f"{cell}: predicted {verdict.reason}, insmod said {said!r}"
                )
                if not verdict.loads:
                    assert verdict.kernel_message and verdict.kernel_message in said, (
                        f"{cell}: predicted {verdict.kernel_message!r}, got {said!r}"
                    )
            own = built_for == target_tree.target.id
            assert own == (first_failure is None), f"{built_for} on {target_tree.target.id}"


def wrong_orders(names: list[str], needs: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Every permutation that puts some module before one of its providers."""

    def valid(order: tuple[str, ...]) -> bool:
        return all(needs[n] <= set(order[:i]) for i, n in enumerate(order))

    return [p for p in itertools.permutations(names) if not valid(p)]


def test_the_computed_order_loads_all_and_every_wrong_order_fails_where_predicted(
    target_tree: KernelTree, builds, guest_factory
):
    target_id = target_tree.target.id
    kernel = kernel_for_tree(target_tree)
    modules = {m.name: m for m in builds[target_id]}
    plan = load_order(list(modules.values()), kernel)
    report = check_modules(list(modules.values()), kernel, closure=False)
    needs = {name: set(report.verdict(name).dependencies) for name in modules}
    wrong = wrong_orders(list(modules), needs)
    assert wrong, "the family has no provider relation: load order would prove nothing"
    # Where a sequence stops depends only on what loaded before and what fails: run each
    # distinct (loaded set, failing module, symbol) once, and check every permutation maps.
    cases: dict[tuple[frozenset[str], str], tuple[str, ...]] = {}
    predicted = {}
    for order in wrong:
        failure = first_insmod_failure([modules[n] for n in order], kernel)
        assert failure is not None, f"{order} puts a module before its provider yet loads"
        predicted[order] = failure
        key = (frozenset(order[: failure.position]), failure.module)
        cases.setdefault(key, order[: failure.position + 1])
    files = {guest_path(target_id, n): Path(m.path) for n, m in modules.items()}
    with guest_factory(target_tree, files=files, allow=LOAD_FAILURES) as guest:
        good = parse_results(
            guest.run(insmod_script([(target_id, n) for n in plan.order]), timeout=60).output
        )
        assert [n for n in plan.order if good.get(n, (1,))[0] == 0] == plan.order
        seen = {}
        for key, prefix in cases.items():
            results = parse_results(
                guest.run(insmod_script([(target_id, n) for n in prefix]), timeout=60).output
            )
            failed = [n for n in prefix if results.get(n, (0,))[0] != 0]
            unknown = (
                re.search(r"Unknown symbol (\S+)", results[prefix[-1]][1])
                if prefix[-1] in results
                else None
            )
            seen[key] = (failed[0] if failed else None, unknown.group(1) if unknown else None)
    for order, failure in predicted.items():
        key = (frozenset(order[: failure.position]), failure.module)
        assert seen[key] == (failure.module, failure.symbol), (
            f"order {' '.join(order)}: predicted {failure.module} at {failure.symbol}, "
            f"guest failed at {seen[key]}"
        )
