"""pvf_net over a real backend: TAP devices in a private network namespace, whose QEMU side
passes virtio-net headers through, so the offloads the driver negotiates reach a host kernel.

One guest has two NICs: tap0's device offers TCP segmentation both ways (QEMU's default),
tap1's offers neither (`host_tso4=off,…,guest_tso6=off`). A file the host fetches from the
guest's busybox httpd must leave through the first as super-frames the device segments (the
host's TAP counts fewer, bigger packets than an MTU allows), and a stream the host sends must
come in as super-packets through pvf_net's mergeable page buffers (the interface counts
them); through the second, both ways, frames no bigger than the MTU. Everything arrives intact
(SHA-256 on both sides).

httpd sends with sendfile(), in big pieces: a sender as slow as the debug kernel that wrote
a kilobyte at a time (busybox nc) would give TCP nothing to put in a super-frame.
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import pytest

from pvf_support import MIB, modules_for, pvf_guest, wait_for
from pvfront import netns
from pvfront.guest import Nic
from tap_support import ETHERNET_FRAME, PORT, Stream, download, interface_of

pytestmark = pytest.mark.qemu

# Fetches a URL; prints the SHA-256 of the body.
FETCH = """
import hashlib, sys, urllib.request
print(hashlib.sha256(urllib.request.urlopen(sys.argv[1], timeout=300).read()).hexdigest())
"""

OFFLOADS_OFF = ("host_tso4=off", "host_tso6=off", "guest_tso4=off", "guest_tso6=off")
OFFERS = {"tap0": (), "tap1": OFFLOADS_OFF}
MACS = {"tap0": "52:54:00:00:03:02", "tap1": "52:54:00:00:04:02"}


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


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
    outbound = disk_dir / "upload.bin"
    outbound.write_bytes(random.Random(43).randbytes(8 * MIB + 77))
    inbound = disk_dir / "download.bin"
    inbound.write_bytes(random.Random(44).randbytes(8 * MIB + 99))
    sent = hashlib.sha256(outbound.read_bytes()).hexdigest()
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
        g.run(f"busybox httpd -p {PORT} -h /data")
        out, into, iface = {}, {}, {}
        for tap in OFFERS:
            iface[tap] = interface_of(g, MACS[tap])
            g.run(
                f"ip addr add {ns.guest_cidr(tap)} dev {iface[tap]} && ip link set {iface[tap]} up"
            )
            g.run(wait_for(f"[ $(cat /sys/class/net/{iface[tap]}/carrier) = 1 ]"))
            out[tap] = upload(ns, tap, sent)
            into[tap] = download(g, ns, tap, iface[tap], inbound)
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


def _line_of(dmesg: str, iface: str) -> str:
    [line] = [line for line in dmesg.splitlines() if f"{iface}: " in line]
    return line
