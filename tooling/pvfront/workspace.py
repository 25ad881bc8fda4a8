"""Where pvfront finds its sources and keeps its cache and build products."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pvfront.errors import UsageError

CACHE_HELP = "set $PVFRONT_CACHE to another directory"


def _default_root() -> Path:
    # tooling/pvfront/workspace.py -> the repository root
    return Path(__file__).resolve().parents[2]


def default_cache() -> Path:
    explicit = os.environ.get("PVFRONT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pvfront"


def _check_cache(cache: Path) -> None:
    """A UsageError naming the cache unless it is, or can be made, a writable directory: the
    cache itself or the nearest directory above it that exists decides."""
    existing = next(p for p in (cache, *cache.parents) if p.exists())
    if existing == cache:
        if not cache.is_dir():
            raise UsageError(f"{cache}: not a directory, so it cannot be the cache ({CACHE_HELP})")
        if not os.access(cache, os.W_OK | os.X_OK):
            raise UsageError(f"{cache}: the cache is not writable ({CACHE_HELP})")
    elif not existing.is_dir():
        raise UsageError(
            f"{cache}: the cache cannot be made: {existing} is not a directory ({CACHE_HELP})"
        )
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"{cache}: the cache cannot be made: {existing} is not writable ({CACHE_HELP})"
        )


@dataclass(frozen=True)
class Workspace:
    """The repository being worked on and the cache of downloaded kernels."""

    root: Path
    cache: Path

    @classmethod
    def discover(cls) -> Workspace:
        """The workspace of the environment; a cache that cannot be one is a UsageError."""
        root = Path(os.environ["PVFRONT_ROOT"]) if "PVFRONT_ROOT" in os.environ else _default_root()
        cache = default_cache().resolve()
        _check_cache(cache)
        return cls(root=root.resolve(), cache=cache)

    @property
    def targets_file(self) -> Path:
        return self.root / "targets.toml"

    @property
    def kmod_dir(self) -> Path:
        return self.root / "kmod"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def log_dir(self) -> Path:
        return self.build_dir / "logs"

    def target_build_dir(self, target_id: str) -> Path:
        return self.build_dir / target_id

    @property
    def test_hooks_build_dir(self) -> Path:
        """Where the test builds go, one directory per target, apart from what is shipped."""
        return self.build_dir / "test-hooks"
