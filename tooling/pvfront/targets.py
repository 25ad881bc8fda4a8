"""Kernel targets: what targets.toml declares, and looking them up by id."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pvfront import architectures
from pvfront.architectures import Architecture, QemuMachine
from pvfront.errors import UsageError

_REQUIRED = ("id", "suite", "arch", "flavour")
# Keys whose value the architecture gives when a target leaves them out.
_DEFAULTED = ("qemu", "machine")
# A Kconfig fragment, relative to the targets file: the target's kernel is not the archive's
# image but one pvfront builds from its suite's linux-source package (kernelbuild.py).
_OPTIONAL = ("kconfig",)
# Suites that change every day and have no -security suite; their archive may be broken for a
# while (a transition), which makes a target unavailable rather than failed.
_UNSTABLE_SUITES = ("sid", "unstable")


@dataclass(frozen=True)
class Target:
    """One Debian kernel that modules are built for, checked against and booted."""

    id: str
    suite: str
    arch: str
    flavour: str
    qemu: str  # the QEMU system emulator that boots it
    machine: str  # the QEMU machine type
    kconfig: Path | None = None  # built from source with this fragment; None: Debian's image

    @property
    def from_source(self) -> bool:
        return self.kconfig is not None

    @property
    def architecture(self) -> Architecture:
        return architectures.for_debian_arch(self.arch)

    @property
    def qemu_machine(self) -> QemuMachine:
        return self.architecture.machine(self.machine)

    @property
    def base_suite(self) -> str:
        """The release a suite belongs to: bookworm-backports -> bookworm."""
        return self.suite.split("-", 1)[0]

    @property
    def unstable(self) -> bool:
        return self.suite in _UNSTABLE_SUITES

    @property
    def suites(self) -> tuple[str, ...]:
        """Suites whose kernels this target may take, newest ABI wins.

        A release's kernels are updated through its -security suite; a backports suite
        carries its own kernels and nothing else, and unstable has no security suite.
        """
        if "-" in self.suite or self.unstable:
            return (self.suite,)
        return (self.suite, f"{self.suite}-security")


@dataclass(frozen=True)
class TargetSet:
    targets: tuple[Target, ...]
    default_id: str
    source: Path

    def get(self, target_id: str) -> Target:
        for target in self.targets:
            if target.id == target_id:
                return target
        known = ", ".join(t.id for t in self.targets)
        raise UsageError(f"{self.source}: unknown target '{target_id}' (known: {known})")

    @property
    def default(self) -> Target:
        return self.get(self.default_id)

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.targets]

    def select(self, target_id: str | None = None, *, all_targets: bool = False) -> list[Target]:
        """The targets a command acts on: one by id, all of them, or the default."""
        if all_targets and target_id:
            raise UsageError("give either --target or --all, not both")
        if all_targets:
            return list(self.targets)
        return [self.get(target_id) if target_id else self.default]


def _parse_target(source: Path, index: int, table: object) -> Target:
    if not isinstance(table, dict):
        raise UsageError(f"{source}: target #{index + 1} is not a table")
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise UsageError(f"{source}: target #{index + 1} lacks {', '.join(missing)}")
    unknown = sorted(set(table) - {*_REQUIRED, *_DEFAULTED, *_OPTIONAL})
    if unknown:
        raise UsageError(f"{source}: target '{table['id']}' has unknown keys {', '.join(unknown)}")
    values = {key: table[key] for key in (*_REQUIRED, *_DEFAULTED, *_OPTIONAL) if key in table}
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            raise UsageError(f"{source}: target #{index + 1}: {key} must be a non-empty string")
    try:
        arch = architectures.for_debian_arch(values["arch"])
        values.setdefault("qemu", arch.qemu_binary)
        machine = values.setdefault("machine", arch.default_machine.name)
        arch.machine(machine)  # one the architecture knows, or its UsageError
    except UsageError as exc:
        raise UsageError(f"{source}: target '{values['id']}': {exc}") from None
    # Resolved, not opened: a copy of the file elsewhere (a test's) stays loadable; the kernel
    # build reads the fragment and names it if it cannot.
    kconfig = values.pop("kconfig", None)
    fragment = (source.parent / kconfig).resolve() if kconfig is not None else None
    return Target(**values, kconfig=fragment)


def load_targets(source: Path) -> TargetSet:
    """Read and validate a targets file; any mistake is one UsageError naming the file."""
    try:
        data = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise UsageError(f"{source}: no such targets file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    tables = data.get("target")
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{source}: declares no [[target]] tables")
    targets = tuple(_parse_target(source, i, t) for i, t in enumerate(tables))
    ids = [t.id for t in targets]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"{source}: duplicate target ids {', '.join(duplicates)}")
    default_id = data.get("default", targets[0].id)
    result = TargetSet(targets=targets, default_id=default_id, source=source)
    result.get(default_id)  # an unknown default is a mistake in the file
    return result
