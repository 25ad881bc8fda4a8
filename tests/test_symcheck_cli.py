"""`pvfront symcheck` through the real `pvfront.cli.main`: exit 0 when everything would load,
1 when not, 2 for bad input, which is one `pvfront: error:` line on stderr and no traceback."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest
from kcidb_io import schema as kcidb_schema

from pvfront.cli import main
from symcheck_support import (
    TARGET_IDS,
    generic,
    ids_where,
    intree,
    layout_crcs_differ,
    provisioned,
    same_suite_pair,
    same_suite_pairs,
    tree,
)


def test_a_module_that_loads_exits_0(capsys):
    target_id = generic()
    assert main(["symcheck", str(intree(target_id, "uas")), "--target", target_id]) == 0
    out, err = capsys.readouterr()
    assert any(line.split()[:2] == ["uas", "loads"] for line in out.splitlines()), out
    assert err == ""


def test_a_module_that_would_not_load_exits_1_and_says_why_in_json_junit_and_kcidb(
    capsys, tmp_path
):
    built, against = same_suite_pair("amd64", "rt-amd64", where=layout_crcs_differ)
    junit, kcidb = tmp_path / "j.xml", tmp_path / "kcidb.json"
    code = main(
        [
            "symcheck",
            str(intree(built, "virtio_blk")),
            "--kernel",
            str(tree(against).headers_dir),
            "--json",
            "--junit",
            str(junit),
            "--kcidb",
            str(kcidb),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, err
    assert json.loads(out)["reports"][0]["modules"][0]["first_error"]["check"] == "module_layout"
    failures = ElementTree.parse(junit).getroot().findall(".//failure")
    assert [f.get("type") for f in failures] == ["module_layout"]
    report = json.loads(kcidb.read_text())
    kcidb_schema.V4_5.validate_exactly(report)
    (test,) = report["tests"]
    assert (test["path"], test["status"]) == ("pvfront.symcheck.virtio_blk", "FAIL")
    assert "module_layout" in test["log_excerpt"]
    (build,) = report["builds"]
    assert build["architecture"] == "x86_64" and build["id"] == test["build_id"]
    assert err == ""


def _bad_input(kind: str, tmp_path) -> tuple[list[str], str]:
    """The arguments after `symcheck` for one kind of bad input, and a word its error names."""
    target_id = generic()
    if kind == "missing module":
        return [str(tmp_path / "nope.ko"), "--target", target_id], "nope.ko"
    if kind == "not an ELF module":
        (tmp_path / "g.ko").write_bytes(b"\x7fELF" + b"\xff" * 10)
        return [str(tmp_path / "g.ko"), "--target", target_id], "g.ko"
    if kind == "malformed Module.symvers":
        (tmp_path / "Module.symvers").write_text("0x1\tfoo\n")
        module = str(intree(target_id, "uas"))
        return [module, "--kernel", str(tmp_path / "Module.symvers")], "Module.symvers"
    if kind == "unknown target":
        return [str(intree(target_id, "uas")), "--target", "nonesuch"], "unknown target 'nonesuch'"
    assert kind == "--intree without --matrix"
    return ["--intree", "virtio_blk"], "--intree only goes with --matrix"


@pytest.mark.parametrize(
    "kind",
    [
        "missing module",
        "not an ELF module",
        "malformed Module.symvers",
        "unknown target",
        "--intree without --matrix",
    ],
)
def test_bad_input_exits_2_with_one_error_line_on_stderr(capsys, tmp_path, kind):
    argv, named = _bad_input(kind, tmp_path)
    assert main(["symcheck", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvfront: error: "), err
    assert named in lines[0]


def test_matrix_shows_each_cross_kernel_failure_for_what_it_is(capsys):
    missing = [t for t in TARGET_IDS if provisioned(t) is None]
    if missing:
        pytest.skip(f"the matrix needs every target provisioned; not: {', '.join(missing)}")
    assert main(["symcheck", "--matrix", "--intree", "virtio_blk", "--json"]) == 0
    cells = {(c["built_for"], c["checked_against"]): c for c in json.loads(capsys.readouterr().out)}
    assert all(cells[(t, t)]["loads"] for t in TARGET_IDS)
    # Each kind of cross-kernel failure, on every pair of provisioned targets that has it.
    expected = [
        *(
            (built, against, "Invalid architecture in ELF header: 3")
            for built in ids_where(arch="i386")
            for against in ids_where(arch="amd64", line="6")
        ),
        *(
            (built, against, "module_layout")
            for built, against in same_suite_pairs("amd64", "rt-amd64", where=layout_crcs_differ)
        ),
        *(
            (built, against, "struct module size")
            for built in ids_where(arch="amd64", line="6.1")
            for against in ids_where(arch="amd64", line="6.12")
        ),
    ]
    assert expected, "no two provisioned targets differ in any of these ways"
    for built, against, reason in expected:
        assert reason in cells[(built, against)]["reason"], (built, against)
