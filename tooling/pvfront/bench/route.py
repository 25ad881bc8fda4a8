"""Where a bench guest's NIC sits and how it reaches the bench's peers."""

from __future__ import annotations

from dataclasses import dataclass

from pvfront import netns


@dataclass(frozen=True)
class Route:
    """The guest's address, the peer's address as the guest sees it and where the peer
    listens: in the bench's namespace (TAP) or on the host's loopback (user networking)."""

    guest_cidr: str  # the guest's address on its NIC
    host: str  # the peer's address, as the guest sees it
    listen: str  # the address the peer listens on, in ns if any
    ns: netns.NetNamespace | None = None

    @classmethod
    def user_networking(cls) -> Route:
        # QEMU's user network takes 10.0.2.2 to the host's loopback.
        return cls("10.0.2.15/24", "10.0.2.2", "127.0.0.1")

    @classmethod
    def tap(cls, ns: netns.NetNamespace, tap: str) -> Route:
        host = ns.host_address(tap)
        return cls(ns.guest_cidr(tap), host, host, ns)

    @property
    def guest(self) -> str:
        return self.guest_cidr.split("/")[0]
