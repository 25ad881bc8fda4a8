"""pvf_net over a real backend: TAP devices in a private network namespace, whose QEMU side
passes virtio-net headers through, so the offloads the driver negotiates reach a host kernel.

One guest has two NICs: tap0's device offers TCP segmentation (QEMU's default), tap1's does
not (`host_tso4=off,host_tso6=off`). A stream the guest sends through the first must leave as
super-frames the device segments (the host's TAP counts fewer, bigger packets than an MTU
allows); through the second, as frames no bigger than the MTU. Both arrive intact: a peer in
the namespace answers with the SHA-256 of what it read.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvf_support import MIB, modules_for, pvf_guest, wait_for
from pvfront import netns
from pvfront.guest import Guest, Nic

pytestmark = pytest.mark.qemu

# Says when it listens; reads one connection to its end, answers with the SHA-256 of it and
# says that too.
SINK = """
import hashlib, socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
server.settimeout(300)
print("listening", flush=True)
conn, _ = server.accept()
digest = hashlib.sha256()
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
conn.sendall(digest.hexdigest().encode() + b"\\n")
print(digest.hexdigest(), flush=True)
"""
PORT = 5001
ETHERNET_FRAME = 14 + 1500  # the biggest frame an MTU of 1500 allows, without FCS
OFFERS = {"tap0": (), "tap1": ("host_tso4=off", "host_tso6=off")}
MACS = {"tap0": "52:54:00:00:03:02", "tap1": "52:54:00:00:04:02"}


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def interface_of(guest: Guest, mac: str) -> str:
    found = guest.run(f"grep -l {mac} /sys/class/net/*/address").output.split()
    assert len(found) == 1, found
    return found[0].split("/")[4]


@dataclass(frozen=True)
class Stream:
    """One stream from the guest to the peer behind a TAP device."""

    iface: str
    read: str  # the SHA-256 of what the peer read
    answer: str  # what the guest was answered
    frames: int  # what the TAP device took from the guest
    size: int

    @property
    def bytes_per_frame(self) -> float:
        return self.size / self.frames


def send_through(guest: Guest, ns: netns.NetNamespace, tap: str, iface: str) -> Stream:
    """The guest streams /data/upload.bin out of iface to the peer behind tap."""
    host = ns.host_address(tap)
    peer = ns.start([sys.executable, "-c", SINK, host, str(PORT)])
    assert peer.stdout is not None and peer.stdout.readline() == "listening\n"
    before = ns.statistics(tap)
    answer = guest.run(f"nc {host} {PORT} < /data/upload.bin", timeout=180).output.strip()
    after = ns.statistics(tap)
    read, errors = peer.communicate(timeout=60)
    assert peer.returncode == 0, errors
    return Stream(
        iface,
        read.strip(),
        answer,
        after["rx_packets"] - before["rx_packets"],
        after["rx_bytes"] - before["rx_bytes"],
    )


def test_tso_sends_super_frames_only_where_the_device_offers_it_and_data_arrive_intact(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    upload = disk_dir / "upload.bin"
    upload.write_bytes(random.Random(43).randbytes(8 * MIB + 77))
    sent = hashlib.sha256(upload.read_bytes()).hexdigest()
    with (
        netns.namespace(tuple(OFFERS)) as ns,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic(tap=t, mac=MACS[t], properties=p) for t, p in OFFERS.items()],
            netns=ns,
            files={"/data/upload.bin": upload},
        ) as g,
    ):
        streams = {}
        for tap in OFFERS:
            iface = interface_of(g, MACS[tap])
            g.run(f"ip addr add {ns.guest_address(tap)}/24 dev {iface} && ip link set {iface} up")
            g.run(wait_for(f"[ $(cat /sys/class/net/{iface}/carrier) = 1 ]"))
            streams[tap] = send_through(g, ns, tap, iface)
        probed = g.run("dmesg | grep 'pvf_net .*, MTU '").output

    for tap, stream in streams.items():
        assert stream.read == sent, f"{tap}: the peer read other bytes"
        assert stream.answer == sent, f"{tap}: the answer came back changed"
        assert stream.size >= upload.stat().st_size
    segmenting, plain = streams["tap0"], streams["tap1"]
    assert segmenting.bytes_per_frame > ETHERNET_FRAME, "no frame beyond the MTU left tap0"
    assert plain.bytes_per_frame <= ETHERNET_FRAME
    assert ", tso" in _line_of(probed, segmenting.iface)
    assert ", tso" not in _line_of(probed, plain.iface)


def _line_of(dmesg: str, iface: str) -> str:
    [line] = [line for line in dmesg.splitlines() if f"{iface}: " in line]
    return line
