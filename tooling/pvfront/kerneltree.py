"""A provisioned target on disk: the extracted kernel, its headers and in-tree modules.

Everything that builds for, boots or checks against a target reads it through this class; only
`provision` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvfront.targets import Target


@dataclass(frozen=True)
class KernelTree:
    """A provisioned target: a real Debian kernel, its headers and its modules, on disk."""

    target: Target
    root: Path
    release: str
    packages: dict[str, str]
    headers_rel: str

    @property
    def headers_dir(self) -> Path:
        return self.root / self.headers_rel

    @property
    def vmlinuz(self) -> Path:
        """The kernel image: in /boot up to 6.12; from 7.x beside the modules, where the
        unsigned binary package names it vmlinuz.unsigned."""
        places = [
            self.root / "boot" / f"vmlinuz-{self.release}",
            self.modules_dir / "vmlinuz",
            self.modules_dir / "vmlinuz.unsigned",
        ]
        return next((p for p in places if p.exists()), places[0])

    @property
    def system_map(self) -> Path:
        return self.root / "boot" / f"System.map-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def merged_usr(self) -> bool:
        """Whether the kernel's packages ship their modules under usr/lib/modules (Debian 13
        on), where /lib is a link to /usr/lib; provision gives the tree that link."""
        return (self.root / "lib").is_symlink()

    @property
    def symvers(self) -> Path:
        return self.headers_dir / "Module.symvers"

    @property
    def config(self) -> Path:
        return self.headers_dir / ".config"

    def built_in(self, option: str) -> bool:
        """Whether the kernel is built with option (`CONFIG_...`) set to y."""
        return parse_config(self.config.read_text()).get(option) == "y"

    @property
    def busybox(self) -> Path:
        return self.root / "bin" / "busybox"

    def problems(self) -> list[str]:
        """What is missing from the tree; empty when it can build and boot."""
        required = {
            "vmlinuz": self.vmlinuz,
            "Module.symvers": self.symvers,
            ".config": self.config,
            "kbuild modpost": self.headers_dir / "scripts" / "mod" / "modpost",
            "kbuild fixdep": self.headers_dir / "scripts" / "basic" / "fixdep",
            "modules.order": self.modules_dir / "modules.order",
            "busybox": self.busybox,
        }
        return [f"{name} ({path})" for name, path in required.items() if not path.exists()]

    def to_json(self) -> dict:
        return {
            "id": self.target.id,
            "release": self.release,
            "packages": self.packages,
            "headers": self.headers_rel,
        }


def parse_config(text: str) -> dict[str, str]:
    """The options a .config (or a fragment) sets; `# CONFIG_X is not set` leaves X out."""
    values = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values
