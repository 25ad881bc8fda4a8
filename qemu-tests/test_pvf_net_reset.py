"""pvf_net's transmit-timeout recovery: a device that stops completing transmits is reset, a
reset that fails leaves an interface that still goes down and unloads, a reset that works
leaves one that carries traffic, and removal while a reset is pending wins over the reset.

The stuck device and the failing restart come from the test build's parameters
(kmod/README.md): pvf_net's test_stall_tx stops the TX queue after the next packet and never
wakes it, test_fail_restarts makes the next restarts fail, test_reset_delay_ms holds the reset
work back; pvf_pci's test_stuck_resets makes resets look as if the device never finished them.
tx_timeout_ms shortens the watchdog so the timeout comes within a second. The steps that used
to hang (ifdown, rmmod) run under a short command timeout: a hang is a GuestHang, not a stall.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pvf_support import (
    HOST_FROM_GUEST,
    MIB,
    UNLOAD_ORDER,
    HostServer,
    TcpSink,
    bring_up,
    device_attribute,
    device_of,
    modules_for,
    pvf_guest,
    skip_unless_first_of_its_arch,
    transfer_both_ways,
    wait_for,
)
from pvfront.guest import Guest, Nic

pytestmark = pytest.mark.qemu

PARAMS = "/sys/module/pvf_net/parameters"
# Debian 6.1's dev_watchdog() reports a transmit timeout with WARN_ONCE; later kernels log it.
WATCHDOG_WARNING = r"dev_watchdog|NETDEV WATCHDOG"
QUICK = 30  # seconds for the steps that hang when the teardown is wrong


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree, test_hooks=True)


def set_param(guest: Guest, name: str, value: int) -> None:
    guest.run(f"echo {value} > {PARAMS}/{name}")


def stall_transmits(guest: Guest) -> None:
    """The device stops completing transmits: the next packet fills the queue for good, and
    the watchdog fires after tx_timeout_ms."""
    set_param(guest, "test_stall_tx", 1)
    guest.run(f"ping -c 1 -W 1 {HOST_FROM_GUEST}", check=False)


def down_and_unload(guest: Guest) -> None:
    guest.run("ip link set pvnet0 down", timeout=QUICK)
    guest.run(
        "(for m in " + " ".join(UNLOAD_ORDER) + "; do rmmod $m || exit 1; done)", timeout=QUICK
    )


def up_with_short_watchdog(guest: Guest) -> None:
    set_param(guest, "tx_timeout_ms", 500)
    bring_up(guest)


def test_a_failed_reset_leaves_an_interface_that_goes_down_and_unloads(
    target_tree, pvf_modules, guest_factory
):
    with pvf_guest(
        guest_factory, target_tree, pvf_modules, nics=[Nic()], allow=[WATCHDOG_WARNING]
    ) as g:
        up_with_short_watchdog(g)
        set_param(g, "test_fail_restarts", 1)
        stall_transmits(g)
        g.wait_kernel(r"pvnet0: transmit queue 0 timed out", timeout=20)
        g.wait_kernel(r"pvnet0: reset failed \(-5\), device unusable", timeout=20)

        # The device is gone for good, and says so; ifdown and unload still complete.
        g.run(wait_for("[ $(cat /sys/class/net/pvnet0/carrier 2>/dev/null || echo 0) = 0 ]"))
        down_and_unload(g)
        assert g.run("ls /sys/class/net").output.split() == ["lo"]


def test_after_a_successful_reset_traffic_flows_and_the_interface_unloads(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    download = random.Random(51).randbytes(MIB + 17)
    upload = disk_dir / "upload.bin"
    upload.write_bytes(random.Random(52).randbytes(MIB // 2 + 5))
    with (
        HostServer({"download.bin": download}) as http,
        TcpSink() as sink,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic()],
            files={"/data/upload.bin": upload},
            allow=[WATCHDOG_WARNING],
        ) as g,
    ):
        up_with_short_watchdog(g)
        stall_transmits(g)
        g.wait_kernel(r"pvnet0: resetting device after transmit timeout", timeout=20)
        g.run(wait_for("[ $(cat /sys/class/net/pvnet0/carrier) = 1 ]"))

        transfer_both_ways(g, http, sink, download, upload)
        assert not [line for line in g.kernel_lines if "reset failed" in line]
        down_and_unload(g)


def test_removal_while_a_reset_is_pending_wins_over_the_reset(
    target_tree, pvf_modules, guest_factory
):
    with pvf_guest(
        guest_factory, target_tree, pvf_modules, nics=[Nic()], allow=[WATCHDOG_WARNING]
    ) as g:
        up_with_short_watchdog(g)
        set_param(g, "test_reset_delay_ms", 3000)  # the work waits this long before RTNL
        stall_transmits(g)
        g.wait_kernel(r"pvnet0: transmit queue 0 timed out", timeout=20)

        # Unregistering takes well under 3 s: the reset work wakes up to a device being
        # removed, and must leave it alone.
        g.run("rmmod pvf_net", timeout=QUICK)
        assert not [line for line in g.kernel_lines if "resetting device" in line]
        g.run("(for m in " + " ".join(UNLOAD_ORDER[1:]) + "; do rmmod $m || exit 1; done)")


def test_a_reset_the_device_never_completes_leaves_it_broken_not_restarted(
    target_tree, pvf_modules, guest_factory, selected_targets
):
    """The reset that takes the queues down and the restart's own reset both time out: the
    device must stay broken and unusable, not be negotiated again as if it had reset."""
    skip_unless_first_of_its_arch(
        target_tree.target, selected_targets, "two 5-10 s reset waits of the same code"
    )
    with pvf_guest(
        guest_factory, target_tree, pvf_modules, nics=[Nic()], allow=[WATCHDOG_WARNING]
    ) as g:
        up_with_short_watchdog(g)
        g.run("echo 2 > /sys/module/pvf_pci/parameters/test_stuck_resets")
        stall_transmits(g)
        g.wait_kernel(r"pvnet0: transmit queue 0 timed out", timeout=20)
        g.wait_kernel(r"pvnet0: reset failed \(-5\), device unusable", timeout=90)
        assert len([line for line in g.kernel_lines if "device does not reset" in line]) == 2

        broken = device_attribute(g, device_of(g, "pvf_net"), "broken")
        carrier = g.run("cat /sys/class/net/pvnet0/carrier 2>/dev/null || echo 0").output.strip()
        assert (broken, carrier) == ("1", "0")
        down_and_unload(g)
