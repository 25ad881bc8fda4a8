"""Choosing the newest kernel needs Debian's own version order; dpkg is the oracle."""

import subprocess

import pytest

from pvfront.debversion import compare, newest

PAIRS = [
    ("6.1.192-2", "6.1.176-1"),
    ("6.12.95-1~bpo12+1", "6.12.95-1"),
    ("1:1.30.1-6+b3", "1.35.0-4"),
    ("1.0~rc1", "1.0"),
    ("1.0a", "1.0"),
    ("1.0", "1.0-0"),
    ("2.0-1", "10.0-1"),
    ("1.0~~", "1.0~"),
    ("6.1.180-1~deb11u1", "6.1.180-1"),
    ("5.10.262-1", "5.10.223-1"),
    ("1.2.3+deb12u1", "1.2.3"),
    ("0:1.0", "1.0"),
]


def dpkg_order(a: str, b: str) -> int:
    for relation, result in (("lt", -1), ("eq", 0), ("gt", 1)):
        if subprocess.run(["dpkg", "--compare-versions", a, relation, b]).returncode == 0:
            return result
    raise AssertionError("dpkg gave no order")


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_order_matches_dpkg(a, b):
    assert compare(a, b) == dpkg_order(a, b)
    assert compare(b, a) == -dpkg_order(a, b)


def test_newest_picks_the_security_update_over_the_point_release():
    assert newest(["6.1.176-1", "6.1.192-2", "6.1.192-1"]) == "6.1.192-2"


def test_a_malformed_version_is_rejected():
    with pytest.raises(ValueError, match="not a Debian version"):
        compare("not a version", "1.0")
