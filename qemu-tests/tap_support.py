"""What the scenarios over a TAP device share: streams between the namespace and the guest,
the counters that show how they were framed, and raw frames sent from the namespace side.

A guest on a TAP device (pvfront.netns) reaches the namespace's host address; the
namespace's side runs Python peers with the host's interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pvf_support import wait_for
from pvfront import netns
from pvfront.guest import Guest

PORT = 5001
ETHERNET_FRAME = 14 + 1500  # the biggest frame an MTU of 1500 allows, without FCS

# Sends a file to the one connection it takes; says when it listens, and at the end the
# SHA-256 of what it sent.
SOURCE = """
import hashlib, socket, sys
address, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.create_server((address, port))
server.settimeout(300)
print("listening", flush=True)
conn, _ = server.accept()
data = open(path, "rb").read()
conn.sendall(data)
conn.close()
print(hashlib.sha256(data).hexdigest(), flush=True)
"""
# Sends COUNT frames of SIZE bytes (without FCS) of the local experimental EtherType 0x88b5
# to DST from IFACE, with an 802.1Q tag of VID unless VID is 0.
FRAMES = """
import socket, sys
iface, dst, vid, count, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
dst = bytes.fromhex(dst.replace(":", ""))
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((iface, 0))
src = sock.getsockname()[4]
tag = b"\\x81\\x00" + vid.to_bytes(2, "big") if vid else b""
head = dst + src + tag + b"\\x88\\xb5"
frame = head + bytes(size - len(head))
for _ in range(count):
    sock.send(frame)
"""
MIN_FRAME = 60


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


def bring_up_on_tap(guest: Guest, ns: netns.NetNamespace, tap: str, iface: str) -> None:
    """The guest's interface on tap addressed, up, and with its carrier."""
    guest.run(f"ip addr add {ns.guest_cidr(tap)} dev {iface} && ip link set {iface} up")
    guest.run(wait_for(f"[ $(cat /sys/class/net/{iface}/carrier) = 1 ]"))


def guest_counters(guest: Guest, iface: str, *names: str) -> tuple[int, ...]:
    """The guest interface's counters (default: rx_packets and rx_bytes)."""
    stats = f"/sys/class/net/{iface}/statistics"
    paths = " ".join(f"{stats}/{name}" for name in names or ("rx_packets", "rx_bytes"))
    return tuple(int(value) for value in guest.run(f"cat {paths}").output.split())


def start_source(ns: netns.NetNamespace, tap: str, data: Path) -> subprocess.Popen[str]:
    host = ns.host_address(tap)
    peer = ns.start([sys.executable, "-c", SOURCE, host, str(PORT), str(data)])
    assert peer.stdout is not None and peer.stdout.readline() == "listening\n"
    return peer


def download(guest: Guest, ns: netns.NetNamespace, tap: str, iface: str, data: Path) -> Stream:
    """A source behind tap streams data to the guest, which keeps it in /tmp."""
    peer = start_source(ns, tap, data)
    before = guest_counters(guest, iface)
    host = ns.host_address(tap)
    guest.run(f"nc {host} {PORT} < /dev/null > /tmp/{tap}.bin", timeout=180)
    after = guest_counters(guest, iface)
    received = guest.run(f"sha256sum /tmp/{tap}.bin && rm /tmp/{tap}.bin").output.split()[0]
    out, errors = peer.communicate(timeout=60)
    assert peer.returncode == 0, errors
    return Stream(out.strip(), received, after[0] - before[0], after[1] - before[1])


def send_frames(
    guest: Guest,
    ns: netns.NetNamespace,
    tap: str,
    dst: str,
    count: int,
    *,
    vid: int = 0,
    size: int = MIN_FRAME,
) -> None:
    """The namespace sends count raw frames to dst through tap (tagged with vid unless 0);
    returns once the guest has had time to take them in."""
    ns.run([sys.executable, "-c", FRAMES, tap, dst, str(vid), str(count), str(size)])
    guest.run("sleep 1")  # TCG: let the device and NAPI drain what arrived


def frames_received(
    guest: Guest, ns: netns.NetNamespace, iface: str, dst: str, count: int, vid: int = 0
) -> int:
    """How many packets the guest's interface counted while the namespace sent count frames
    to dst through tap0 (tagged with vid unless 0): the device's filter decides."""
    [before] = guest_counters(guest, iface, "rx_packets")
    send_frames(guest, ns, "tap0", dst, count, vid=vid)
    [after] = guest_counters(guest, iface, "rx_packets")
    return after - before
