"""An ABI step of today's archive: two ABIs of one kernel line, the older one provisioned into a
private workspace. How the tests play a kernel upgrade without naming a version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvfront import provision
from pvfront.kerneltree import KernelTree
from pvfront.targets import Target, load_targets
from pvfront.workspace import Workspace

# What the private workspace borrows from the real one: downloads, indexes, build roots and
# guest images are keyed by content, so sharing them costs nothing and saves minutes.
_SHARED_CACHE = ("debs", "apt", "buildroots", "images")


def kernel_line(abi: str) -> str:
    """6.1 for 6.1.0-57, 6.12 for 6.12.118+deb13."""
    return ".".join(abi.split(".")[:2])


@dataclass(frozen=True)
class AbiStep:
    older: provision.Resolution
    newest: provision.Resolution


def abi_step(ws: Workspace, targets: list[Target]) -> AbiStep | None:
    """The first of targets whose flavour the archive offers in two ABIs of one line today."""
    view = provision.apt_view(ws)
    provision.update_indexes(view, targets, log=print)
    for target in targets:
        options = provision.candidates(view, target)
        same_line = [r for r in options[1:] if kernel_line(r.abi) == kernel_line(options[0].abi)]
        if same_line:
            return AbiStep(same_line[0], options[0])
    return None


def suite_targets(ws: Workspace, suite: str) -> list[Target]:
    return [t for t in load_targets(ws.targets_file).targets if t.suite == suite]


def older_workspace(ws: Workspace, directory: Path, step: AbiStep) -> tuple[Workspace, KernelTree]:
    """A workspace under directory whose cached tree of the step's target is the older ABI."""
    (directory / "cache").mkdir(parents=True)
    for shared in _SHARED_CACHE:
        (ws.cache / shared).mkdir(parents=True, exist_ok=True)
        (directory / "cache" / shared).symlink_to(ws.cache / shared)
    for source in ("kmod", "targets.toml"):
        (directory / source).symlink_to(ws.root / source)
    private = Workspace(root=directory, cache=directory / "cache")
    return private, provision.install(private, step.older, log=print)
