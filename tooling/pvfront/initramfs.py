"""The guest image: a deterministic newc initramfs with busybox, an /init and kernel modules.

The archive is written here rather than by `cpio` so that the same inputs always give the same
bytes: entries are sorted, inode numbers count up from 1, every mtime/uid/gid is 0 and the gzip
header carries no mtime or file name. Modules are stored uncompressed (6.12's `.ko.xz` are
decompressed on the host) so the guest's busybox modprobe never needs to decompress, and the
image's `modules.dep` comes from the real `depmod -b` run over exactly the modules it holds.
"""

from __future__ import annotations

import gzip
import shlex
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvfront import depmod, elf
from pvfront.architectures import Architecture
from pvfront.console import INIT_LOADING, INIT_SHELL, INIT_STARTED
from pvfront.depgraph import DependencyGraph, describe_cycle
from pvfront.elf import module_name_from_path
from pvfront.errors import UsageError
from pvfront.kerneltree import KernelTree

PROMPT = "pvfront# "
# Where modules under test go inside lib/modules/<release>/.
EXTRA_DIR = "extra"
# depmod's outputs that busybox modprobe reads; the .bin indexes are what kmod's modprobe reads.
_DEPMOD_OUTPUTS = (
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.softdep",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
)

_S_DIR = stat.S_IFDIR | 0o755
_S_FILE = stat.S_IFREG | 0o644
_S_EXEC = stat.S_IFREG | 0o755
_S_LINK = stat.S_IFLNK | 0o777
_S_CHR = stat.S_IFCHR | 0o600


# --------------------------------------------------------------------------- cpio (newc)


@dataclass(frozen=True)
class Entry:
    """One member of a newc archive. `path` has no leading slash."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def _header(ino: int, entry: Entry, name_size: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        0,
        0,
        2 if entry.is_dir else 1,
        0,
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        name_size,
        0,
    )
    return b"070701" + b"".join(f"{value:08X}".encode() for value in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _sort_key(path: str) -> tuple[str, ...]:
    # By components, so a directory always precedes what it contains.
    return tuple(path.split("/"))


def write_newc(entries: Iterable[Entry]) -> bytes:
    """The newc archive of entries, in path order, with inodes numbered from 1."""
    out = bytearray()
    ordered = sorted(entries, key=lambda e: _sort_key(e.path))
    paths = [e.path for e in ordered]
    if len(set(paths)) != len(paths):
        twice = sorted({p for p in paths if paths.count(p) > 1})
        raise UsageError(f"initramfs: duplicate entries {twice}")
    for ino, entry in enumerate(ordered, start=1):
        name = entry.path.encode() + b"\0"
        head = _header(ino, entry, len(name))
        out += head + name + _pad(len(head) + len(name))
        out += entry.data + _pad(len(entry.data))
    trailer = Entry("TRAILER!!!", 0)
    name = trailer.path.encode() + b"\0"
    head = _header(0, trailer, len(name))
    out += head + name + _pad(len(head) + len(name))
    return bytes(out)


def read_newc(archive: bytes) -> list[Entry]:
    """The entries of a newc archive (gzip-compressed or not), up to its trailer."""
    if archive[:2] == b"\x1f\x8b":
        archive = gzip.decompress(archive)
    entries: list[Entry] = []
    offset = 0
    while True:
        head = archive[offset : offset + 110]
        if head[:6] != b"070701":
            raise ValueError(f"not a newc header at offset {offset}")
        fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, name_size = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_start = offset + 110
        name = archive[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + len(_pad(110 + name_size))
        if name == "TRAILER!!!":
            return entries
        data = archive[data_start : data_start + size]
        entries.append(Entry(name, mode, data, rdev))
        offset = data_start + size + len(_pad(size))


def compress(archive: bytes, level: int | None) -> bytes:
    """gzip at `level` with a zero mtime and no name; None leaves the archive uncompressed."""
    if level is None:
        return archive
    return gzip.compress(archive, compresslevel=level, mtime=0)


# --------------------------------------------------------------------------- modules


def _strip_compression(relpath: str) -> str:
    for suffix in (".xz", ".zst", ".gz"):
        if relpath.endswith(".ko" + suffix):
            return relpath[: -len(suffix)]
    return relpath


def load_order(modules: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Modules under test in insmod order, and the other modules they need (in-tree ones, to
    modprobe first), from each module's modinfo `depends=`: the modules in the order given,
    each after what it needs. Modules that need each other are a usage error."""
    by_name = {module_name_from_path(m): m for m in modules}
    graph = DependencyGraph()
    for path, info in zip(modules, elf.read_all(modules), strict=True):
        graph.add(module_name_from_path(path), [module_name_from_path(d) for d in info.depends])
    cycles = graph.cycles()
    if cycles:
        raise UsageError(
            "modules under test need each other: "
            + "; ".join(describe_cycle(cycle) for cycle in cycles)
        )
    order = graph.order(by_name)
    return [by_name[n] for n in order if n in by_name], [n for n in order if n not in by_name]


