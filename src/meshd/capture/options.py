"""Capture options as Istio's annotations spell them, validated with errors naming the flag."""

from __future__ import annotations

import dataclasses
import ipaddress

OUTBOUND_PORT = 15001  # Envoy's virtualOutbound listener
INBOUND_PORT = 15006  # Envoy's virtualInbound listener
PROXY_UID = 1337
# Envoy admin, outbound, inbound, agent status, health, Prometheus: never captured inbound.
PROXY_PORTS = (15000, 15001, 15006, 15020, 15021, 15090)
ALL = "*"


class CaptureOptionError(ValueError):
    """An invalid option; the message names the flag and the bad value."""


@dataclasses.dataclass(frozen=True)
class CaptureOptions:
    """What to capture. Ranges and ports are normalised; `None` for an include list means `*` (everything)."""

    proxy_uid: int = PROXY_UID
    proxy_gid: int = PROXY_UID
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    include_outbound_ranges: tuple[str, ...] | None = None
    exclude_outbound_ranges: tuple[str, ...] = ()
    include_inbound_ports: tuple[int, ...] | None = None
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()


def parse_ranges(value: str, *, flag: str) -> tuple[str, ...]:
    """A comma-separated list of IPv4 CIDRs (a bare address is a /32); empty means none."""
    out: list[str] = []
    for item in _items(value, flag=flag):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise CaptureOptionError(f"{flag}: {item!r} is not an IP range (CIDR such as 10.0.0.0/8)") from None
        if net.version != 4:
            raise CaptureOptionError(f"{flag}: {item!r} is IPv6; only IPv4 ranges are supported")
        if str(net) not in out:
            out.append(str(net))
    return tuple(out)


def parse_ports(value: str, *, flag: str) -> tuple[int, ...]:
    """A comma-separated list of TCP ports 1-65535; empty means none."""
    out: list[int] = []
    for item in _items(value, flag=flag):
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise CaptureOptionError(f"{flag}: {item!r} is not a port (1-65535)")
        if int(item) not in out:
            out.append(int(item))
    return tuple(out)


def parse_id(value: str, *, flag: str) -> int:
    if not value.isdigit():
        raise CaptureOptionError(f"{flag}: {value!r} is not a numeric id")
    return int(value)


def build_options(
    *,
    proxy_uid: str = str(PROXY_UID),
    proxy_gid: str | None = None,
    include_outbound_ip_ranges: str = ALL,
    exclude_outbound_ip_ranges: str = "",
    include_inbound_ports: str = ALL,
    exclude_inbound_ports: str = "",
    exclude_outbound_ports: str = "",
) -> CaptureOptions:
    """Options from the flag strings (as the annotations carry them); raises CaptureOptionError."""
    uid = parse_id(proxy_uid, flag="--proxy-uid")
    gid = uid if proxy_gid is None else parse_id(proxy_gid, flag="--proxy-gid")
    return CaptureOptions(
        proxy_uid=uid,
        proxy_gid=gid,
        include_outbound_ranges=None
        if include_outbound_ip_ranges.strip() == ALL
        else parse_ranges(include_outbound_ip_ranges, flag="--include-outbound-ip-ranges"),
        exclude_outbound_ranges=parse_ranges(exclude_outbound_ip_ranges, flag="--exclude-outbound-ip-ranges"),
        include_inbound_ports=None
        if include_inbound_ports.strip() == ALL
        else parse_ports(include_inbound_ports, flag="--include-inbound-ports"),
        exclude_inbound_ports=parse_ports(exclude_inbound_ports, flag="--exclude-inbound-ports"),
        exclude_outbound_ports=parse_ports(exclude_outbound_ports, flag="--exclude-outbound-ports"),
    )


def _items(value: str, *, flag: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if ALL in items:
        raise CaptureOptionError(f"{flag}: '*' must be used alone, got {value!r}")
    return [item for item in items if item]
