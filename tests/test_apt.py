"""The private apt view: the mirror comes from the system's apt, never from the code.

apt itself is replaced by a fake `apt-get` put first on PATH: it prints the index targets a
test gives it and serves the bytes a test gives it as downloads, and records every call. The
host names are made up (`*.example`); nothing here reaches a network or reads the host's apt.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from pvfront import apt
from pvfront.apt import AptIndex, Mirror, PackageVersion, parse_stanzas, system_mirror
from pvfront.errors import SetupError

SHOW = """Package: linux-headers-6.1.0-56-amd64
Version: 6.1.192-2
Depends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2),
 linux-compiler-gcc-12-x86
Filename: pool/main/l/linux/linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb

Package: linux-headers-6.1.0-56-amd64
Version: 6.1.192-1
Depends: gcc-12 | clang-14
Filename: pool/main/l/linux/linux-headers-6.1.0-56-amd64_6.1.192-1_amd64.deb
"""


def test_stanzas_with_continuation_lines_are_parsed():
    stanzas = parse_stanzas(SHOW)
    assert [s["Version"] for s in stanzas] == ["6.1.192-2", "6.1.192-1"]
    first = PackageVersion("linux-headers-6.1.0-56-amd64", "6.1.192-2", "amd64", stanzas[0])
    assert first.depends() == [
        "linux-headers-6.1.0-56-common",
        "linux-kbuild-6.1",
        "linux-compiler-gcc-12-x86",
    ]
    assert first.filename == "linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb"
    second = PackageVersion("x", "6.1.192-1", "amd64", stanzas[1])
    assert second.depends() == ["gcc-12", "clang-14"]


# ------------------------------------------------------------------ a fake apt-get

FAKE_APT_GET = """\
import json, pathlib, sys

here = pathlib.Path(__file__).parent
state = json.loads((here / "state.json").read_text())
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as log:
    log.write(json.dumps(args) + "\\n")
if state.get("exit"):
    print("E: the fake apt-get was told to fail", file=sys.stderr)
    sys.exit(state["exit"])
if "indextargets" in args:
    form = args[args.index("--format") + 1]
    for record in state["indextargets"]:
        line = form
        for key, value in record.items():
            line = line.replace(f"$({key})", value)
        print(line)
elif "download" in args:
    spec = args[args.index("download") + 1]  # name:arch=version
    served = state["downloads"]
    done = sum(1 for line in open(here / "calls.jsonl") if "download" in json.loads(line)) - 1
    name_arch, _, version = spec.partition("=")
    name, _, arch = name_arch.partition(":")
    pathlib.Path(f"{name}_{version}_{arch}.deb").write_bytes(bytes.fromhex(served[done]))
else:
    sys.exit(100)
"""


class FakeApt:
    """Tells the fake apt-get what to answer and reads back how it was called."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.state: dict = {"indextargets": [], "downloads": []}
        self._save()

    def _save(self) -> None:
        (self.bin_dir / "state.json").write_text(json.dumps(self.state))

    def index_targets(self, *rows: str) -> None:
        """Rows of SITE|RELEASE|ORIGIN|COMPONENT, as the system's apt would list them."""
        keys = ("SITE", "RELEASE", "ORIGIN", "COMPONENT")
        self.state["indextargets"] = [dict(zip(keys, row.split("|"), strict=True)) for row in rows]
        self._save()

    def serve(self, *downloads: bytes) -> None:
        """The content of each `apt-get download` in turn."""
        self.state["downloads"] = [d.hex() for d in downloads]
        self._save()

    def fail(self, status: int) -> None:
        self.state["exit"] = status
        self._save()

    def calls(self, command: str) -> list[list[str]]:
        log = self.bin_dir / "calls.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [args for args in map(json.loads, lines) if command in args]


