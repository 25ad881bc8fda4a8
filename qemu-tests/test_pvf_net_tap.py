"""pvf_net over a real backend: TAP devices in a private network namespace, whose QEMU side
passes virtio-net headers through, so the offloads the driver negotiates reach a host kernel.

One guest has two NICs: tap0's device offers TCP segmentation both ways (QEMU's default),
tap1's offers neither (`host_tso4=off,…,guest_tso6=off`). A stream the guest sends through
the first must leave as super-frames the device segments (the host's TAP counts fewer, bigger
packets than an MTU allows), and a stream the host sends must come in as super-packets
through pvf_net's mergeable page buffers (the interface counts them); through the second,
both ways, frames no bigger than the MTU. Everything arrives intact (SHA-256 on both sides).
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

# One connection: `sink` reads it to its end and answers with the SHA-256 of what came;
# `source` sends a file and closes. Says when it listens, and at the end the SHA-256.
PEER = """
import hashlib, socket, sys
mode, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
server = socket.create_server((address, port))
server.settimeout(300)
print("listening", flush=True)
conn, _ = server.accept()
digest = hashlib.sha256()
if mode == "sink":
    while chunk := conn.recv(1 << 16):
        digest.update(chunk)
    conn.sendall(digest.hexdigest().encode() + b"\\n")
else:
    data = open(sys.argv[4], "rb").read()
    digest.update(data)
    conn.sendall(data)
conn.close()
print(digest.hexdigest(), flush=True)
"""
PORT = 5001
ETHERNET_FRAME = 14 + 1500  # the biggest frame an MTU of 1500 allows, without FCS
OFFLOADS_OFF = ("host_tso4=off", "host_tso6=off", "guest_tso4=off", "guest_tso6=off")
OFFERS = {"tap0": (), "tap1": OFFLOADS_OFF}
MACS = {"tap0": "52:54:00:00:03:02", "tap1": "52:54:00:00:04:02"}


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


@dataclass(frozen=True)
class Stream:
    """One stream through a TAP device: what each end made of it, and how many frames and
    bytes it took on the receiving side's interface."""

    sent: str  # SHA-256 by the sender
    received: str  # SHA-256 by the receiver
    frames: int
    size: int

    @property
    def bytes_per_frame(self) -> float:
        return self.size / self.frames


def interface_of(guest: Guest, mac: str) -> str:
    found = guest.run(f"grep -l {mac} /sys/class/net/*/address").output.split()
    assert len(found) == 1, found
    return found[0].split("/")[4]


def start_peer(ns: netns.NetNamespace, tap: str, *args: str):
    peer = ns.start(
        [sys.executable, "-c", PEER, args[0], ns.host_address(tap), str(PORT), *args[1:]]
    )
    assert peer.stdout is not None and peer.stdout.readline() == "listening\n"
    return peer


def peer_digest(peer) -> str:
    out, errors = peer.communicate(timeout=60)
    assert peer.returncode == 0, errors
    return out.strip()


def guest_counters(guest: Guest, iface: str) -> tuple[int, int]:
    stats = f"/sys/class/net/{iface}/statistics"
    packets, size = guest.run(f"cat {stats}/rx_packets {stats}/rx_bytes").output.split()
    return int(packets), int(size)


def upload(guest: Guest, ns: netns.NetNamespace, tap: str, sent: str) -> Stream:
    """The guest streams /data/upload.bin (whose SHA-256 is sent) to a sink behind tap."""
    peer = start_peer(ns, tap, "sink")
    before = ns.statistics(tap)
    host = ns.host_address(tap)
    answer = guest.run(f"nc {host} {PORT} < /data/upload.bin", timeout=180).output.strip()
    after = ns.statistics(tap)
    assert answer == peer_digest(peer), f"{tap}: the answer came back changed"
    frames = after["rx_packets"] - before["rx_packets"]
    return Stream(sent, answer, frames, after["rx_bytes"] - before["rx_bytes"])


def download(guest: Guest, ns: netns.NetNamespace, tap: str, iface: str, data: Path) -> Stream:
    """A source behind tap streams data to the guest, which keeps it in /tmp."""
    peer = start_peer(ns, tap, "source", str(data))
    before = guest_counters(guest, iface)
    host = ns.host_address(tap)
    guest.run(f"nc {host} {PORT} < /dev/null > /tmp/{tap}.bin", timeout=180)
    after = guest_counters(guest, iface)
    received = guest.run(f"sha256sum /tmp/{tap}.bin && rm /tmp/{tap}.bin").output.split()[0]
    return Stream(peer_digest(peer), received, after[0] - before[0], after[1] - before[1])


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
        out, into, iface = {}, {}, {}
        for tap in OFFERS:
            iface[tap] = interface_of(g, MACS[tap])
            g.run(
                f"ip addr add {ns.guest_address(tap)}/24 dev {iface[tap]} && "
                f"ip link set {iface[tap]} up"
            )
            g.run(wait_for(f"[ $(cat /sys/class/net/{iface[tap]}/carrier) = 1 ]"))
            out[tap] = upload(g, ns, tap, sent)
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
