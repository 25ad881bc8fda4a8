"""pvf_net's control queue, seen from the host: QEMU's receive filter (QMP query-rx-filter)
says what the driver told the device, and frames sent from the namespace show the device
filtering by it.

One guest on a TAP device whose QEMU side offers the control queue with everything on it
(QEMU's default: CTRL_RX, CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE, CTRL_GUEST_OFFLOADS):
- receive mode: the device leaves the promiscuous mode it starts in when the interface comes
  up; frames to another station's MAC are dropped by the device then and delivered once the
  interface is made promiscuous; all-multicast reaches the device too;
- MAC address: a new address set while up is the device's (QMP), and the host reaches the
  guest at it with the device filtering again;
- VLAN filter: a frame tagged with a VLAN the guest has no interface on is dropped by the
  device, one tagged with a VLAN it has is delivered to that VLAN's interface (tagged frames
  come from a raw socket: the host kernel here has no 8021q);
- announcement: QMP announce-self, as after a migration, makes the guest send a gratuitous
  ARP (VIRTIO_NET_F_GUEST_ANNOUNCE), seen on the namespace side;
- receive offloads: `ethtool -K rx-gro-hw off` makes the device stop sending super-packets
  (CTRL_GUEST_OFFLOADS), `on` brings them back, the data intact either way; the mergeable
  buffers' size follows the average packet (sysfs, as in-tree).

With the test build (kmod/README.md): after a transmit-timeout reset the device is told the
address, VLANs and mode again; and a device that never answers a command (test_mute_ctrl)
costs ctrl_timeout_ms, not a hung RTNL: the command fails, the device is taken for broken,
and the interface still goes down and the modules unload.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pvf_support import (
    MIB,
    UNLOAD_ORDER,
    modules_for,
    pvf_guest,
    skip_unless_first_of_its_arch,
    wait_for,
)
from pvfront import netns
from pvfront.bench.programs import host_program_files
from pvfront.guest import Guest, Nic
from tap_support import ETHERNET_FRAME, bring_up_on_tap, download, frames_received

pytestmark = pytest.mark.qemu

MAC = "52:54:00:00:03:02"
NEW_MAC = "52:54:00:00:03:77"
STRANGER = "52:54:00:00:09:09"  # a station that is not the guest
NIC_ID = "vnet0"  # pvfront.qemu's id of the first virtio NIC: QEMU's name for its filter
VLAN, OTHER_VLAN = 10, 11
FRAMES = 40
PARAMS = "/sys/module/pvf_net/parameters"
MERGEABLE_BUFFER = "/sys/class/net/pvnet0/queues/rx-0/pvf_net/mergeable_rx_buffer_size"
QUICK = 30  # seconds for the steps that hang when a command never returns

# Waits for a gratuitous ARP from IP on IFACE (sender and target address both IP); prints
# its source MAC.
GRATUITOUS_ARP = """
import socket, sys
iface, ip = sys.argv[1], socket.inet_aton(sys.argv[2])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
sock.bind((iface, 0x0806))
sock.settimeout(60)
print("listening", flush=True)
while True:
    frame = sock.recv(2048)
    arp = frame[14:42]
    if arp[14:18] == ip and arp[24:28] == ip:
        print(frame[6:12].hex(":"), flush=True)
        break
"""


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


@pytest.fixture(scope="session")
def pvf_test_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree, test_hooks=True)


Filter = dict[str, Any]


def rx_filter(guest: Guest, settled: Callable[[Filter], bool] | None = None) -> Filter:
    """QEMU's receive filter of the NIC; with settled, the first one it accepts within 10 s
    (the receive mode reaches the device from a work item), else the last."""
    deadline = time.monotonic() + 10
    while True:
        [nic] = guest.qmp.execute("query-rx-filter", name=NIC_ID)
        if settled is None or settled(nic) or time.monotonic() > deadline:
            return nic
        time.sleep(0.2)


def up_on_tap(guest: Guest, ns: netns.NetNamespace) -> None:
    bring_up_on_tap(guest, ns, "tap0", "pvnet0")


def add_vlan(guest: Guest, vid: int) -> str:
    """The guest's interface on VLAN vid, up."""
    guest.run(f"ip link add link pvnet0 name pvnet0.{vid} type vlan id {vid}")
    guest.run(f"ip link set pvnet0.{vid} up")
    return f"pvnet0.{vid}"


def ping(guest: Guest, address: str) -> None:
    """Both ways: the peer has to answer the guest's ARP and echo requests."""
    guest.run(f"ping -c 3 -W 5 {address}", timeout=60)


