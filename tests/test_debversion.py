"""Choosing the newest kernel needs Debian's own version order; dpkg is the oracle."""

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvfront.debversion import compare, newest, split

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
        proc = subprocess.run(
            ["dpkg", "--compare-versions", a, relation, b], capture_output=True, text=True
        )
        assert proc.stderr == "", proc.stderr  # dpkg takes both as well-formed versions
        if proc.returncode == 0:
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


# Debian versions from a small alphabet, so that generated pairs often share a prefix and differ
# where the ordering rules are subtle: `~` before the end, letters before other symbols, digit
# runs by value (leading zeros), a missing revision against `-0`, epochs.
_CHARS = "0129aAz.+~"
_revision = st.text(alphabet=_CHARS, min_size=1, max_size=4)


@st.composite
def debian_versions(draw) -> str:
    epoch = draw(st.sampled_from(["", "0:", "1:", "2:"]))
    revision = draw(st.none() | _revision)
    # A hyphen may stand in the upstream version only when a revision follows the last one.
    chars = _CHARS + ("-" if revision is not None else "")
    upstream = draw(st.sampled_from("0129")) + draw(st.text(alphabet=chars, max_size=6))
    return epoch + upstream + ("" if revision is None else f"-{revision}")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(a=debian_versions(), b=debian_versions())
def test_any_two_versions_are_ordered_as_dpkg_orders_them(a, b):
    for version in (a, b):
        split(version)  # a well-formed version to the parser too: it raises ValueError if not
    assert compare(a, b) == dpkg_order(a, b), (a, b)
    assert compare(b, a) == -compare(a, b)
