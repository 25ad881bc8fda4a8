"""pytest's exit status follows pvfront's codes: 0 pass, 1 failure, 2 harness, 3 kernel."""

from __future__ import annotations

import pytest

from pvfront.targets import load_targets
from pvfront.workspace import Workspace
from pytest_support import run_pytest

TARGETS = load_targets(Workspace.discover().targets_file)

TESTS = {
    "passes": "def test_it():\n    assert True\n",
    "assertion": "def test_it():\n    assert 1 == 2\n",
    "command_failed": (
        "from pvfront.console import CommandFailed\n"
        "def test_it():\n    raise CommandFailed('x', status=1, output='')\n"
    ),
    "kernel_panic": (
        "from pvfront.console import KernelPanic\n"
        "def test_it():\n    raise KernelPanic('Kernel panic - not syncing')\n"
    ),
    "broken_fixture": (
        "import pytest\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('no qemu')\n"
        "def test_it(broken):\n    pass\n"
    ),
    "setup_error": (
        "from pvfront.errors import SetupError\ndef test_it():\n    raise SetupError('no kernel')\n"
    ),
    "panic_and_failure": (
        "from pvfront.console import KernelPanic\n"
        "def test_a():\n    assert False\n"
        "def test_b():\n    raise KernelPanic('panic')\n"
    ),
}


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("passes", 0),
        ("assertion", 1),
        ("command_failed", 1),
        ("kernel_panic", 3),
        ("broken_fixture", 2),
        ("setup_error", 2),
        ("panic_and_failure", 3),
    ],
)
def test_session_exit_status(tmp_path, case, code):
    result = run_pytest(tmp_path, TESTS[case])
    assert result.returncode == code, result.stdout + result.stderr
    if code:
        assert f'name="pvfront_exit_code" value="{code}"' in (tmp_path / "junit.xml").read_text()


def test_unknown_target_is_a_usage_error(tmp_path):
    result = run_pytest(tmp_path, TESTS["passes"], "--target", "nonesuch")
    assert result.returncode == 2
    assert "unknown target 'nonesuch'" in result.stderr


def test_targets_parametrize_tests_by_id(tmp_path):
    """--target chooses (in the order given), --all-targets takes every declared target, and
    with neither option the default one runs alone."""
    body = "def test_it(target):\n    assert target.id\n"
    others = [i for i in TARGETS.ids if i != TARGETS.default_id]
    assert len(others) >= 2, "needs two targets besides the default"
    chosen = [others[-1], others[0]]
    result = run_pytest(tmp_path, body, "--target", chosen[0], "--target", chosen[1], "-rA")
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("PASSED ")]
    assert passed == [f"test_case.py::test_it[{i}]" for i in chosen]
    every = run_pytest(tmp_path, body, "--all-targets")
    assert f"{len(TARGETS.ids)} passed" in every.stdout
    default = run_pytest(tmp_path, body, "-rA")
    assert f"PASSED test_case.py::test_it[{TARGETS.default_id}]" in default.stdout
    assert "1 passed" in default.stdout
