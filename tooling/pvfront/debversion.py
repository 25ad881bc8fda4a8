"""Debian package version ordering (Debian Policy §5.6.12), for picking the newest kernel."""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable

_VERSION = re.compile(r"^(?:(\d+):)?([0-9][A-Za-z0-9.+~-]*?)(?:-([A-Za-z0-9.+~]+))?$")


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _split_run(text: str, digits: bool) -> tuple[str, str]:
    """Split text into its leading run of ASCII digits (or of non-digits) and the rest."""
    end = 0
    while end < len(text) and (text[end] in string.digits) == digits:
        end += 1
    return text[:end], text[end:]


def _compare_part(a: str, b: str) -> int:
    """Compare an upstream version or a revision: alternating non-digit and digit runs."""
    while a or b:
        a_text, a = _split_run(a, digits=False)
        b_text, b = _split_run(b, digits=False)
        for x, y in zip(a_text + "\0" * len(b_text), b_text + "\0" * len(a_text), strict=True):
            ox = 0 if x == "\0" else _order(x)
            oy = 0 if y == "\0" else _order(y)
            if ox != oy:
                return -1 if ox < oy else 1
        a_num, a = _split_run(a, digits=True)
        b_num, b = _split_run(b, digits=True)
        if int(a_num or 0) != int(b_num or 0):
            return -1 if int(a_num or 0) < int(b_num or 0) else 1
    return 0


def split(version: str) -> tuple[int, str, str]:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not a Debian version: {version!r}")
    epoch, upstream, revision = match.groups()
    return int(epoch or 0), upstream, revision or ""


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions a and b."""
    a_epoch, a_up, a_rev = split(a)
    b_epoch, b_up, b_rev = split(b)
    if a_epoch != b_epoch:
        return -1 if a_epoch < b_epoch else 1
    return _compare_part(a_up, b_up) or _compare_part(a_rev, b_rev)


def newest(versions: Iterable[str]) -> str:
    return max(versions, key=functools.cmp_to_key(compare))
