"""VirtualService `tcp` and `tls` routes (Istio's TCPRoute and TLSRoute): L4 match attributes and
weighted destinations, validated as Istio validates them (a TLS route matches SNI hosts that fall
within the VirtualService's hosts; subnets are IPs or CIDR ranges).

Cross-field validators raise `ValueError("<field>: <message>")`; the parser folds the field into
the error's path (`spec.tls[0].match[1].sniHosts[0]`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from pydantic import Field, model_validator

from meshd.api.destination import MAX_WEIGHT, Destination, check_weights
from meshd.api.meta import StrictModel
from meshd.api.values import PortNumber

_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def check_subnet(text: str) -> str:
    """An IPv4 or IPv6 address with an optional prefix length (`a.b.c.d/xx` or `a.b.c.d`)."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR range") from None
    return text


def _check_subnets(subnets: list[str]) -> None:
    for i, subnet in enumerate(subnets):
        try:
            check_subnet(subnet)
        except ValueError as err:
            raise ValueError(f"destinationSubnets[{i}]: {err}") from None


def check_sni_host(host: str) -> str:
    """A DNS name whose leftmost label may be `*`, `*` alone (any name), or an IP address."""
    if host == "*":
        return host
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if not labels or len(host) > 255 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not a DNS name (a wildcard only as the whole leftmost label)")
    return host


def host_within(host: str, pattern: str) -> bool:
    """Whether `host` (possibly a wildcard) falls within `pattern`: equal, or inside a wildcard pattern
    (`a.example.com` and `*.b.example.com` are within `*.example.com`; `*` covers everything)."""
    if pattern == "*" or host == pattern:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return False


class L4MatchAttributes(StrictModel):
    """Istio's L4MatchAttributes (`sourceSubnet`, hidden in Istio's docs, matches the source address)."""

    destination_subnets: list[str] = Field(default_factory=list)
    port: PortNumber | None = None
    source_subnet: str = ""
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str = ""

    @model_validator(mode="after")
    def _check(self) -> L4MatchAttributes:
        _check_subnets(self.destination_subnets)
        if self.source_subnet:
            try:
                check_subnet(self.source_subnet)
            except ValueError as err:
                raise ValueError(f"sourceSubnet: {err}") from None
        return self


class TLSMatchAttributes(StrictModel):
    sni_hosts: list[str] = Field(min_length=1)
    destination_subnets: list[str] = Field(default_factory=list)
    port: PortNumber | None = None
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str = ""

    @model_validator(mode="after")
    def _check(self) -> TLSMatchAttributes:
        _check_subnets(self.destination_subnets)
        for i, host in enumerate(self.sni_hosts):
            try:
                check_sni_host(host)
            except ValueError as err:
                raise ValueError(f"sniHosts[{i}]: {err}") from None
        return self


class RouteDestination(StrictModel):
    """An L4 weighted destination (Istio's RouteDestination: no header operations)."""

    destination: Destination
    weight: int = Field(default=0, ge=0, le=MAX_WEIGHT)


def _weights(route: list[RouteDestination]) -> None:
    if not route:
        raise ValueError("route: at least one destination is required")
    check_weights([d.weight for d in route])


def effective_weights(route: Sequence[RouteDestination]) -> list[int]:
    """A single destination takes everything whatever its weight; otherwise the weights are relative."""
    return [100] if len(route) == 1 else [d.weight for d in route]


class TCPRoute(StrictModel):
    match: list[L4MatchAttributes] = Field(default_factory=list)
    route: list[RouteDestination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> TCPRoute:
        _weights(self.route)
        return self

    def weights(self) -> list[int]:
        return effective_weights(self.route)


class TLSRoute(StrictModel):
    match: list[TLSMatchAttributes] = Field(min_length=1)
    route: list[RouteDestination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> TLSRoute:
        _weights(self.route)
        return self

    def weights(self) -> list[int]:
        return effective_weights(self.route)


def check_sni_hosts(routes: Sequence[TLSRoute], hosts: Sequence[str]) -> None:
    """Every SNI host of a TLS route must fall within one of the VirtualService's hosts (as Istio checks
    it: literally, so a short host matches only the same short name)."""
    for i, route in enumerate(routes):
        for j, match in enumerate(route.match):
            for k, sni in enumerate(match.sni_hosts):
                if not any(host_within(sni, host) for host in hosts):
                    raise ValueError(
                        f"tls[{i}].match[{j}].sniHosts[{k}]: {sni!r} is not within any of the VirtualService's "
                        f"hosts ({', '.join(hosts)})"
                    )
