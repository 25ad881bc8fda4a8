"""pvf_net over a real backend: TAP devices in a private network namespace, whose QEMU side
passes virtio-net headers through, so the offloads the driver negotiates reach a host kernel.

One guest has two NICs: tap0's device offers TCP segmentation both ways (QEMU's default),
tap1's offers neither (`host_tso4=off,…,guest_tso6=off`). A file the host fetches from the
guest's busybox httpd must leave through the first as super-frames the device segments (the
host's TAP counts fewer, bigger packets than an MTU allows), and a stream the host sends must
come in as super-packets through pvf_net's mergeable page buffers (the interface counts
them); through the second, both ways, frames no bigger than the MTU. Everything arrives intact
(SHA-256 on both sides).

A second guest has a device that offers an MTU of 9000 and no segmentation (so every frame
is one the MTU allows) and one without mergeable buffers (one MTU-sized buffer per frame):
streams through both are intact, frames through the first up to 9,014 bytes, into the second
up to 1,514. A frame bigger than any MTU the interface may have is dropped and counted as an
error, one of the MTU's size is delivered.

httpd sends with sendfile(), in big pieces: a sender as slow as the debug kernel that wrote
a kilobyte at a time (busybox nc) would give TCP nothing to put in a super-frame.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import pytest

from pvf_support import MIB, modules_for, pvf_guest
from pvfront import netns
from pvfront.guest import Guest, Nic
from tap_support import (
    ETHERNET_FRAME,
    PORT,
    Stream,
    bring_up_on_tap,
    download,
    guest_counters,
    interface_of,
    send_frames,
)

pytestmark = pytest.mark.qemu

# Fetches a URL; prints the SHA-256 of the body.
FETCH = """
import hashlib, sys, urllib.request
print(hashlib.sha256(urllib.request.urlopen(sys.argv[1], timeout=300).read()).hexdigest())
"""

OFFLOADS_OFF = ("host_tso4=off", "host_tso6=off", "guest_tso4=off", "guest_tso6=off")
OFFERS = {"tap0": (), "tap1": OFFLOADS_OFF}
MACS = {"tap0": "52:54:00:00:03:02", "tap1": "52:54:00:00:04:02"}
JUMBO_MTU = 9000
JUMBO_FRAME = 14 + JUMBO_MTU
OVERSIZED = 20  # frames beyond the jumbo MTU, and as many of its size


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def stream_files(directory: Path, seed: int, size: int) -> tuple[Path, Path, str]:
    """Random data to send out of the guest and into it (a few bytes longer), and the
    SHA-256 of the first."""
    outbound = directory / "upload.bin"
    outbound.write_bytes(random.Random(seed).randbytes(size))
    inbound = directory / "download.bin"
    inbound.write_bytes(random.Random(seed + 1).randbytes(size + 22))
    return outbound, inbound, hashlib.sha256(outbound.read_bytes()).hexdigest()


def upload(ns: netns.NetNamespace, tap: str, sent: str) -> Stream:
    """The host fetches /data/upload.bin (whose SHA-256 is sent) from the guest's httpd."""
    before = ns.statistics(tap)
    url = f"http://{ns.guest_address(tap)}:{PORT}/upload.bin"
    received = ns.run([sys.executable, "-c", FETCH, url], timeout=300).strip()
    after = ns.statistics(tap)
    frames = after["rx_packets"] - before["rx_packets"]
    return Stream(sent, received, frames, after["rx_bytes"] - before["rx_bytes"])


def test_segmentation_offloads_carry_super_frames_only_where_offered_and_data_arrive_intact(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    outbound, inbound, sent = stream_files(disk_dir, 43, 8 * MIB + 77)
    with (
        netns.namespace(tuple(OFFERS)) as ns,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic(tap=t, mac=MACS[t], properties=p) for t, p in OFFERS.items()],
            netns=ns,
            files={"/data/upload.bin": outbound},
        ) as g,
    ):
        out, into, iface = streams_through_each_tap(g, ns, sent, inbound)
        probed = g.run("dmesg | grep 'pvf_net .*, MTU '").output

    for tap in OFFERS:
        for stream in (out[tap], into[tap]):
            assert stream.received == stream.sent, f"{tap}: the data arrived changed"
        assert out[tap].size >= outbound.stat().st_size
        assert into[tap].size >= inbound.stat().st_size
    assert out["tap0"].bytes_per_frame > ETHERNET_FRAME, "no frame beyond the MTU left tap0"
    assert into["tap0"].bytes_per_frame > ETHERNET_FRAME, "no packet beyond the MTU came in"
    assert out["tap1"].bytes_per_frame <= ETHERNET_FRAME
    assert into["tap1"].bytes_per_frame <= ETHERNET_FRAME
    offloading, plain = _line_of(probed, iface["tap0"]), _line_of(probed, iface["tap1"])
    assert ", tso" in offloading and ", rx gso" in offloading, offloading
    assert ", tso" not in plain and ", rx gso" not in plain, plain
    assert ", mergeable rx" in plain  # QEMU offers mergeable buffers either way


