"""What a pod's annotations ask of its sidecar (pure): traffic capture exclusions, image, log level and
the meaningful fields of `proxy.istio.io/config`, each value checked before it reaches a command line.

A value that cannot be used raises `BadAnnotation` naming the annotation; the injector refuses the pod
with that message (as Istio's injector fails), it never injects a sidecar that would not start.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from meshd.api.proxyconfig import ENV_NAME, RESERVED_ENV

INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
PROXY_IMAGE = "sidecar.istio.io/proxyImage"
LOG_LEVEL = "sidecar.istio.io/logLevel"
PROXY_CONFIG = "proxy.istio.io/config"

# Envoy's own ports are never captured inbound (Prometheus, health, agent), as Istio's injector adds.
ALWAYS_EXCLUDED_INBOUND = (15090, 15021, 15020)
ENVOY_LOG_LEVELS = frozenset({"trace", "debug", "info", "warning", "warn", "error", "critical", "off"})


class BadAnnotation(ValueError):
    def __init__(self, annotation: str, message: str) -> None:
        super().__init__(f"metadata.annotations[{annotation}]: {message}")
        self.annotation = annotation


@dataclass(frozen=True)
class SidecarOptions:
    include_outbound_ip_ranges: str = "*"
    exclude_outbound_ip_ranges: str = ""
    include_inbound_ports: str = "*"
    exclude_inbound_ports: str = ""  # besides ALWAYS_EXCLUDED_INBOUND
    exclude_outbound_ports: str = ""
    image: str | None = None  # None: the injector's default image
    log_level: str | None = None
    concurrency: int | None = None  # 0: meshd's default (Istio's "from the CPU limit")
    discovery_address: str | None = None
    # the istio-proxy container's extra environment: proxyMetadata / ProxyConfig environmentVariables
    environment: tuple[tuple[str, str], ...] = ()


def _ip_ranges(annotation: str, value: str, *, star: bool) -> str:
    text = value.strip()
    if text == "*" and star:
        return "*"
    ranges = [item.strip() for item in text.split(",") if item.strip()]
    for item in ranges:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise BadAnnotation(annotation, f"{item!r} is not an IP range (CIDR)") from None
    return ",".join(ranges)


def _ports(annotation: str, value: str, *, star: bool) -> str:
    text = value.strip()
    if text == "*" and star:
        return "*"
    ports = [item.strip() for item in text.split(",") if item.strip()]
    for item in ports:
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise BadAnnotation(annotation, f"{item!r} is not a port (1-65535)")
    return ",".join(str(int(p)) for p in ports)


def _proxy_config(value: str) -> dict[str, Any]:
    try:
        parsed = yaml.safe_load(value) if value.strip() else {}
    except yaml.YAMLError as exc:
        raise BadAnnotation(PROXY_CONFIG, f"not YAML/JSON: {str(exc).splitlines()[0]}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise BadAnnotation(PROXY_CONFIG, "must be a ProxyConfig mapping")
    return parsed


def _proxy_metadata(metadata: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadAnnotation(PROXY_CONFIG, "proxyMetadata must be a map of strings")
    for name in metadata:
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise BadAnnotation(PROXY_CONFIG, f"proxyMetadata: {name!r} is not a container environment variable name")
        if name in RESERVED_ENV:
            raise BadAnnotation(PROXY_CONFIG, f"proxyMetadata: {name} is set by meshd's injector (agent identity)")
    return tuple(sorted(metadata.items()))


def sidecar_options(annotations: Mapping[str, str]) -> SidecarOptions:
    """The options the annotations ask for. Raises BadAnnotation."""

    def get(name: str) -> str | None:
        value = annotations.get(name)
        if value is not None and not isinstance(value, str):
            raise BadAnnotation(name, "must be a string")
        return value

    options: dict[str, Any] = {}
    for name, field, star in (
        (INCLUDE_OUTBOUND_IP_RANGES, "include_outbound_ip_ranges", True),
        (EXCLUDE_OUTBOUND_IP_RANGES, "exclude_outbound_ip_ranges", False),
    ):
        if (value := get(name)) is not None:
            options[field] = _ip_ranges(name, value, star=star)
    for name, field, star in (
        (INCLUDE_INBOUND_PORTS, "include_inbound_ports", True),
        (EXCLUDE_INBOUND_PORTS, "exclude_inbound_ports", False),
        (EXCLUDE_OUTBOUND_PORTS, "exclude_outbound_ports", False),
    ):
        if (value := get(name)) is not None:
            options[field] = _ports(name, value, star=star)
    if (image := get(PROXY_IMAGE)) is not None:
        if not image.strip() or any(c.isspace() for c in image.strip()):
            raise BadAnnotation(PROXY_IMAGE, "must be an image reference")
        options["image"] = image.strip()
    if (level := get(LOG_LEVEL)) is not None:
        if level.strip().lower() not in ENVOY_LOG_LEVELS:
            raise BadAnnotation(LOG_LEVEL, f"{level!r} is not an Envoy log level")
        options["log_level"] = level.strip().lower()
    if (raw := get(PROXY_CONFIG)) is not None:
        config = _proxy_config(raw)
        concurrency = config.get("concurrency")
        if concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0:
                raise BadAnnotation(PROXY_CONFIG, "concurrency must be a non-negative integer")
            options["concurrency"] = concurrency  # 0: Istio's "all cores"; meshd's default
        metadata = config.get("proxyMetadata")
        if metadata is not None:
            options["environment"] = _proxy_metadata(metadata)
        address = config.get("discoveryAddress")
        if address is not None:
            host, sep, port = str(address).rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise BadAnnotation(PROXY_CONFIG, f"discoveryAddress {json.dumps(address)} must be host:port")
            options["discovery_address"] = str(address)
    return SidecarOptions(**options)


def inbound_exclusions(options: SidecarOptions) -> str:
    """The init container's --exclude-inbound-ports: Envoy's own ports, then the annotation's."""
    ports = [str(p) for p in ALWAYS_EXCLUDED_INBOUND]
    ports += [p for p in options.exclude_inbound_ports.split(",") if p and p not in ports]
    return ",".join(ports)
