"""Shared helpers for the symcheck tests: provisioned kernels, real modules to read, and
targets chosen by what they are rather than by name.

Nothing here names a target, a kernel release or an ABI: the targets come from targets.toml and
their properties from the provisioned trees, so the tests keep working when Debian moves a
kernel on or targets.toml gains or loses a target. A test that needs a kind of kernel asks for
it (`pick(arch="i386")`, `by_line("5.10")`, `same_suite_pair("amd64", "rt-amd64")`) and is
skipped, saying what it needed, when no provisioned target has it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pvfront import provision
from pvfront.kerneltree import KernelTree, parse_config
from pvfront.symvers import Kernel, kernel_for_tree, module_files
from pvfront.targets import Target, TargetSet, load_targets
from pvfront.workspace import Workspace


@functools.cache
def declared() -> TargetSet:
    """The targets of the repository's targets.toml."""
    return load_targets(Workspace.discover().targets_file)


# Every declared target, in targets.toml's order (for parametrizing over all of them).
TARGET_IDS = tuple(declared().ids)


@functools.cache
def provisioned(target_id: str) -> KernelTree | None:
    """The cached tree of a target, or None when it is not provisioned (never fetches)."""
    return provision.load_tree(Workspace.discover(), declared().get(target_id))


@functools.cache
def tree(target_id: str) -> KernelTree:
    found = provisioned(target_id)
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


# --- properties of a target ------------------------------------------------------------------


def variant(target: Target) -> str:
    """The kind of a Debian flavour beyond its CPU: "rt-amd64" -> "rt", "cloud-amd64" ->
    "cloud"; a generic flavour ("amd64", "686") has none and gives ""."""
    head, _, tail = target.flavour.partition("-")
    return head if tail else ""


def line_of(release: str) -> tuple[int, ...]:
    """The kernel line of a release: its first two numbers, major and minor."""
    found = re.match(r"(\d+)\.(\d+)", release)
    assert found, f"not a kernel release: {release}"
    return int(found.group(1)), int(found.group(2))


def line(target_id: str) -> tuple[int, ...]:
    """The kernel line of a provisioned target, read from its tree's release."""
    return line_of(tree(target_id).release)


@functools.cache
def config(target_id: str) -> dict[str, str]:
    return parse_config(tree(target_id).config.read_text())


def modversions(target_id: str) -> bool:
    """Whether the target's kernel records symbol CRCs (CONFIG_MODVERSIONS in its .config)."""
    return config(target_id).get("CONFIG_MODVERSIONS") == "y"


def compressed(target_id: str) -> bool:
    """Whether the target's in-tree modules ship compressed (.ko.xz, .ko.zst, ...)."""
    return any(not f.endswith(".ko") for f in _files(target_id).values())


def _wanted_line(wanted: str | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(p) for p in wanted.split(".")) if isinstance(wanted, str) else wanted


def _has(target: Target, props: dict) -> bool:
    """Whether a target has every asked property; those of the tree only once it is known to
    be provisioned. `line` matches on its leading numbers: "6" is any 6.x, "6.1" not 6.12."""
    for key in ("arch", "flavour", "suite", "base_suite"):
        if key in props and getattr(target, key) != props[key]:
            return False
    if "variant" in props and variant(target) != props["variant"]:
        return False
    if "unstable" in props and target.unstable != props["unstable"]:
        return False
    if provisioned(target.id) is None:
        return False
    if "line" in props:
        wanted = _wanted_line(props["line"])
        if line(target.id)[: len(wanted)] != wanted:
            return False
    if "modversions" in props and modversions(target.id) != props["modversions"]:
        return False
    if "compressed" in props and compressed(target.id) != props["compressed"]:
        return False
    where = props.get("where")
    return where is None or bool(where(target.id))


_KNOWN = {
    "arch",
    "flavour",
    "suite",
    "base_suite",
    "variant",
    "unstable",
    "line",
    "modversions",
    "compressed",
    "where",
}


def _ordered() -> list[Target]:
    """The declared targets, the default first: a test that needs "a generic amd64 kernel"
    gets the project's main one when it qualifies."""
    targets = declared()
    return [targets.default, *(t for t in targets.targets if t.id != targets.default_id)]