def streams_through_each_tap(
    guest: Guest, ns: netns.NetNamespace, sent: str, inbound: Path
) -> tuple[dict[str, Stream], dict[str, Stream], dict[str, str]]:
    """Up each NIC on its TAP device, then through it /data/upload.bin (whose SHA-256 is sent)
    out to the namespace and inbound in: the streams out, in, and the guest's interfaces."""
    guest.run(f"busybox httpd -p {PORT} -h /data")
    out, into, iface = {}, {}, {}
    for tap in ns.taps:
        iface[tap] = interface_of(guest, MACS[tap])
        bring_up_on_tap(guest, ns, tap, iface[tap])
        out[tap] = upload(ns, tap, sent)
        into[tap] = download(guest, ns, tap, iface[tap], inbound)
    return out, into, iface


def test_jumbo_frames_and_single_buffers_carry_data_intact_and_a_frame_beyond_the_mtu_is_dropped(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    outbound, inbound, sent = stream_files(disk_dir, 45, 4 * MIB + 55)
    nics = [
        Nic(tap="tap0", mac=MACS["tap0"], mtu=JUMBO_MTU, properties=OFFLOADS_OFF),
        Nic(tap="tap1", mac=MACS["tap1"], properties=("mrg_rxbuf=off",)),
    ]
    with (
        netns.namespace(("tap0", "tap1")) as ns,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=nics,
            netns=ns,
            files={"/data/upload.bin": outbound},
        ) as g,
    ):
        ns.run(["ip", "link", "set", "tap0", "mtu", str(JUMBO_MTU)])
        out, into, iface = streams_through_each_tap(g, ns, sent, inbound)
        # the namespace side may now send frames no MTU of the guest's interface allows
        ns.run(["ip", "link", "set", "tap0", "mtu", str(JUMBO_MTU + 500)])
        counters = ("rx_packets", "rx_errors")
        before = guest_counters(g, iface["tap0"], *counters)
        send_frames(g, ns, "tap0", MACS["tap0"], OVERSIZED, size=JUMBO_FRAME + 100)
        oversized = guest_counters(g, iface["tap0"], *counters)
        send_frames(g, ns, "tap0", MACS["tap0"], OVERSIZED, size=JUMBO_FRAME)
        fitting = guest_counters(g, iface["tap0"], *counters)
        probed = g.run("dmesg | grep 'pvf_net .*, MTU '").output

    for tap in ns.taps:
        for stream in (out[tap], into[tap]):
            assert stream.received == stream.sent, f"{tap}: the data arrived changed"
    for stream in (out["tap0"], into["tap0"]):
        assert ETHERNET_FRAME < stream.bytes_per_frame <= JUMBO_FRAME, stream
    # single buffers take no GSO packets (GUEST_TSO is cleared), sending keeps TSO
    assert into["tap1"].bytes_per_frame <= ETHERNET_FRAME, into["tap1"]
    assert oversized[1] - before[1] == OVERSIZED, "frames beyond the MTU were not counted"
    assert oversized[0] == before[0], "frames beyond the MTU were delivered"
    assert fitting[0] - oversized[0] == OVERSIZED and fitting[1] == oversized[1]
    jumbo, single = _line_of(probed, iface["tap0"]), _line_of(probed, iface["tap1"])
    assert f"MTU {JUMBO_MTU}" in jumbo, jumbo
    assert ", mergeable rx" not in single and ", rx gso" not in single, single


def _line_of(dmesg: str, iface: str) -> str:
    [line] = [line for line in dmesg.splitlines() if f"{iface}: " in line]
    return line