@pytest.fixture
def fake_apt(tmp_path, monkeypatch) -> FakeApt:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(f"#!{sys.executable}\n{FAKE_APT_GET}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.delenv("PVFRONT_MIRROR", raising=False)
    monkeypatch.delenv("PVFRONT_SECURITY_MIRROR", raising=False)
    monkeypatch.setattr(apt, "_os_codename", lambda: "frobnitz")  # the host's release
    monkeypatch.setattr(apt, "RETRY_DELAY_SECONDS", 0.0)
    return FakeApt(bin_dir)


# ------------------------------------------------------------------ the mirror


ARCHIVE = "http://deb.example/debian"
SECURITY = "http://security.example/debian-security"


def test_the_archive_and_security_sites_are_the_debian_main_indexes_the_system_uses(fake_apt):
    fake_apt.index_targets(
        f"{ARCHIVE}/|frobnitz|Debian|main",  # a trailing slash as sources.list may have it
        f"{ARCHIVE}|frobnitz|Debian|main",
        f"{ARCHIVE}|frobnitz-updates|Debian|main",
        "http://backports.example/debian|frobnitz-backports|Debian|main",
        f"{SECURITY}|frobnitz-security|Debian|main",
        "http://apt.example/tools|stable|Example Tools|main",
    )
    assert system_mirror() == Mirror(ARCHIVE, SECURITY)
    assert fake_apt.calls("indextargets")


def test_only_the_main_component_names_the_archive(fake_apt):
    fake_apt.index_targets(
        "http://contrib.example/debian|frobnitz|Debian|contrib",
        f"{ARCHIVE}|frobnitz|Debian|main",
    )
    assert system_mirror().archive == ARCHIVE


def test_a_third_party_repository_named_after_the_release_is_not_the_debian_archive(fake_apt):
    """Some vendors publish `<codename> main` too; Debian's own indexes win over them."""
    fake_apt.index_targets(
        "http://apt.example/vendor|frobnitz|Example Vendor|main",
        f"{ARCHIVE}|frobnitz|Debian|main",
    )
    assert system_mirror() == Mirror(ARCHIVE, None)


def test_a_mirror_that_does_not_say_debian_is_taken_by_the_release_it_serves(fake_apt):
    """A local mirror whose Release file names another origin still serves the host's release."""
    fake_apt.index_targets(
        "http://mirror.example/debian|frobnitz|Local Mirror|main",
        "http://mirror.example/debian-security|frobnitz-security|Local Mirror|main",
        "http://apt.example/tools|stable|Example Tools|main",
    )
    assert system_mirror() == Mirror(
        "http://mirror.example/debian", "http://mirror.example/debian-security"
    )


def test_a_system_without_a_debian_archive_is_one_setup_error(fake_apt):
    fake_apt.index_targets(
        "http://apt.example/tools|stable|Example Tools|main",
        f"{SECURITY}|frobnitz-security|Debian|main",
    )
    with pytest.raises(SetupError, match=r"no Debian archive .* set PVFRONT_MIRROR"):
        system_mirror()


def test_an_apt_that_cannot_list_its_indexes_is_one_setup_error(fake_apt):
    fake_apt.fail(100)
    with pytest.raises(SetupError, match="cannot read the system's apt configuration"):
        system_mirror()


def test_an_explicit_mirror_overrides_the_system(fake_apt, monkeypatch):
    fake_apt.index_targets(f"{ARCHIVE}|frobnitz|Debian|main")
    monkeypatch.setenv("PVFRONT_MIRROR", "http://local.example/debian/")
    assert system_mirror() == Mirror("http://local.example/debian", None)
    monkeypatch.setenv("PVFRONT_SECURITY_MIRROR", SECURITY)
    assert system_mirror() == Mirror("http://local.example/debian", SECURITY)
    assert fake_apt.calls("indextargets") == []


def test_security_suites_come_from_the_security_site_and_the_rest_from_the_archive():
    mirror = Mirror(ARCHIVE, SECURITY)
    assert mirror.site_for("frobnitz") == ARCHIVE
    assert mirror.site_for("frobnitz-backports") == ARCHIVE
    assert mirror.site_for("frobnitz-security") == SECURITY
    assert Mirror(ARCHIVE, None).site_for("frobnitz-security") is None


# ------------------------------------------------------------------ downloads

GOOD = b"the package the index describes"
CORRUPT = b"the package, damaged on the way"


def _package() -> PackageVersion:
    fields = {
        "Filename": "pool/main/p/pkg/pkg_1.0-1_amd64.deb",
        "SHA256": hashlib.sha256(GOOD).hexdigest(),
    }
    return PackageVersion("pkg", "1.0-1", "amd64", fields)


def _index(tmp_path: Path) -> AptIndex:
    return AptIndex(ARCHIVE, "frobnitz", "amd64", tmp_path / "state")


def test_a_download_whose_sha256_does_not_match_the_index_is_fetched_again(fake_apt, tmp_path):
    fake_apt.serve(CORRUPT, GOOD)
    got = _index(tmp_path).download(_package(), tmp_path / "debs", quiet=True)
    assert got == tmp_path / "debs" / "pkg_1.0-1_amd64.deb"
    assert got.read_bytes() == GOOD
    assert len(fake_apt.calls("download")) == 2
    assert [p.name for p in (tmp_path / "debs").iterdir()] == [got.name]  # no leftovers


def test_a_download_that_never_matches_fails_naming_the_mismatch_and_keeps_nothing(
    fake_apt, tmp_path
):
    fake_apt.serve(*[CORRUPT] * apt.RETRIES)
    with pytest.raises(SetupError, match="SHA-256 does not match the index"):
        _index(tmp_path).download(_package(), tmp_path / "debs", quiet=True)
    assert len(fake_apt.calls("download")) == apt.RETRIES
    assert list((tmp_path / "debs").iterdir()) == []


def test_a_cached_deb_is_reused_only_while_it_matches_the_index(fake_apt, tmp_path):
    debs = tmp_path / "debs"
    debs.mkdir()
    cached = debs / "pkg_1.0-1_amd64.deb"
    cached.write_bytes(GOOD)
    assert _index(tmp_path).download(_package(), debs, quiet=True) == cached
    assert fake_apt.calls("download") == []
    cached.write_bytes(CORRUPT)
    fake_apt.serve(GOOD)
    assert _index(tmp_path).download(_package(), debs, quiet=True).read_bytes() == GOOD
    assert len(fake_apt.calls("download")) == 1


def test_a_failed_update_is_reported_by_the_cause_apt_prints_under_its_err_line():
    # apt-get update's output on a machine without a network, with a signed-by keyring:
    # the closing E: line only says the Release file is missing.
    stdout = (
        "Ign:1 http://127.0.0.1:9/debian trixie InRelease\n"
        "Err:2 http://127.0.0.1:9/debian trixie Release\n"
        "  Cannot initiate the connection to 127.0.0.1:9 (127.0.0.1). "
        "- connect (101: Network is unreachable)\n"
        "Reading package lists...\n"
    )
    stderr = (
        "E: The repository 'http://127.0.0.1:9/debian trixie Release' "
        "does not have a Release file.\n"
    )
    assert apt._failure_lines(stdout + stderr) == [
        "http://127.0.0.1:9/debian trixie Release: Cannot initiate the connection to "
        "127.0.0.1:9 (127.0.0.1). - connect (101: Network is unreachable)"
    ]


# ------------------------------------------------------------------ what a download says


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (68_157_440, "65.0 MiB"),
        (7 * 2**30 // 2, "3.5 GiB"),
        (None, "size unknown"),
    ],
)
def test_a_size_reads_in_the_largest_binary_unit_it_reaches(size, text):
    assert apt.size_text(size) == text


