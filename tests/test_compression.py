"""One decompressor for modules and kernel payloads: every format round-trips, and a corrupt or
truncated compressed module is one error line naming the file, for the initramfs writer, the
symbol checker and the `pvfront symcheck` command alike."""

import gzip
import lzma
import os
import shutil
import subprocess

import pytest

from pvfront import compression, initramfs, qemu
from pvfront.cli import main
from pvfront.elf import ModuleFormatError, read_bytes
from pvfront.kerneltree import KernelTree
from pvfront.targets import load_targets
from pvfront.workspace import Workspace

ELF = b"\x7fELF" + bytes(range(256)) * 64  # compressible, and starts like a module


def _zstd_available():
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return shutil.which("zstd") is not None
    return True


def _with_command(tool, data, *flags):
    return subprocess.run([tool, *flags, "-c"], input=data, capture_output=True, check=True).stdout


needs_zstd = pytest.mark.skipif(
    not _zstd_available(), reason="neither the zstandard package nor the zstd command"
)
needs_lz4 = pytest.mark.skipif(shutil.which("lz4") is None, reason="no lz4 command")

# suffix -> how the kernel's build (and kmod's tools) compress a module
MODULE_FORMATS = [
    pytest.param(".ko.xz", lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), id="xz"),
    pytest.param(".ko.gz", lambda d: gzip.compress(d, mtime=0), id="gz"),
    pytest.param(".ko.zst", lambda d: _with_command("zstd", d, "-q"), id="zst", marks=needs_zstd),
]


def _damaged(packed):
    """Two ways a download or a disk breaks a file: cut short, or bytes overwritten."""
    middle = len(packed) // 2
    return {
        "truncated": packed[:middle],
        "corrupt": packed[:middle] + bytes(64) + packed[middle + 64 :],
    }


@pytest.mark.parametrize(("suffix", "pack"), MODULE_FORMATS)
def test_a_compressed_module_reads_back_as_its_elf_image(tmp_path, suffix, pack):
    path = tmp_path / f"virtio_demo{suffix}"
    path.write_bytes(pack(ELF))
    assert read_bytes(path) == ELF


@pytest.mark.parametrize(("suffix", "pack"), MODULE_FORMATS)
def test_a_damaged_compressed_module_is_one_error_line_naming_the_file(tmp_path, suffix, pack):
    for damage, data in _damaged(pack(ELF)).items():
        path = tmp_path / f"{damage}{suffix}"
        path.write_bytes(data)
        with pytest.raises(ModuleFormatError) as caught:
            read_bytes(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: "), message
        assert "\n" not in message
        assert "corrupt" in message or "truncated" in message, message


@pytest.mark.parametrize(("suffix", "pack"), MODULE_FORMATS)
def test_a_module_named_compressed_that_is_not_is_an_error(tmp_path, suffix, pack):
    path = tmp_path / f"plain{suffix}"
    path.write_bytes(ELF)
    with pytest.raises(ModuleFormatError, match=f"^{path}: not .* data, as its name says"):
        read_bytes(path)


def _fake_tree(tmp_path, relpath, data):
    """A provisioned-looking tree whose one in-tree module is `relpath`, already indexed."""
    target = load_targets(Workspace.discover().targets_file).targets[0]
    tree = KernelTree(target, tmp_path / "root", "0.0-test", {}, "headers")
    module = tree.modules_dir / relpath
    module.parent.mkdir(parents=True)
    module.write_bytes(data)
    (tree.modules_dir / "modules.order").write_text(f"{relpath}\n")
    index_cache = tmp_path / "index"
    index_cache.mkdir()
    cached = index_cache / f"{target.id}-{tree.release}.modules.dep"
    cached.write_text(f"{relpath}:\n")
    os.utime(cached, (2**31, 2**31))  # newer than modules.order: depmod is not run
    return tree, index_cache, module


@pytest.mark.parametrize(("suffix", "pack"), MODULE_FORMATS)
def test_the_initramfs_writer_names_a_damaged_in_tree_module(tmp_path, suffix, pack):
    data = _damaged(pack(ELF))["truncated"]
    tree, index_cache, module = _fake_tree(tmp_path, f"kernel/virtio_demo{suffix}", data)
    spec = initramfs.ImageSpec(in_tree_modules=["virtio_demo"])
    with pytest.raises(ModuleFormatError) as caught:
        initramfs.build(tree, spec, tmp_path / "initrd.img", index_cache)
    message = str(caught.value)
    assert message.startswith(f"{module}: ") and "\n" not in message, message


@pytest.mark.parametrize(("suffix", "pack"), MODULE_FORMATS)
def test_symcheck_names_a_damaged_module_in_one_line_and_exits_2(tmp_path, capsys, suffix, pack):
    path = tmp_path / f"virtio_demo{suffix}"
    path.write_bytes(_damaged(pack(ELF))["corrupt"])
    assert main(["symcheck", str(path), "--kernel", str(tmp_path / "Module.symvers")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pvfront: error: {path}: "), err


# The formats a bzImage payload can have, as the kernel build writes them: the stream, then
# the uncompressed size in 4 bytes (which the gzip trailer already holds).
PAYLOAD_FORMATS = [
    pytest.param("xz", lambda d: lzma.compress(d, check=lzma.CHECK_CRC32) + b"SIZE", id="xz"),
    pytest.param("gzip", lambda d: gzip.compress(d, mtime=0), id="gzip"),
    pytest.param(
        "zstd", lambda d: _with_command("zstd", d, "-q") + b"SIZE", id="zstd", marks=needs_zstd
    ),
    pytest.param(
        "lz4", lambda d: _with_command("lz4", d, "-l", "-q") + b"SIZE", id="lz4", marks=needs_lz4
    ),
]


@pytest.mark.parametrize(("kind", "pack"), PAYLOAD_FORMATS)
def test_a_kernel_payload_decompresses_by_its_magic_number(kind, pack):
    payload = pack(ELF)
    assert compression.sniff(payload) == kind
    assert qemu._decompress_payload(payload) == ELF


@pytest.mark.parametrize(("kind", "pack"), PAYLOAD_FORMATS)
def test_a_truncated_kernel_payload_is_an_error_not_a_shorter_kernel(kind, pack):
    with pytest.raises(compression.DecompressError, match=f"{kind} data"):
        qemu._decompress_payload(pack(ELF)[:-200])


def test_a_payload_in_a_format_pvfront_does_not_read_is_nothing():
    assert qemu._decompress_payload(b"BZh91AY&SY" + bytes(100)) == b""
