"""Shared helpers for the symcheck tests: provisioned kernels and real modules to read."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from pvfront import provision
from pvfront.kerneltree import KernelTree
from pvfront.symvers import Kernel, kernel_for_tree, module_files
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

TARGET_IDS = ("deb12-amd64", "deb12-686", "deb12-cloud-amd64", "deb12-rt-amd64",
              "deb12bpo-amd64", "deb11-amd64", "deb11-686")


@functools.cache
def tree(target_id: str) -> KernelTree:
    ws = Workspace.discover()
    target = load_targets(ws.targets_file).get(target_id)
    found = provision.load_tree(ws, target)
    if found is None:
        pytest.skip(f"target {target_id} is not provisioned (pvfront setup)")
    return found


@functools.cache
def kernel(target_id: str) -> Kernel:
    return kernel_for_tree(tree(target_id))


@functools.cache
def _files(target_id: str) -> dict[str, str]:
    return module_files(tree(target_id).modules_dir)


def intree(target_id: str, name: str) -> Path:
    """The file of an in-tree module of a target."""
    return Path(_files(target_id)[name])


def patched(source: bytes, old: bytes, new: bytes) -> bytes:
    """A copy of a module image with one byte string replaced by another of the same length."""
    assert len(old) == len(new) and source.count(old) >= 1, (old, new)
    return source.replace(old, new, 1)
