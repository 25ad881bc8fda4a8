"""The dependency graph: each module after everything it needs, ties by name, cycles named."""

from __future__ import annotations

import pytest

from pvfront.depgraph import DependencyGraph, describe_cycle


def graph_of(needs: dict[str, list[str]]) -> DependencyGraph:
    graph = DependencyGraph()
    for module, wanted in needs.items():
        graph.add(module, wanted)
    return graph


def assert_each_after_its_needs(graph: DependencyGraph, order: list[str]) -> None:
    for position, module in enumerate(order):
        assert set(graph.needs(module)) <= set(order[:position]), (module, order)


# The pvfront family: the ring, the bus on it, the transport and two drivers on both.
FAMILY = {
    "pvf_ring": [],
    "pvf_virtio": ["pvf_ring"],
    "pvf_pci": ["pvf_virtio", "pvf_ring"],
    "pvf_blk": ["pvf_virtio", "pvf_ring"],
    "pvf_net": ["pvf_ring", "pvf_virtio"],
}


def test_every_module_comes_after_all_it_needs():
    graph = graph_of(FAMILY)
    order = graph.order()
    assert sorted(order) == sorted(FAMILY)
    assert_each_after_its_needs(graph, order)


def test_without_roots_ties_go_by_name():
    assert graph_of(FAMILY).order() == ["pvf_ring", "pvf_virtio", "pvf_blk", "pvf_net", "pvf_pci"]
    # The order modules were added in changes nothing.
    assert graph_of(dict(reversed(FAMILY.items()))).order() == graph_of(FAMILY).order()


def test_roots_keep_the_order_given_and_needs_go_by_name():
    graph = graph_of(FAMILY)
    declared = ["pvf_ring", "pvf_virtio", "pvf_pci", "pvf_blk", "pvf_net"]
    assert graph.order(declared) == declared
    # Independent providers of one root: by name, whatever order they were added in.
    providers = [f"provider{i:02}" for i in range(20)]
    graph = graph_of({"top": providers[::-1]})
    assert graph.order(["top"]) == [*providers, "top"]


def test_roots_bring_only_what_they_need():
    graph = graph_of(FAMILY)
    assert graph.order(["pvf_blk"]) == ["pvf_ring", "pvf_virtio", "pvf_blk"]
    assert graph.order(["pvf_ring", "pvf_ring"]) == ["pvf_ring"]


def test_a_missing_provider_comes_first_and_is_named():
    graph = graph_of({"uas": ["usb_storage", "usbcore"], "usb_storage": ["usbcore", "scsi_mod"]})
    assert graph.missing() == ["scsi_mod", "usbcore"]
    order = graph.order(["uas"])
    assert order == ["scsi_mod", "usbcore", "usb_storage", "uas"]
    assert graph.needs("usbcore") == [] and "usbcore" not in graph
    graph.add("usbcore", ["usb_common"])
    assert graph.missing() == ["scsi_mod", "usb_common"]
    assert graph.order(["uas"])[:2] == ["scsi_mod", "usb_common"]


def test_unused_modules_are_the_top_of_the_graph():
    assert graph_of(FAMILY).unused() == ["pvf_blk", "pvf_net", "pvf_pci"]
    assert graph_of({"a": ["a"]}).unused() == []


def test_an_acyclic_graph_has_no_cycles():
    assert graph_of(FAMILY).cycles() == []
    # A diamond shares a provider without a cycle.
    assert graph_of({"d": ["b", "c"], "b": ["a"], "c": ["a"]}).cycles() == []


def test_a_cycle_is_reported_with_its_members_and_only_them():
    graph = graph_of({"b": ["a"], "a": ["b"], "c": ["a"], "d": []})
    assert graph.cycles() == [["a", "b"]]
    assert describe_cycle(graph.cycles()[0]) == "a -> b -> a"


def test_cycles_through_several_modules_and_a_module_needing_itself():
    graph = graph_of(
        {"x": ["y"], "y": ["z"], "z": ["x", "w"], "w": [], "self": ["self"], "p": ["q"], "q": ["p"]}
    )
    assert graph.cycles() == [["p", "q"], ["self"], ["x", "y", "z"]]


def test_an_order_through_a_cycle_still_places_every_module_once():
    graph = graph_of({"a": ["b"], "b": ["a"], "c": ["a"]})
    order = graph.order()
    assert order == ["b", "a", "c"]
    assert graph.order(["c"]) == ["b", "a", "c"]


@pytest.mark.parametrize("length", [10, 5000])
def test_long_chains_need_no_recursion(length):
    chain = {f"m{i:05}": [f"m{i + 1:05}"] for i in range(length)}
    graph = graph_of(chain)
    order = graph.order(["m00000"])
    assert order[0] == f"m{length:05}" and order[-1] == "m00000" and len(order) == length + 1
    assert graph.cycles() == []
    chain[f"m{length:05}"] = ["m00000"]
    assert graph_of(chain).cycles() == [sorted([*chain])]
