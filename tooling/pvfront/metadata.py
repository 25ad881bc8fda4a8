"""The module family's one declaration (kmod/modules.toml) and the files generated from it.

The declaration names each module, its sources, description, licence, version and the symbol
namespaces it imports. From it come the Kbuild file and a metadata header per module (the
modinfo fields), and, for packages, the load configuration: modules-load.d, modprobe.d
softdeps, an initramfs-tools hook and dkms.conf. PCI ids stay in the C device tables; the
tooling reads them back from the built modules' aliases.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from pvfront.depmod import ModuleIndex
from pvfront.errors import UsageError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NAMESPACE = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Debian policy 5.6.2: a name and an address in angle brackets.
_CONTACT = re.compile(r"^[^<>,@]+ <[^<>\s@]+@[^<>\s@]+\.[^<>\s@]+>$")


@dataclass(frozen=True)
class ModuleDecl:
    name: str
    sources: tuple[str, ...]
    description: str
    license: str
    version: str
    namespace: str | None  # the namespace its exports go into
    imports: tuple[str, ...]  # namespaces it uses
    transport: bool  # finds devices for the others: loaded before them (softdep)

    @property
    def objects(self) -> list[str]:
        return [Path(s).with_suffix(".o").name for s in self.sources]


@dataclass(frozen=True)
class Family:
    declaration: Path
    name: str
    version: str
    author: str
    maintainer: str  # the packages' Maintainer: "Name <address>"
    released: datetime.date  # the version's release date: its changelog entry's
    install_dir: str  # under /lib/modules/<release>/
    kbuild_includes: tuple[str, ...]
    modules: tuple[ModuleDecl, ...]

    @property
    def released_epoch(self) -> int:
        """The release date's midnight UTC, in seconds since 1970."""
        midnight = datetime.datetime.combine(self.released, datetime.time(), datetime.UTC)
        return int(midnight.timestamp())

    @property
    def source_dir(self) -> Path:
        return self.declaration.parent

    def module(self, name: str) -> ModuleDecl:
        return next(m for m in self.modules if m.name == name)

    def source_files(self) -> list[Path]:
        names = {s for m in self.modules for s in m.sources} | set(self.kbuild_includes)
        headers = {p.name for p in self.source_dir.glob("*.h")}
        return sorted(self.source_dir / n for n in names | headers)