# --------------------------------------------------------------------------- /init


@dataclass(frozen=True)
class InitOptions:
    """What the generated /init does before handing the serial line to a shell."""

    # The shell reads the second serial line, or with this the kernel console's (an
    # interactive boot). Never /dev/console: it cannot be a controlling tty, and without one
    # Ctrl-C would not reach the shell's jobs.
    shell_on_console: bool = False
    prompt: str = PROMPT
    load_modules: bool = False  # insmod the modules under test at boot
    poweroff_on_exit: bool = True  # the guest powers off when the shell exits


def render_init(
    options: InitOptions,
    release: str,
    modprobe_first: Sequence[str],
    insmod: Sequence[str],
    arch: Architecture,
) -> str:
    """The /init script: mount the API filesystems, optionally load modules, run a shell."""
    lines = [
        "#!/bin/sh",
        "# Generated by pvfront.initramfs.",
        "/bin/busybox --install -s",
        "export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "mount -t tmpfs tmpfs /tmp",
        "ip link set lo up 2>/dev/null",
        # Progress lines on the kernel console tell a hung boot from a broken init.
        f"echo {INIT_STARTED!r}",
    ]
    if options.load_modules:
        lines.append(f"echo {INIT_LOADING!r}")
        if modprobe_first:
            lines.append("modprobe -a " + " ".join(shlex.quote(m) for m in modprobe_first))
        lines += [f"insmod /lib/modules/{release}/{EXTRA_DIR}/{shlex.quote(m)}" for m in insmod]
    tty = f"/dev/{arch.console_tty if options.shell_on_console else arch.shell_tty}"
    # A serial line the kernel console does not use starts at 9600 baud.
    lines.append(f"stty -F {tty} 115200 2>/dev/null")
    lines.append(f"export PS1={shlex.quote(options.prompt)}")
    lines.append(f"echo {INIT_SHELL!r}")
    # setsid + opening the line read-write makes it the shell's controlling tty (for Ctrl-C).
    shell = f"setsid sh -c 'exec sh -i <>{tty} >&0 2>&1'"
    if options.poweroff_on_exit:
        lines += [shell, "poweroff -f"]
    else:
        lines.append("exec " + shell)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the image


@dataclass(frozen=True)
class Initramfs:
    """A built image and what went into it."""

    path: Path
    in_tree_modules: tuple[str, ...]  # the requested in-tree modules and their closure
    modules: tuple[str, ...]  # modules under test, insmod order
    modprobe_first: tuple[str, ...]  # in-tree modules the modules under test need


@dataclass
class ImageSpec:
    """Everything an initramfs holds besides busybox."""

    modules: Sequence[Path] = ()  # out-of-tree modules under test (.ko)
    in_tree_modules: Sequence[str] = ()  # names; their dependency closure comes along
    files: Mapping[str, bytes | Path] = field(default_factory=dict)  # guest path -> content
    init: InitOptions = field(default_factory=InitOptions)
    init_script: str | None = None  # replaces the generated /init entirely (harness tests)
    gzip_level: int | None = 1  # None: uncompressed cpio