def test_a_download_says_what_it_fetches_and_how_big_it_is_or_that_it_has_it():
    fields = {"Filename": "pool/main/p/pkg/pkg_1.0-1_i386.deb", "Size": "1536"}
    package = PackageVersion("pkg", "1:1.0-1", "i386", fields)
    assert apt.download_line(package, cached=False) == "downloading pkg:i386 1:1.0-1 (1.5 KiB)"
    assert apt.download_line(package, cached=True) == "pkg:i386 1:1.0-1: in the cache"


def test_the_deb_an_earlier_download_left_counts_only_while_it_matches_the_index(tmp_path):
    assert apt.cached_deb(_package(), tmp_path) is None
    deb = tmp_path / "pkg_1.0-1_amd64.deb"
    deb.write_bytes(GOOD)
    assert apt.cached_deb(_package(), tmp_path) == deb
    deb.write_bytes(CORRUPT)
    assert apt.cached_deb(_package(), tmp_path) is None


def test_a_download_waits_while_the_index_is_being_refreshed(fake_apt, tmp_path):
    import threading

    from pvfront.locks import locked

    index = _index(tmp_path)
    fake_apt.serve(GOOD)
    got: list[Path] = []
    with locked(index.state_dir.with_suffix(".lock"), "an update", print):
        reader = threading.Thread(
            target=lambda: got.append(index.download(_package(), tmp_path / "debs", True))
        )
        reader.start()
        reader.join(timeout=1.0)
        assert reader.is_alive() and fake_apt.calls("download") == []
    reader.join(timeout=30)
    assert [p.read_bytes() for p in got] == [GOOD]
