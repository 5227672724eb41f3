"""Istio-style node ids: `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`, and the node metadata
meshd reads (nested at most MAX_METADATA_DEPTH levels)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

PROXY_TYPES = ("sidecar", "router")
MAX_NODE_ID = 1024  # Istio's are ~100 characters
MAX_METADATA_DEPTH = 20  # Istio's node metadata nests about 5 levels (PROXY_CONFIG)


class InvalidNodeId(ValueError):
    pass


class InvalidNodeMetadata(ValueError):
    pass


@dataclass(frozen=True)
class Proxy:
    node_id: str
    type: str
    ip: str
    pod: str
    namespace: str
    dns_domain: str
    # The proxy's Envoy has the node agent's SDS (static cluster `sds-grpc` serving `default` and
    # `ROOTCA`): only then does it get mTLS configuration, which would otherwise be rejected.
    sds: bool = False
    # Its traffic is captured by iptables (node metadata `INTERCEPTION_MODE: REDIRECT`): it gets the
    # capture-mode listeners (`translate/capture.py`) instead of listeners bound on its address.
    capture: bool = False
    # A proxyless gRPC client (node metadata `GENERATOR: grpc`, as Istio's agent writes it for them): it gets
    # gRPC's view of the mesh (`translate/proxyless.py`), never a sidecar's listeners.
    proxyless: bool = False
    # The node metadata's string values (EnvoyFilter `match.proxy`: `metadata`, `proxyVersion` = ISTIO_VERSION).
    metadata: tuple[tuple[str, str], ...] = ()


def parse_node_id(node_id: str) -> Proxy:
    """Parse a node id; raises InvalidNodeId with the reason (quoting at most the start of the node id)."""
    shown = repr(node_id) if len(node_id) <= 120 else f"{node_id[:120]!r}...(+{len(node_id) - 120} chars)"
    if len(node_id) > MAX_NODE_ID:
        raise InvalidNodeId(f"node id {shown} is longer than {MAX_NODE_ID} characters")
    if not node_id.isprintable():
        raise InvalidNodeId(f"node id {shown} has control characters")
    parts = node_id.split("~")
    if len(parts) != 4:
        raise InvalidNodeId(
            f"node id {shown} must have 4 '~'-separated parts: type~ip~pod.namespace~namespace.svc.domain"
        )
    kind, ip, ident, domain = parts
    if kind not in PROXY_TYPES:
        raise InvalidNodeId(f"node id {shown}: type {kind!r} is not one of {', '.join(PROXY_TYPES)}")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidNodeId(f"node id {shown}: {ip!r} is not an IP address") from None
    pod, dot, namespace = ident.rpartition(".")
    if not dot or not pod or not namespace:
        raise InvalidNodeId(f"node id {shown}: {ident!r} must be <pod>.<namespace>")
    if not domain.startswith(f"{namespace}.svc."):
        raise InvalidNodeId(f"node id {shown}: domain {domain!r} must be {namespace}.svc.<domain>")
    return Proxy(node_id=node_id, type=kind, ip=ip, pod=pod, namespace=namespace, dns_domain=domain)


def check_node_metadata(metadata: Mapping[str, object]) -> None:
    """Raises InvalidNodeMetadata if maps and lists nest deeper than MAX_METADATA_DEPTH (the top map is
    level 1). Iterative: the walk itself never recurses."""
    pending: list[tuple[object, int]] = [(metadata, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_METADATA_DEPTH:
            raise InvalidNodeMetadata(f"node metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        children = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, Mapping | list))


# Node metadata saying a proxy's agent serves it a workload certificate over SDS: `SDS: "true"`
# (the flag older Istio agents sent; `meshd agent` sets it when it obtains certificates).
SDS_METADATA = "SDS"


def has_sds(metadata: Mapping[str, object]) -> bool:
    flag = metadata.get(SDS_METADATA)
    return flag is True or str(flag).lower() == "true"


# Node metadata naming how the proxy's traffic reaches it (Istio's field): `REDIRECT` (iptables NAT
# redirection to 15001/15006: capture mode), `NONE` (no capture: listeners bound on the proxy's address).
INTERCEPTION_METADATA = "INTERCEPTION_MODE"
REDIRECT = "REDIRECT"


def has_capture(metadata: Mapping[str, object]) -> bool:
    return str(metadata.get(INTERCEPTION_METADATA, "")).upper() == REDIRECT


# Node metadata naming the config generator a client wants (Istio's field): `grpc` for proxyless gRPC.
GENERATOR_METADATA = "GENERATOR"
GRPC_GENERATOR = "grpc"


def is_proxyless(metadata: Mapping[str, object]) -> bool:
    return str(metadata.get(GENERATOR_METADATA, "")).lower() == GRPC_GENERATOR


def string_metadata(metadata: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """The top-level string values of node metadata, sorted (what EnvoyFilters match on)."""
    return tuple(sorted((k, v) for k, v in metadata.items() if isinstance(v, str)))
