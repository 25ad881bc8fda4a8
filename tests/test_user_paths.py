"""A path the user names (an output file, the cache, a declaration, a package the archive
serves) that cannot be used is one `pvfront: error:` line naming it, and exit 2, through the
real `pvfront.cli.main`; Ctrl-C is 130 under the CLI and under invoke alike."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pvfront import commands, provision
from pvfront.apt import Mirror
from pvfront.cli import main
from pvfront.errors import EXIT_INTERRUPTED, EXIT_SETUP
from pvfront.metadata import load_family
from pvfront.workspace import Workspace
from symcheck_support import generic, intree, tree

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys, *, after_progress: bool = False) -> str:
    """The one error line on stderr, without its `pvfront: error: ` prefix; with
    after_progress, the progress lines of a fetch may come before it."""
    lines = capsys.readouterr().err.splitlines(keepends=True)
    if after_progress:
        assert not any(line.startswith("pvfront:") for line in lines[:-1]), lines
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("pvfront: error: "), lines
    assert lines[0].endswith("\n") and "Traceback" not in lines[0]
    return lines[0].removeprefix("pvfront: error: ").rstrip("\n")


@pytest.fixture
def repo_copy(tmp_path, monkeypatch):
    """A copy of the repository's declarations (targets.toml, kmod/) as $PVFRONT_ROOT."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "targets.toml", root / "targets.toml")
    shutil.copytree(REPO / "kmod", root / "kmod")
    monkeypatch.setenv("PVFRONT_ROOT", str(root))
    return root


def test_junit_into_a_directory_is_one_line_naming_it(capsys, tmp_path):
    target_id = generic()
    module, headers = intree(target_id, "uas"), tree(target_id).headers_dir
    code = main(["symcheck", str(module), "--kernel", str(headers), "--junit", str(tmp_path)])
    assert code == EXIT_SETUP
    assert one_error_line(capsys).startswith(f"{tmp_path}: ")


@pytest.mark.parametrize("report", ["junit", "kcidb"])
def test_a_report_of_the_test_task_into_a_directory_is_one_line_naming_it(capsys, tmp_path, report):
    import tasks

    with pytest.raises(tasks.Exit) as exited:
        tasks.test.body(None, fast=True, **{report: str(tmp_path)})
    assert exited.value.code == EXIT_SETUP
    assert one_error_line(capsys).startswith(f"{tmp_path}: ")


def test_a_cache_that_is_a_file_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a directory\n")
    monkeypatch.setenv("PVFRONT_CACHE", str(cache))
    assert main(["targets", "fetch"]) == EXIT_SETUP
    assert one_error_line(capsys).startswith(f"{cache}: not a directory")


@pytest.mark.parametrize("argv", [["targets", "fetch"], ["targets", "list"], ["build"]])
def test_a_cache_under_a_file_is_one_line_naming_both_before_anything_is_done(
    capsys, tmp_path, monkeypatch, argv
):
    # A cache that cannot be made fails even for root, who may write anywhere else.
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"
    monkeypatch.setenv("PVFRONT_CACHE", str(cache))
    assert main(argv) == EXIT_SETUP
    line = one_error_line(capsys)
    assert line.startswith(f"{cache}: ") and f"{tmp_path / 'file'} is not a directory" in line


def test_a_cache_under_a_file_is_the_same_line_under_invoke(capsys, tmp_path, monkeypatch):
    import tasks

    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cache"
    monkeypatch.setenv("PVFRONT_CACHE", str(cache))
    with pytest.raises(tasks.Exit) as exited:
        tasks.targets.body(None, list=True)
    assert exited.value.code == EXIT_SETUP
    assert one_error_line(capsys).startswith(f"{cache}: the cache cannot be made: ")


