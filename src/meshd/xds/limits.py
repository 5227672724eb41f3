"""How many ADS streams one server admits: in all, and per peer address (pure bookkeeping).

The plaintext port is unauthenticated: without a bound, one host could open streams until meshd runs out
of memory or file descriptors. A refused stream is answered RESOURCE_EXHAUSTED by the servicer; Envoy
retries with backoff. Per-peer counting needs the real peer address: the secure port sees only its TLS
front on loopback, so it counts streams in all only (the front bounds connections).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.1:5555` / `ipv6:[::1]:5555` -> the address without the port."""
    if not peer.startswith(("ipv4:", "ipv6:")):
        return peer  # unix sockets and the like: counted as one peer
    host = peer.split(":", 1)[1]
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class StreamLimits:
    max_streams: int
    max_per_peer: int | None  # None: not counted per peer
    total: int = 0
    per_peer: dict[str, int] = field(default_factory=dict)

    def admit(self, peer: str) -> str | None:
        """Count a new stream from `peer` (an address), or return why it is refused."""
        if self.total >= self.max_streams:
            return "max_streams"
        if self.max_per_peer is not None and self.per_peer.get(peer, 0) >= self.max_per_peer:
            return "max_streams_per_peer"
        self.total += 1
        if self.max_per_peer is not None:
            self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        return None

    def release(self, peer: str) -> None:
        self.total -= 1
        if self.max_per_peer is not None:
            left = self.per_peer.get(peer, 0) - 1
            if left > 0:
                self.per_peer[peer] = left
            else:
                self.per_peer.pop(peer, None)
