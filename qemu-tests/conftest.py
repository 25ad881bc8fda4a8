"""Fixtures for tests that boot real kernels: a guest factory, disk space, fixture modules."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pvfront import build, buildroot
from pvfront.guest import Guest
from pvfront.kerneltree import KernelTree
from pvfront.workspace import Workspace

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # Anything that boots a guest is a QEMU test, whether or not its module says so.
        if "guest_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.qemu)
        target = getattr(getattr(item, "callspec", None), "params", {}).get("target")
        if item.get_closest_marker("harness") and target is not None and target.from_source:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{target.id}: pvfront's own machinery is proven on Debian's kernels; "
                    "the debug kernel runs the driver scenarios"
                )
            )


@pytest.fixture
def guest_factory(ws: Workspace, request: pytest.FixtureRequest) -> Iterator[Callable[..., Guest]]:
    """guest_factory(tree, **Guest options) -> a Guest to use in a `with` block.

    Console logs are named after the test; any guest the test leaves running is stopped.
    """
    made: list[Guest] = []

    def factory(tree: KernelTree, **options) -> Guest:
        options.setdefault("label", request.node.name.split("[")[0])
        guest = Guest(ws, tree, **options)
        made.append(guest)
        return guest

    yield factory
    for guest in made:
        guest.close(check=False)


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A directory for disk images, removed as soon as the test ends (tmp_path is kept)."""
    path = Path(tempfile.mkdtemp(prefix="pvf-disks-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build_fixture_module(ws: Workspace, tree: KernelTree, name: str) -> Path:
    """Build qemu-tests/fixtures/<name> for the tree; the .ko path."""
    out = ws.build_dir / "fixtures" / tree.target.id / name
    root = buildroot.ensure(ws, tree)
    result = build.build_one(
        tree, root, FIXTURES / name, out, out.parent, build.BuildOptions(sparse=False)
    )
    if not result.ok:
        pytest.fail(
            f"fixture module {name} does not build for {tree.target.id}: "
            f"{result.first_error} (log: {result.log})"
        )
    return result.modules[0]


@pytest.fixture(scope="session")
def trouble_module(ws: Workspace, target_tree: KernelTree) -> Path:
    """trouble.ko for the target: insmod it with action=warn|oops|dump."""
    return build_fixture_module(ws, target_tree, "trouble")