def test_a_full_cache_is_one_line_naming_the_cache(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PVFRONT_CACHE", str(cache))

    def disk_full(*args, **kwargs):  # as a write() into the cache fails: no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(provision, "fetch", disk_full)
    assert main(["targets", "fetch"]) == EXIT_SETUP
    line = one_error_line(capsys)
    assert line.startswith(os.strerror(errno.ENOSPC)) and str(cache) in line, line


def _declaration(**module_fields: str) -> str:
    """A declaration of one module, kmod/'s pvf_ring, with these fields (TOML values) changed."""
    fields = {"name": '"pvf_ring"', "sources": '["pvf_ring.c"]', "description": '"ring"'}
    fields.update(module_fields)
    module = "".join(f"{key} = {value}\n" for key, value in fields.items())
    return (
        '[family]\nname = "pvfront"\nversion = "0.1.0"\nreleased = 2026-01-01\nlicense = "GPL"\n'
        'author = "us"\nmaintainer = "Us <us@example.org>"\n\n'
        f"[[module]]\n{module}"
    )


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("transport", '"yes"', "'transport' must be true or false"),
        ("sources", '"pvf_ring.c"', "'sources' must be a list of strings"),
        ("version", "1", "'version' must be a non-empty string"),
        ("imports", '"PVFRONT"', "'imports' must be a list of strings"),
    ],
)
def test_a_declaration_field_of_the_wrong_type_is_one_line_naming_the_file(
    capsys, repo_copy, field, value, words
):
    declaration = repo_copy / "kmod" / "modules.toml"
    declaration.write_text(_declaration())
    assert load_family(declaration).modules[0].name == "pvf_ring"  # valid as the base
    declaration.write_text(_declaration(**{field: value}))
    assert main(["build"]) == EXIT_SETUP
    line = one_error_line(capsys)
    assert line.startswith(f"{declaration}: ") and words in line, line


def test_a_declared_module_that_is_not_a_table_is_one_line_naming_the_file(capsys, repo_copy):
    declaration = repo_copy / "kmod" / "modules.toml"
    declaration.write_text('module = ["pvf_ring"]\n' + _declaration().replace("[[module]]", "[x]"))
    assert main(["build"]) == EXIT_SETUP
    assert one_error_line(capsys).startswith(f"{declaration}: ")


def test_a_headers_package_without_a_makefile_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    from test_provision import NEWER, TARGET, Archive, FakeView

    root = tmp_path / "repo"
    root.mkdir()
    (root / "targets.toml").write_text(
        textwrap.dedent(
            f"""\
            [[target]]
            id = "{TARGET.id}"
            suite = "{TARGET.suite}"
            arch = "{TARGET.arch}"
            flavour = "{TARGET.flavour}"
            qemu = "{TARGET.qemu}"
            machine = "{TARGET.machine}"
            """
        )
    )
    monkeypatch.setenv("PVFRONT_ROOT", str(root))
    monkeypatch.setenv("PVFRONT_CACHE", str(tmp_path / "cache"))
    archive = Archive()
    archive.add("busybox-static", "1.0-1", **{"bin/busybox": ""})
    release = archive.add_kernel(NEWER)
    for (name, _), files in archive.files.items():
        if name == f"linux-headers-{release}":
            del files[f"usr/src/linux-headers-{release}/Makefile"]
    ws = Workspace.discover()
    view = FakeView(Mirror("http://deb.example/debian", None), ws.cache / "apt", archive)
    monkeypatch.setattr(provision, "apt_view", lambda ws: view)
    assert main(["targets", "fetch", "--target", TARGET.id]) == EXIT_SETUP
    line = one_error_line(capsys, after_progress=True)
    looked_at = f"{TARGET.id}: {provision.target_dir(ws, TARGET)}/"
    assert line.startswith(looked_at) and f"linux-headers-{release}/Makefile: " in line, line


def test_ctrl_c_is_130_under_the_cli(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "setup", interrupted)
    assert main(["setup", "--check"]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "pvfront: interrupted\n"


def test_ctrl_c_is_130_under_invoke(tmp_path):
    (tmp_path / "waiting.py").write_text(
        textwrap.dedent(
            f"""\
            import signal, sys, time
            sys.path.insert(0, {str(REPO)!r})
            # As at a terminal: a CI job started in the background inherits SIGINT ignored.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            from invoke import task
            from tasks import _shell

            @task
            @_shell
            def wait(c):
                print("waiting", flush=True)
                time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "--search-root", str(tmp_path), "-c", "waiting", "wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED
    assert err == "pvfront: interrupted\n"