def vlan_guest(guest_factory, target_tree, modules, ns, **options) -> Guest:
    return pvf_guest(
        guest_factory,
        target_tree,
        modules,
        nics=[Nic(tap="tap0", mac=MAC)],
        netns=ns,
        in_tree_modules=["8021q"],
        qmp=True,
        **options,
    )


def test_the_device_filters_by_the_mode_address_and_vlans_the_interface_sets(
    target_tree, pvf_modules, guest_factory
):
    with (
        netns.namespace(("tap0",)) as ns,
        vlan_guest(guest_factory, target_tree, pvf_modules, ns) as g,
    ):
        assert rx_filter(g)["promiscuous"], "QEMU starts promiscuous"
        up_on_tap(g, ns)
        filtered = rx_filter(g, lambda f: not f["promiscuous"])
        to_stranger = frames_received(g, ns, "pvnet0", STRANGER, FRAMES)
        g.run("ip link set pvnet0 promisc on")
        promiscuous = rx_filter(g, lambda f: f["promiscuous"])
        to_stranger_promisc = frames_received(g, ns, "pvnet0", STRANGER, FRAMES)
        g.run("ip link set pvnet0 promisc off")
        # busybox ip has no allmulticast: IFF_ALLMULTI through sysfs, as dev_change_flags()
        flags = "/sys/class/net/pvnet0/flags"
        g.run(f"printf '%#x' $(( $(cat {flags}) | 0x200 )) > {flags}")
        allmulti = rx_filter(g, lambda f: not f["promiscuous"] and f["multicast"] == "all")

        g.run(f"ip link set pvnet0 address {NEW_MAC}")
        moved = rx_filter(g)
        ns.run(["ip", "neigh", "flush", "dev", "tap0"])
        ping(g, ns.host_address("tap0"))
        to_old_mac = frames_received(g, ns, "pvnet0", MAC, FRAMES)

        vlan_iface = add_vlan(g, VLAN)
        tagged = rx_filter(g)
        other_vlan = frames_received(g, ns, "pvnet0", NEW_MAC, FRAMES, vid=OTHER_VLAN)
        our_vlan = frames_received(g, ns, vlan_iface, NEW_MAC, FRAMES, vid=VLAN)
        probed = g.run("dmesg | grep 'pvf_net .*, MTU '").output

    assert ", control queue" in probed, probed
    assert not filtered["promiscuous"] and filtered["main-mac"] == MAC, filtered
    assert filtered["multicast"] == "normal", filtered
    assert to_stranger < FRAMES / 2, "the device delivered frames for another station"
    assert promiscuous["promiscuous"], promiscuous
    assert to_stranger_promisc >= FRAMES, "promiscuous, the device still filtered"
    assert not allmulti["promiscuous"] and allmulti["multicast"] == "all", allmulti
    assert moved["main-mac"] == NEW_MAC, moved
    assert to_old_mac < FRAMES / 2, "the device still takes frames for the old address"
    assert VLAN in tagged["vlan-table"] and OTHER_VLAN not in tagged["vlan-table"], tagged
    assert other_vlan < FRAMES / 2, f"frames of VLAN {OTHER_VLAN} got through the filter"
    assert our_vlan >= FRAMES, f"frames of VLAN {VLAN} were filtered"


def test_an_announcement_request_makes_the_guest_send_a_gratuitous_arp(
    target_tree, pvf_modules, guest_factory
):
    with (
        netns.namespace(("tap0",)) as ns,
        vlan_guest(guest_factory, target_tree, pvf_modules, ns) as g,
    ):
        up_on_tap(g, ns)
        watch = ns.start([sys.executable, "-c", GRATUITOUS_ARP, "tap0", ns.guest_address("tap0")])
        assert watch.stdout is not None and watch.stdout.readline() == "listening\n"
        g.qmp.execute("announce-self", initial=50, max=550, rounds=1, step=100)
        try:
            sender, errors = watch.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("no gratuitous ARP from the guest")
        warnings = g.run("dmesg | grep -c 'announcement not acknowledged' || true").output
    assert watch.returncode == 0, errors
    assert sender.strip() == MAC
    assert warnings.strip() == "0"