def ids_where(**props) -> list[str]:
    """Every provisioned target with these properties (for parametrizing; may be empty).

    arch, flavour, suite, base_suite: as targets.toml declares them; variant: "" (generic),
    "rt", "cloud"; unstable: sid; line: "5.10", "6" or (6, 12), from the tree's release;
    modversions, compressed: from the tree; where: a predicate on the target id.
    """
    unknown = set(props) - _KNOWN
    assert not unknown, f"unknown target properties {sorted(unknown)}"
    return [t.id for t in _ordered() if _has(t, props)]


def _describe(props: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in props.items() if k != "where") + (
        " and a condition" if "where" in props else ""
    )


def pick(**props) -> str:
    """One provisioned target with these properties (the default target when it has them);
    the test is skipped, naming what it needed, when none has."""
    found = ids_where(**props)
    if not found:
        pytest.skip(f"no provisioned target with {_describe(props)}")
    return found[0]


def by_line(wanted: str, **props) -> str:
    """A provisioned target of a kernel line ("5.10": CRCs in absolute __crc_ symbols)."""
    return pick(line=wanted, **props)


def generic(**props) -> str:
    """A generic amd64 kernel with symbol CRCs (CONFIG_MODVERSIONS), which the single-kernel
    checks run on: the default target when it qualifies."""
    return pick(**{"arch": "amd64", "variant": "", "modversions": True, **props})


def same_suite_pairs(
    flavour_a: str, flavour_b: str, where: Callable[[str, str], bool] | None = None
) -> list[tuple[str, str]]:
    """Every (a, b) of two provisioned targets of one suite with these flavours, the default
    target's suite first; `where` further narrows the pairs."""
    pairs = []
    for a in ids_where(flavour=flavour_a):
        suite = declared().get(a).suite
        for b in ids_where(flavour=flavour_b, suite=suite):
            if a != b and (where is None or where(a, b)):
                pairs.append((a, b))
    return pairs


def same_suite_pair(
    flavour_a: str, flavour_b: str, where: Callable[[str, str], bool] | None = None
) -> tuple[str, str]:
    """Two provisioned targets of one suite with these flavours, e.g. ("amd64", "rt-amd64")."""
    pairs = same_suite_pairs(flavour_a, flavour_b, where)
    if not pairs:
        extra = " meeting the test's condition" if where else ""
        pytest.skip(f"no suite with provisioned {flavour_a} and {flavour_b} targets{extra}")
    return pairs[0]


def rebound(image: bytes, symbol: str, bind: int) -> bytes:
    """A copy of a module image whose undefined `symbol` has another ELF binding (STB_WEAK,
    STB_GLOBAL), located with pyelftools so the reader under test plays no part in it."""
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(image))
    symtab = elf.get_section_by_name(".symtab")
    info_field = 4 if elf.elfclass == 64 else 12  # st_info in Elf64_Sym / Elf32_Sym
    for index, sym in enumerate(symtab.iter_symbols()):
        if sym.name == symbol and sym["st_shndx"] == "SHN_UNDEF":
            at = symtab["sh_offset"] + index * symtab["sh_entsize"] + info_field
            out = bytearray(image)
            out[at] = (bind << 4) | (out[at] & 0xF)
            return bytes(out)
    raise AssertionError(f"{symbol} is not an undefined symbol of the module")


def host_suite() -> str:
    """The Debian release the host runs (VERSION_CODENAME of /etc/os-release): a target of that
    suite is one whose headers build with the host's own compiler, outside any build root."""
    for text in Path("/etc/os-release").read_text().splitlines():
        key, _, value = text.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    pytest.skip("the host does not say its Debian release (/etc/os-release)")


def layout_crcs_differ(a: str, b: str) -> bool:
    """Whether two targets' kernels export module_layout with different CRCs (a module built
    for one is refused by the other at module_layout, when struct module sizes agree)."""
    mine, theirs = kernel(a).exports.get("module_layout"), kernel(b).exports.get("module_layout")
    return (
        mine is not None
        and theirs is not None
        and mine.crc != theirs.crc
        and kernel(a).module_struct_size == kernel(b).module_struct_size
    )
