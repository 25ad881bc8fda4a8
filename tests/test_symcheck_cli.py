"""`pvfront symcheck`: exit 0 when everything would load, 1 when not, 2 for bad input."""

from __future__ import annotations

import argparse
import json

import pytest

from pvfront.cli import symcheck
from pvfront.errors import PvfrontError
from symcheck_support import intree, tree


def run(*argv: str) -> int:
    """What pvfront's main does for this subcommand: handler, or one error line and its code."""
    parser = argparse.ArgumentParser(prog="pvfront")
    symcheck.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["symcheck", *argv])
    try:
        return args.handler(args)
    except PvfrontError as exc:
        print(f"pvfront: error: {exc}")
        return exc.exit_code


def test_module_that_loads_exits_0(capsys):
    assert run(str(intree("deb12-amd64", "uas")), "--target", "deb12-amd64") == 0
    assert "uas" in capsys.readouterr().out


def test_module_that_would_not_load_exits_1(capsys, tmp_path):
    junit = tmp_path / "j.xml"
    code = run(
        str(intree("deb11-amd64", "uas")),
        "--kernel",
        str(tree("deb12-amd64").headers_dir),
        "--json",
        "--junit",
        str(junit),
    )
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["reports"][0]["modules"][0]["first_error"]["check"] == "module_layout"
    assert junit.is_file()


@pytest.mark.parametrize("make_input", ["missing", "garbage", "symvers"])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, make_input):
    module = str(intree("deb12-amd64", "uas"))
    if make_input == "missing":
        argv = [str(tmp_path / "nope.ko"), "--target", "deb12-amd64"]
    elif make_input == "garbage":
        (tmp_path / "g.ko").write_bytes(b"\x7fELF" + b"\xff" * 10)
        argv = [str(tmp_path / "g.ko"), "--target", "deb12-amd64"]
    else:
        (tmp_path / "Module.symvers").write_text("0x1\tfoo\n")
        argv = [module, "--kernel", str(tmp_path / "Module.symvers")]
    assert run(*argv) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("pvfront: error: ")


def test_matrix_shows_each_cross_kernel_failure_for_what_it_is(capsys):
    assert run("--matrix", "--intree", "virtio_blk", "--json") == 0
    cells = {(c["built_for"], c["checked_against"]): c for c in json.loads(capsys.readouterr().out)}
    assert cells[("deb12-amd64", "deb12-amd64")]["loads"]
    assert "Invalid architecture in ELF header: 3" in cells[("deb12-686", "deb12-amd64")]["reason"]
    for other in ("deb12-rt-amd64", "deb12-cloud-amd64", "deb11-amd64"):
        assert "module_layout" in cells[("deb12-amd64", other)]["reason"]
    assert "struct module size" in cells[("deb12-amd64", "deb12bpo-amd64")]["reason"]
