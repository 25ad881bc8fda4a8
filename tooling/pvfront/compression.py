"""The one decompressor for kernel modules and kernel payloads: xz, gzip, zstd and lz4.

Each format has one implementation here; the callers only decide which format they hold
(elf.py by a module's suffix and magic number, qemu.py by a bzImage payload's magic number)
and turn `DecompressError` into their own one-line error naming the file.

Every stream must be complete: a truncated stream is an error, not a shorter result (the
stdlib's incremental decompressors return what they have and say nothing). Data after the end
of the first stream is ignored, as the kernel's own decompressors do: a bzImage payload ends
with the uncompressed size (4 bytes) after the stream.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import zlib

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"  # lz4 -l, what the kernel build writes

#: Magic number -> format, longest first where one could prefix another.
MAGIC = {
    XZ_MAGIC: "xz",
    ZSTD_MAGIC: "zstd",
    LZ4_LEGACY_MAGIC: "lz4",
    GZIP_MAGIC: "gzip",
}
#: The stdlib reads these; the others need a command (or the optional zstandard package).
FORMATS = ("xz", "gzip", "zstd", "lz4")
_MAX_OUTPUT = 1 << 30


class DecompressError(OSError):
    """The data is not a complete stream of its format, or its tool is missing. An OSError,
    as gzip.BadGzipFile is."""


def sniff(data: bytes) -> str | None:
    """The format of `data` by its magic number; None when it is none of FORMATS."""
    return next((kind for magic, kind in MAGIC.items() if data.startswith(magic)), None)


def _xz(data: bytes) -> bytes:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = decompressor.decompress(data, max_length=_MAX_OUTPUT)
    except lzma.LZMAError as exc:
        raise DecompressError(f"corrupt xz data: {exc}") from None
    if not decompressor.eof:
        raise DecompressError("truncated xz data: the stream has no end")
    return out


def _gzip(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, _MAX_OUTPUT)
    except zlib.error as exc:
        raise DecompressError(f"corrupt gzip data: {exc}") from None
    if not decompressor.eof:
        raise DecompressError("truncated gzip data: the stream has no end")
    return out


def _command(kind: str, data: bytes) -> bytes:
    if shutil.which(kind) is None:
        raise DecompressError(
            f"{kind}-compressed, and no {kind} command is installed (Debian package: {kind})"
        )
    proc = subprocess.run([kind, "-dcq"], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DecompressError(
            f"corrupt or truncated {kind} data: {lines[-1] if lines else f'{kind} -d failed'}"
        )
    return proc.stdout


def _zstd(data: bytes) -> bytes:
    try:
        import zstandard  # optional: the zstd command does the same job
    except ImportError:
        return _command("zstd", data)
    try:
        inflated: bytes = zstandard.ZstdDecompressor().decompress(data, max_output_size=_MAX_OUTPUT)
        return inflated
    except zstandard.ZstdError as exc:
        raise DecompressError(f"corrupt zstd data: {exc}") from None


def _lz4(data: bytes) -> bytes:
    return _command("lz4", data)


_DECOMPRESSORS = {"xz": _xz, "gzip": _gzip, "zstd": _zstd, "lz4": _lz4}


def decompress(kind: str, data: bytes) -> bytes:
    """The content of a `kind` stream (one of FORMATS); DecompressError when it cannot be had."""
    return _DECOMPRESSORS[kind](data)
