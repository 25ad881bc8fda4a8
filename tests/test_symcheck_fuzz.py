"""Mutated module files: the reader either summarises them or names the file and the problem;
it never raises anything else, and the checks never crash on what it returns."""

from __future__ import annotations

import functools
import lzma

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvfront.elf import ModuleFormatError, decompress, parse_module, read_bytes
from pvfront.symcheck import check_module
from symcheck_support import generic, intree, kernel


@functools.cache
def _seed() -> bytes:
    """A real module's ELF image (decompressed when Debian ships it compressed)."""
    return read_bytes(intree(generic(), "virtio_blk"))


mutations = st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=16)


@settings(
    max_examples=200, deadline=1000, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(edits=mutations, cut=st.one_of(st.none(), st.integers(min_value=0)), compress=st.booleans())
def test_mutated_modules_never_escape_as_tracebacks(edits, cut, compress):
    data = bytearray(_seed())
    for position, value in edits:
        # Aim half the edits at the headers, where a byte matters most.
        data[position % (len(data) if position % 2 else 256)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    raw = bytes(data)
    if compress:
        raw = lzma.compress(raw)[: len(raw)]
    try:
        info = parse_module(decompress(raw, "fuzz.ko"), "fuzz.ko")
    except ModuleFormatError as exc:
        assert str(exc).startswith("fuzz.ko: ")
        return
    check_module(info, kernel(generic()))
