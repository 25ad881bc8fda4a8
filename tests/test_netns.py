"""The private network namespace real-backend network tests run in: its TAP devices are up
and addressed inside it and invisible outside; it, its devices and its peers are gone when it
ends, and one a killed process left behind is removed by the next."""

from __future__ import annotations

import os
import subprocess

import pytest

from pvfront import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def test_taps_are_up_and_addressed_inside_and_everything_goes_at_the_end():
    with netns.namespace(("tap0", "tap1")) as ns:
        assert ns.name in namespaces()
        addresses = ns.run(["ip", "-4", "-o", "address", "show"])
        assert f"tap0    inet {ns.host_address('tap0')}/24" in addresses
        assert f"tap1    inet {ns.host_address('tap1')}/24" in addresses
        assert ns.guest_address("tap1") == "10.0.4.2"
        assert ns.guest_cidr("tap1") == "10.0.4.2/24"
        assert "tap0" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
        assert ns.statistics("tap0")["rx_packets"] == 0
        peer = ns.start(["sleep", "600"])
    assert peer.poll() is not None
    assert ns.name not in namespaces()


def test_a_namespace_is_removed_when_the_block_fails_and_a_bad_command_names_itself():
    with pytest.raises(RuntimeError), netns.namespace() as ns:
        with pytest.raises(netns.SetupError, match=rf"^netns {ns.name}: ip link show nope: "):
            ns.run(["ip", "link", "show", "nope"])
        raise RuntimeError
    assert ns.name not in namespaces()


def test_a_namespace_left_by_a_killed_process_is_removed_by_the_next():
    dead = _a_dead_pid()
    orphan = f"pvfront-{dead}-0123abcd"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        with netns.namespace():
            assert orphan not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", orphan], capture_output=True)


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