def _string(source: Path, where: str, table: dict, key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{source}: {where}: '{key}' must be a non-empty string")
    return value


def _contact(source: Path, where: str, table: dict, key: str) -> str:
    value = _string(source, where, table, key)
    if not _CONTACT.match(value):
        raise UsageError(f"{source}: {where}: '{key}' must be 'Name <address>', not {value!r}")
    return value


def _date(source: Path, where: str, table: dict, key: str) -> datetime.date:
    value = table.get(key)
    if type(value) is not datetime.date:
        raise UsageError(f"{source}: {where}: '{key}' must be a date (YYYY-MM-DD), not {value!r}")
    return value


def _strings(source: Path, where: str, table: dict, key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{source}: {where}: '{key}' must be a list of strings")
    return tuple(value)


def _flag(source: Path, where: str, table: dict, key: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise UsageError(f"{source}: {where}: '{key}' must be true or false, not {value!r}")
    return value


def load_family(source: Path) -> Family:
    """Read and check the declaration; every mistake is one error naming the file."""
    try:
        data = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise UsageError(f"{source}: no such module declaration") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{source}: cannot read: {exc}") from None
    family = data.get("family")
    tables = data.get("module")
    if not isinstance(family, dict) or not isinstance(tables, list) or not tables:
        raise UsageError(f"{source}: needs a [family] table and [[module]] tables")
    licence = _string(source, "[family]", family, "license")
    version = _string(source, "[family]", family, "version")
    modules = []
    for index, table in enumerate(tables):
        where = f"module #{index + 1}"
        if not isinstance(table, dict):
            raise UsageError(f"{source}: {where}: must be a [[module]] table, not {table!r}")
        name = _string(source, where, table, "name")
        if not _NAME.match(name):
            raise UsageError(f"{source}: {where}: '{name}' is not a module name")
        sources = _strings(source, name, table, "sources")
        missing = [s for s in sources if not (source.parent / s).is_file()]
        if not sources or missing:
            raise UsageError(f"{source}: {name}: missing sources {', '.join(missing) or '(none)'}")
        namespace = table.get("namespace")
        imports = _strings(source, name, table, "imports")
        for ns in (*imports, *([namespace] if namespace else [])):
            if not isinstance(ns, str) or not _NAMESPACE.match(ns):
                raise UsageError(f"{source}: {name}: '{ns}' is not a namespace name")
        modules.append(
            ModuleDecl(
                name=name,
                sources=sources,
                description=_string(source, name, table, "description"),
                license=_string(source, name, table, "license", licence),
                version=_string(source, name, table, "version", version),
                namespace=namespace,
                imports=imports,
                transport=_flag(source, name, table, "transport"),
            )
        )
    names = [m.name for m in modules]
    if len(set(names)) != len(names):
        raise UsageError(f"{source}: a module is declared twice")
    return Family(
        declaration=source,
        name=_string(source, "[family]", family, "name"),
        version=version,
        author=_string(source, "[family]", family, "author"),
        maintainer=_contact(source, "[family]", family, "maintainer"),
        released=_date(source, "[family]", family, "released"),
        install_dir=_string(source, "[family]", family, "install_dir", "updates/pvfront"),
        kbuild_includes=_strings(source, "[family]", family, "kbuild_includes"),
        modules=tuple(modules),
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["cstring"] = json.dumps  # a JSON string is a valid C string literal here
    env.filters["extended_description"] = extended_description
    return env


def extended_description(text: str) -> str:
    """A control file's extended description of one paragraph: its words in lines of at most
    80 characters, each led by the space that continues the field (Debian policy 5.6.13)."""
    wrapped = textwrap.fill(
        " ".join(text.split()),
        width=80,
        initial_indent=" ",
        subsequent_indent=" ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return wrapped + "\n"


def render(template: str, **context: object) -> str:
    return _environment().get_template(template).render(**context)


def sources_digest(family: Family) -> str:
    digest = hashlib.sha256()
    for path in family.source_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_files(family: Family, build_for: str, meta_dir: str, source_dir: str) -> dict[str, str]:
    """The Kbuild file and each module's metadata header, for one build directory.

    build_for names what the modules are built for (a target id, or "dkms"); it and a digest of
    the sources go into modinfo as pvfront_build.
    """
    build_info = f"{family.name} {family.version} {build_for} src:{sources_digest(family)}"
    files = {
        "Kbuild": render(
            "Kbuild.j2",
            family=family,
            build_for=build_for,
            meta_dir=meta_dir,
            source_dir=source_dir,
        )
    }
    for module in family.modules:
        files[f"{module.name}.meta.h"] = render(
            "meta.h.j2", family=family, module=module, build_info=build_info
        )
    return files


def transports(family: Family) -> list[str]:
    return [m.name for m in family.modules if m.transport]


# The block driver's disk names (pvf_blk_name() in kmod/pvf_blk.c): pvda, pvdb, ...
DISK_PREFIX = "pvd"


def udev_rules_name(family: Family) -> str:
    return f"60-{family.name}-persistent-storage.rules"


def load_config_files(family: Family, index: ModuleIndex, *, exclusive: bool) -> dict[str, str]:
    """modules-load.d, modprobe.d, udev rules and initramfs hook contents, keyed by install
    path.

    The device drivers are the modules nothing else needs, less the transports; each gets a
    softdep on the transports, because modules.dep cannot say that a driver without a
    transport finds no device. The /etc files (conffiles) name no version: dpkg asks an
    administrator who edited one what to do whenever the package's copy changes too.
    """
    load_order = index.load_order()
    drivers = [
        name for name in load_order if name in index.unused() and name not in transports(family)
    ]
    softdeps = [(name, transports(family)) for name in drivers]
    [transport] = transports(family)
    files = {
        f"etc/modules-load.d/{family.name}.conf": render(
            "modules-load.conf.j2", family=family, boot_modules=drivers
        ),
        f"etc/modprobe.d/{family.name}.conf": render(
            "modprobe.conf.j2",
            family=family,
            softdeps=softdeps,
            exclusive=exclusive,
            transport=transport,
        ),
        f"usr/share/initramfs-tools/hooks/{family.name}": render(
            "initramfs-hook.j2",
            family=family,
            load_order=load_order,
            udev_rules=udev_rules_name(family),
        ),
        f"usr/lib/udev/rules.d/{udev_rules_name(family)}": render(
            "udev-rules.j2", family=family, disk_prefix=DISK_PREFIX
        ),
    }
    if exclusive:
        files[f"usr/share/initramfs-tools/scripts/init-premount/{family.name}"] = render(
            "initramfs-premount.j2", family=family, transport=transport
        )
    return files
