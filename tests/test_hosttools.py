"""invoke setup: what is missing is named with the one apt-get command that installs it."""

import pytest

from pvfront import hosttools
from pvfront.errors import SetupError
from pvfront.hosttools import HostTool


def test_every_tool_the_toolchain_drives_is_present_after_setup():
    assert hosttools.missing_tools() == []


def test_the_network_bench_tools_are_host_tools():
    assert {"iperf3", "ethtool"} <= {tool.package for tool in hosttools.tools()}


def test_without_root_the_missing_tools_are_one_apt_get_command(monkeypatch):
    monkeypatch.setattr(
        hosttools,
        "tools",
        lambda: (
            HostTool("pvf-absent-a", "/nonexistent/pvf-a", "a test"),
            HostTool("make", "make", "present"),
            HostTool("pvf-absent-b", "pvf-absent-b-command", "a test"),
        ),
    )
    monkeypatch.setattr(hosttools.os, "geteuid", lambda: 1000)
    with pytest.raises(SetupError) as caught:
        hosttools.ensure_host_tools()
    # The command first, then each missing tool with what it is for.
    assert str(caught.value) == (
        "missing host tools; run: sudo apt-get install -y "
        "--no-install-recommends pvf-absent-a pvf-absent-b\n"
        "  /nonexistent/pvf-a (pvf-absent-a): a test\n"
        "  pvf-absent-b-command (pvf-absent-b): a test"
    )
    assert caught.value.exit_code == 2


def test_nothing_missing_installs_nothing(monkeypatch):
    monkeypatch.setattr(hosttools, "tools", lambda: (HostTool("make", "make", "present"),))
    assert hosttools.ensure_host_tools() == []