def _base_entries(busybox: Path) -> list[Entry]:
    dirs = [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "mnt",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "tmp",
        "usr",
        "usr/bin",
        "usr/sbin",
    ]
    entries = [Entry(d, _S_DIR) for d in dirs]
    entries += [
        Entry("bin/busybox", _S_EXEC, busybox.read_bytes()),
        Entry("bin/sh", _S_LINK, b"busybox"),
        # The kernel opens /dev/console for /init before devtmpfs is mounted.
        Entry("dev/console", _S_CHR, rdev=(5, 1)),
        Entry("etc/passwd", _S_FILE, b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/group", _S_FILE, b"root:x:0:\n"),
    ]
    return entries


def _parent_dirs(paths: Iterable[str]) -> set[str]:
    parents: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        parents.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return parents


def _depmod(modules: Mapping[str, bytes], tree: KernelTree) -> dict[str, bytes]:
    """depmod's tables for exactly these modules (relpath -> bytes), as the guest will see them."""
    with tempfile.TemporaryDirectory(prefix="pvf-depmod-") as tmp:
        mod_root = Path(tmp) / "lib" / "modules" / tree.release
        mod_root.mkdir(parents=True)
        for rel, data in modules.items():
            (mod_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (mod_root / rel).write_bytes(data)
        order = tree.modules_dir / "modules.order"
        if order.exists():
            # Keep depmod's ordering hints to what the image holds, decompressed names.
            kept = [_strip_compression(line) for line in order.read_text().split()]
            (mod_root / "modules.order").write_text("".join(f"{p}\n" for p in kept if p in modules))
        depmod.run(Path(tmp), tree, f"the {tree.release} image")
        return {
            name: (mod_root / name).read_bytes()
            for name in (
                *_DEPMOD_OUTPUTS,
                "modules.builtin",
                "modules.builtin.modinfo",
                "modules.order",
            )
            if (mod_root / name).exists()
        }


def _file_entries(files: Mapping[str, bytes | Path]) -> list[Entry]:
    entries = []
    for guest_path, content in files.items():
        rel = guest_path.strip("/")
        if not rel or ".." in rel.split("/"):
            raise UsageError(f"initramfs: bad guest path '{guest_path}'")
        if isinstance(content, Path):
            mode = _S_EXEC if content.stat().st_mode & 0o111 else _S_FILE
            entries.append(Entry(rel, mode, content.read_bytes()))
        else:
            entries.append(Entry(rel, _S_FILE, bytes(content)))
    return entries


def build(tree: KernelTree, spec: ImageSpec, out: Path, index_cache: Path) -> Initramfs:
    """Write the image for tree to out; index_cache keeps the kernel's module index."""
    release = tree.release
    mod_prefix = f"lib/modules/{release}"
    insmod_paths, outside = load_order(list(spec.modules)) if spec.modules else ([], [])
    index = (
        depmod.ModuleIndex.for_tree(tree, index_cache)
        if (spec.in_tree_modules or outside)
        else None
    )
    wanted = [*spec.in_tree_modules, *outside]
    closure: list[str] = []
    modules: dict[str, bytes] = {}
    if index is not None:
        closure = index.closure(wanted)
        for name in closure:
            rel = index.paths[name]
            modules[_strip_compression(rel)] = elf.read_bytes(tree.modules_dir / rel)
    for path in insmod_paths:
        if not path.name.endswith(".ko"):
            raise UsageError(f"{path}: a module under test must be a .ko file")
        modules[f"{EXTRA_DIR}/{path.name}"] = path.read_bytes()
    tables = _depmod(modules, tree)

    init = (
        spec.init_script
        if spec.init_script is not None
        else render_init(
            spec.init,
            release,
            [n for n in outside if not index or n not in index.builtin],
            [p.name for p in insmod_paths],
            tree.target.architecture,
        )
    )
    entries = _base_entries(tree.busybox)
    entries.append(Entry("init", _S_EXEC, init.encode()))
    entries += [Entry(f"{mod_prefix}/{rel}", _S_FILE, data) for rel, data in modules.items()]
    entries += [Entry(f"{mod_prefix}/{name}", _S_FILE, data) for name, data in tables.items()]
    entries += _file_entries(spec.files)
    present = {e.path for e in entries}
    entries += [Entry(d, _S_DIR) for d in sorted(_parent_dirs(present) - present)]

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(compress(write_newc(entries), spec.gzip_level))
    return Initramfs(
        out, tuple(closure), tuple(module_name_from_path(p) for p in insmod_paths), tuple(outside)
    )