def test_turning_receive_offloads_off_stops_the_devices_super_packets(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    ethtool = host_program_files(target_tree, "ethtool")
    if ethtool is None:
        pytest.skip(f"{target_tree.target.id}: the host's ethtool does not run in this guest")
    data = disk_dir / "download.bin"
    data.write_bytes(random.Random(45).randbytes(4 * MIB + 7))
    sent = hashlib.sha256(data.read_bytes()).hexdigest()
    with (
        netns.namespace(("tap0",)) as ns,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic(tap="tap0", mac=MAC)],
            netns=ns,
            files=ethtool,
        ) as g,
    ):
        up_on_tap(g, ns)
        shown = g.run("ethtool -k pvnet0").output
        g.run("ethtool -K pvnet0 rx-gro-hw off")
        off = download(g, ns, "tap0", "pvnet0", data)
        buffer_after_frames = g.run(f"cat {MERGEABLE_BUFFER}").output
        g.run("ethtool -K pvnet0 rx-gro-hw on")
        on = download(g, ns, "tap0", "pvnet0", data)
        buffer_after_super_packets = g.run(f"cat {MERGEABLE_BUFFER}").output
        g.run("ethtool -K pvnet0 rx off")
        no_rx_csum = g.run("ethtool -k pvnet0").output
        checksummed = download(g, ns, "tap0", "pvnet0", data)

    assert "rx-gro-hw: on" in shown, shown
    for stream in (off, on, checksummed):
        assert stream.sent == sent and stream.received == sent, "the data arrived changed"
    assert off.bytes_per_frame <= ETHERNET_FRAME, "super-packets with rx-gro-hw off"
    assert on.bytes_per_frame > ETHERNET_FRAME, "no super-packet with rx-gro-hw on"
    # buffers follow the packets' average: a frame and its header in half a page, and
    # bigger once super-packets came (they were carried, intact, by the smaller ones)
    assert int(buffer_after_frames) <= 2048, buffer_after_frames
    assert int(buffer_after_super_packets) > int(buffer_after_frames)
    assert "rx-gro-hw: off" in no_rx_csum, "GRO_HW needs the device's checksums"
    assert checksummed.bytes_per_frame <= ETHERNET_FRAME


def set_param(guest: Guest, name: str, value: int) -> None:
    guest.run(f"echo {value} > {PARAMS}/{name}")


def test_after_a_reset_the_device_is_told_again_and_a_mute_device_costs_a_timeout_not_a_hang(
    target_tree, pvf_test_modules, guest_factory, selected_targets
):
    skip_unless_first_of_its_arch(
        target_tree.target, selected_targets, "the recovery paths are the same C on every kernel"
    )
    with (
        netns.namespace(("tap0",)) as ns,
        vlan_guest(
            guest_factory,
            target_tree,
            pvf_test_modules,
            ns,
            allow=[r"dev_watchdog|NETDEV WATCHDOG"],
        ) as g,
    ):
        set_param(g, "tx_timeout_ms", 500)
        up_on_tap(g, ns)
        g.run(f"ip link set pvnet0 address {NEW_MAC}")
        vlan_iface = add_vlan(g, VLAN)
        set_param(g, "test_stall_tx", 1)
        g.run(f"ping -c 1 -W 1 {ns.host_address('tap0')}", check=False)
        g.wait_kernel("resetting device after transmit timeout", timeout=30)
        g.run(wait_for("[ $(cat /sys/class/net/pvnet0/carrier) = 1 ]"))
        restored = rx_filter(g, lambda f: not f["promiscuous"] and VLAN in f["vlan-table"])
        our_vlan = frames_received(g, ns, vlan_iface, NEW_MAC, FRAMES, vid=VLAN)

        set_param(g, "ctrl_timeout_ms", 1000)
        set_param(g, "test_mute_ctrl", 1)
        started = time.monotonic()
        refused = g.run(f"ip link set pvnet0 address {MAC}", check=False, timeout=QUICK)
        waited = time.monotonic() - started
        timed_out = g.run("dmesg | grep -c 'no answer in 1000 ms' || true").output
        carrier = g.run("cat /sys/class/net/pvnet0/carrier", check=False).output
        g.run("ip link set pvnet0.10 down && ip link set pvnet0 down", timeout=QUICK)
        g.run(
            "(for m in " + " ".join(UNLOAD_ORDER) + "; do rmmod $m || exit 1; done)",
            timeout=QUICK,
        )

    assert not restored["promiscuous"] and restored["main-mac"] == NEW_MAC, restored
    assert VLAN in restored["vlan-table"], restored
    assert our_vlan >= FRAMES, f"after the reset, frames of VLAN {VLAN} were filtered"
    assert refused.status != 0, "a command the device never answered succeeded"
    assert waited < QUICK
    assert timed_out.strip() == "1", timed_out
    assert carrier.strip() != "1", "the link stayed up on a broken device"
