"""pvf_net on a real kernel: pvnet0 carries TCP both ways through QEMU user networking, intact,
and follows the link state the host sets.

The host end is a server on 127.0.0.1 (an HTTP server for the download, a TCP sink for the
upload), which the guest reaches as 10.0.2.2; every transfer is checked by SHA-256 on the
receiving side.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from pvf_support import (
    MIB,
    HostServer,
    TcpSink,
    bring_up,
    modules_for,
    pvf_guest,
    transfer_both_ways,
    wait_for,
)
from pvfront.guest import Nic

pytestmark = pytest.mark.qemu

MAC = "52:54:00:12:34:99"


@pytest.fixture(scope="session")
def pvf_modules(ws, target_tree) -> list[Path]:
    return modules_for(ws, target_tree)


def test_pvnet0_downloads_and_uploads_intact_and_follows_the_link(
    target_tree, pvf_modules, guest_factory, disk_dir
):
    download = random.Random(41).randbytes(4 * MIB + 123)
    upload = disk_dir / "upload.bin"
    upload.write_bytes(random.Random(42).randbytes(2 * MIB + 321))
    with (
        HostServer({"download.bin": download, "small.bin": download[:100_000]}) as http,
        TcpSink() as sink,
        pvf_guest(
            guest_factory,
            target_tree,
            pvf_modules,
            nics=[Nic(mac=MAC)],
            qmp=True,
            files={"/data/upload.bin": upload},
        ) as g,
    ):
        # The device's MAC, its link up once the interface is.
        assert g.run("cat /sys/class/net/pvnet0/address").output.strip() == MAC
        bring_up(g)
        assert g.run("cat /sys/class/net/pvnet0/operstate").output.strip() == "up"

        transfer_both_ways(g, http, sink, download, upload)

        carrier = "cat /sys/class/net/pvnet0/carrier"
        operstate = "cat /sys/class/net/pvnet0/operstate"
        g.qmp.set_link("vnet0", False)
        g.run(wait_for(f"[ $({carrier}) = 0 ]"))
        g.run(wait_for(f"[ $({operstate}) = down ]"))  # linkwatch follows within a second
        assert "NO-CARRIER" in g.run("ip link show pvnet0").output

        g.qmp.set_link("vnet0", True)
        g.run(wait_for(f"[ $({carrier}) = 1 ]"))
        g.run(wait_for(f"[ $({operstate}) = up ]"))
        g.run(f"wget -q -O /tmp/small.bin {http.url('small.bin')}", timeout=60)
        assert (
            g.run("sha256sum /tmp/small.bin").output.split()[0]
            == hashlib.sha256(download[:100_000]).hexdigest()
        )
