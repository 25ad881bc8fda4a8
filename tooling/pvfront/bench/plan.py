"""What a run compares and how much of it: the block and net setups, the fio and net jobs,
the plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from pvfront.errors import UsageError


@dataclass(frozen=True)
class BlockSetup:
    """One way of giving the guest the bench disk: device model, driver, names in the guest."""

    name: str
    interface: str  # qemu.Disk interface
    device: str  # guest block device
    ours: bool = False  # load the pvf_* modules
    in_tree: tuple[str, ...] = ()  # in-tree modules to modprobe
    regions: str = ""  # regex: QEMU memory regions that are this device's registers
    irqs: str = ""  # regex: this device's /proc/interrupts rows
    legacy_ide: bool = False  # needs a machine with the legacy IDE controller


@dataclass(frozen=True)
class NetSetup:
    name: str
    model: str  # qemu.Nic model
    ours: bool = False
    in_tree: tuple[str, ...] = ()
    regions: str = ""
    irqs: str = ""
    # tap: a TAP device in a namespace the bench makes (pvfront.netns), the backend offloads
    # reach; user: QEMU's user networking, whose slirp caps every driver alike.
    backend: str = "tap"


PVF_BLK = "pvf_blk"
VIRTIO_BLK = "virtio_blk"
AHCI = "ahci"
IDE = "ide"
PVF_NET = "pvf_net"
VIRTIO_NET = "virtio_net"
E1000 = "e1000"
PVF_NET_USER = "pvf_net-user-networking"


def block_setups(quick: bool) -> list[BlockSetup]:
    """pvf_blk, the in-tree virtio_blk, AHCI on q35 and (full runs) legacy IDE on pc."""
    setups = [
        BlockSetup(
            PVF_BLK,
            "virtio",
            "pvda",
            ours=True,
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bpvf\d+-(req\.|virtqueues|intx)",
        ),
        BlockSetup(
            VIRTIO_BLK,
            "virtio",
            "vda",
            in_tree=("virtio_pci", "virtio_blk"),
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bvirtio\d+-(req\.|virtqueues)",
        ),
        BlockSetup(
            AHCI, "ahci", "sda", in_tree=("ahci", "sd_mod"), regions=r"^ahci", irqs=r"\bahci\b"
        ),
    ]
    if not quick:
        # q35 has no legacy IDE controller: IDE runs on a machine that has one.
        setups.append(
            BlockSetup(
                IDE,
                "ide",
                "sda",
                in_tree=("ata_piix", "sd_mod"),
                regions=r"^ide$|bmdma",
                irqs=r"\bata_piix\b",
                legacy_ide=True,
            )
        )
    return setups


def net_setups() -> list[NetSetup]:
    """pvf_net, the in-tree virtio_net and e1000 over TAP, and pvf_net over user networking
    (a labelled row: what slirp allows any driver)."""
    pvf_net = NetSetup(
        PVF_NET,
        "virtio",
        ours=True,
        regions=r"^virtio-pci-|^msix-",
        irqs=r"\bpvf\d+-(input|output|virtqueues|intx)",
    )
    return [
        pvf_net,
        NetSetup(
            VIRTIO_NET,
            "virtio",
            in_tree=("virtio_pci", "virtio_net"),
            regions=r"^virtio-pci-|^msix-",
            irqs=r"\bvirtio\d+-(input|output|virtqueues)",
        ),
        NetSetup(E1000, "e1000", in_tree=("e1000",), regions=r"^e1000", irqs=r"\beth\d+\b"),
        dataclasses.replace(pvf_net, name=PVF_NET_USER, backend="user"),
    ]


@dataclass(frozen=True)
class FioJob:
    """One fio workload; `traced_ios` bounds it by request count in the traced boots."""

    name: str
    rw: str
    bs: str
    iodepth: int
    traced_ios: int
    unit: str  # the throughput figure reported: MB/s or IOPS
    extra: tuple[str, ...] = ()
    throughput: bool = True  # False: only measured in traced boots (a diagnostic)


def fio_jobs(quick: bool) -> list[FioJob]:
    scale = 1 if quick else 2
    return [
        FioJob("seqread-1m", "read", "1M", 1, 16 * scale, "MB/s"),
        FioJob("seqwrite-1m", "write", "1M", 1, 16 * scale, "MB/s"),
        FioJob("randread-4k-qd1", "randread", "4k", 1, 250 * scale, "IOPS"),
        FioJob("randwrite-4k-qd1", "randwrite", "4k", 1, 250 * scale, "IOPS"),
        FioJob("randread-4k-qd16", "randread", "4k", 16, 1000 * scale, "IOPS"),
        FioJob("randwrite-4k-qd16", "randwrite", "4k", 16, 1000 * scale, "IOPS"),
        # Sixteen requests per io_submit: one plug, so blk-mq marks only the last one
        # bd->last. Tells whether a driver kicks once per batch or once per request.
        FioJob(
            "randread-4k-qd16-batch",
            "randread",
            "4k",
            16,
            1000 * scale,
            "IOPS",
            extra=("--iodepth_batch_submit=16", "--iodepth_batch_complete_min=16"),
            throughput=False,
        ),
    ]


@dataclass(frozen=True)
class NetJob:
    """One network workload, run by iperf3 in the guest (or busybox ping from the namespace)
    against a peer in the bench's namespace."""

    name: str
    kind: str  # stream (TCP) | udp (small datagrams, as fast as they go) | rr (ICMP echo)
    direction: str = "guest-to-host"  # or host-to-guest (iperf3 -R)
    flows: int = 1  # iperf3 -P
    datagram: int | None = None  # udp: payload bytes (iperf3 -l)
    # False: the host TAP's GSO and TSO off (ethtool -K), the seeds' advice; the host then
    # segments what it sends the guest, and coalesces nothing.
    tap_offloads: bool = True
    mtu: int = 1500  # both ends of the link
    virtio_only: bool = False  # a question about the virtio drivers only

    @property
    def unit(self) -> str:
        return {"stream": "MB/s", "udp": "pps", "rr": "us"}[self.kind]

    @property
    def better(self) -> str:
        """Which way a ratio to the baseline is good."""
        return "lower" if self.kind == "rr" else "higher"

    def applies_to(self, setup: NetSetup) -> bool:
        if setup.backend == "user":
            # Slirp caps every driver alike: one flow each way is enough to show it.
            plain = self.tap_offloads and self.mtu == 1500
            return self.kind == "stream" and self.flows == 1 and plain
        return not self.virtio_only or setup.model == "virtio"


