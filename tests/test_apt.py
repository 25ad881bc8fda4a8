"""The private apt view: the mirror comes from the system's apt, never from the code."""

import subprocess

from pvfront.apt import Mirror, PackageVersion, parse_stanzas, system_mirror

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


def test_the_mirror_is_the_one_the_system_apt_uses(monkeypatch):
    monkeypatch.delenv("PVFRONT_MIRROR", raising=False)
    mirror = system_mirror()
    sites = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(SITE)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert mirror.archive in sites
    assert mirror.security is None or mirror.security in sites
    assert mirror.site_for("bookworm-backports") == mirror.archive
    assert mirror.site_for("bullseye-security") == mirror.security


def test_an_explicit_mirror_overrides_the_system(monkeypatch):
    monkeypatch.setenv("PVFRONT_MIRROR", "http://127.0.0.1:9/debian/")
    monkeypatch.delenv("PVFRONT_SECURITY_MIRROR", raising=False)
    assert system_mirror() == Mirror("http://127.0.0.1:9/debian", None)