def _stream_name(direction: str, flows: int, suffix: str = "") -> str:
    return direction + (f"-{flows}flows" if flows > 1 else "") + suffix


def net_jobs(quick: bool) -> list[NetJob]:
    """TCP streams each way with 1 and 4 flows, request/response latency, 64-byte UDP each way,
    then MTU 9000 and the host TAP's GSO/TSO off for the virtio drivers. The one-flow
    streams keep the names `guest-to-host` and `host-to-guest` (the traced workloads)."""
    jobs = [
        NetJob(_stream_name(direction, flows), "stream", direction, flows)
        for flows in (1, 4)
        for direction in NET_DIRECTIONS
    ]
    jobs.append(NetJob("request-response", "rr"))
    jobs += [NetJob(f"udp64-{d}", "udp", d, datagram=64) for d in NET_DIRECTIONS]
    jobs += [
        NetJob(_stream_name(d, 1, "-mtu9000"), "stream", d, mtu=9000, virtio_only=True)
        for d in NET_DIRECTIONS
    ]
    # The advice is about streams: in a quick run one flow each way answers it.
    for flows in (1,) if quick else (1, 4):
        jobs += [
            NetJob(
                _stream_name(d, flows, "-tap-gso-off"),
                "stream",
                d,
                flows,
                tap_offloads=False,
                virtio_only=True,
            )
            for d in NET_DIRECTIONS
        ]
    return jobs


#: The parts of a run, in the order they run: the toolchain first, as `invoke setup build`
#: also refreshes the modules the devices' boots load.
PARTS = ("toolchain", "blk", "net")


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does."""

    quick: bool
    reps: int  # boots per setup (median over them)
    fio_seconds: int
    disk_mib: int
    net_bytes: int  # each traced transfer (and each nc transfer without iperf3)
    net_seconds: int  # each iperf3 job
    rr_count: int  # round trips in the request/response job
    boot_runs: int
    depmod_runs: int
    build_runs: int
    image_boot_runs: int  # boots of the target's Debian image, firmware to login shell
    parts: tuple[str, ...] = PARTS


def make_plan(quick: bool, parts: Sequence[str] = PARTS) -> Plan:
    """The plan of a quick or a full run of these parts (PARTS order, each once)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise UsageError(f"no bench part {', '.join(unknown)} (parts: {', '.join(PARTS)})")
    chosen = tuple(p for p in PARTS if p in parts)
    if not chosen:
        raise UsageError(f"a bench run needs a part (parts: {', '.join(PARTS)})")
    return dataclasses.replace(_plan(quick), parts=chosen)


def _plan(quick: bool) -> Plan:
    if quick:
        return Plan(
            quick=True,
            reps=1,
            fio_seconds=2,
            disk_mib=128,
            net_bytes=8 << 20,
            net_seconds=2,
            rr_count=500,
            boot_runs=3,
            depmod_runs=3,
            build_runs=1,
            image_boot_runs=1,
        )
    return Plan(
        quick=False,
        reps=3,
        fio_seconds=4,
        disk_mib=256,
        net_bytes=32 << 20,
        net_seconds=5,
        rr_count=2000,
        boot_runs=5,
        depmod_runs=5,
        build_runs=3,
        image_boot_runs=3,
    )


NET_DIRECTIONS = ("guest-to-host", "host-to-guest")
NET_COST_UNITS = ("packet", "KiB")  # the traced transfers' costs are counted per each
