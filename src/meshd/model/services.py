"""The mesh's own view of services and endpoints, independent of where they were declared
(a Kubernetes Service + EndpointSlices, or an Istio ServiceEntry + WorkloadEntries)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SIDECAR_LABEL = "security.istio.io/tlsMode"

# Port-name prefixes and appProtocol values, as Istio reads them (its protocol selection table).
_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "grpc": "GRPC",
    "grpc-web": "GRPC-WEB",  # "same as http2" in Istio's table: HTTP/2 to the app
    "h2c": "HTTP2",
    "kubernetes.io/h2c": "HTTP2",  # appProtocol values Kubernetes defines
    "kubernetes.io/grpc": "GRPC",
    "kubernetes.io/ws": "HTTP",
    "kubernetes.io/wss": "TLS",
    "tcp": "TCP",
    "tls": "TLS",
    "https": "HTTPS",
    "mongo": "MONGO",
    "redis": "REDIS",
    "mysql": "MYSQL",
    "udp": "UDP",
}
# What an unnamed port (or one whose name and appProtocol say nothing Istio knows) gets: the sidecar
# sniffs each connection (HTTP/1.1 and HTTP/2 go through the HTTP connection manager, anything else is TCP).
UNKNOWN = "UNKNOWN"
_DECLARED = {"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "HTTPS", "MONGO", "REDIS", "MYSQL", "UDP"}


def protocol_of(
    *, name: str, app_protocol: str | None = None, declared: str | None = None, transport: str = "TCP"
) -> str:
    """Istio's protocol selection: explicit protocol (a ServiceEntry's), then appProtocol, then the
    port-name prefix (`<protocol>[-<suffix>]`), else UNKNOWN (sniffed). A Kubernetes port whose
    `protocol` (transport) is UDP or SCTP is that, whatever its name."""
    if transport.upper() in ("UDP", "SCTP"):
        return transport.upper()
    for candidate in (declared, app_protocol):
        if candidate and candidate.lower() in _PROTOCOLS:
            return _PROTOCOLS[candidate.lower()]
        if candidate and candidate.upper() in _DECLARED:
            return candidate.upper()
    # A port name is `<protocol>[-<suffix>]`: `http-web` is HTTP, `httpweb` is not.
    prefix = name.split("-", 1)[0].lower()
    return _PROTOCOLS.get(name.lower(), _PROTOCOLS.get(prefix, UNKNOWN))


def is_http(protocol: str) -> bool:
    """Declared HTTP (routed by the HTTP connection manager on every connection)."""
    return protocol in ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")


def is_http2(protocol: str) -> bool:
    """HTTP/2 to the upstream (Istio: http2, grpc, grpc-web, h2c)."""
    return protocol in ("HTTP2", "GRPC", "GRPC-WEB")


def is_sniffed(protocol: str) -> bool:
    """Neither name nor appProtocol says: HTTP is detected per connection, the rest is TCP."""
    return protocol == UNKNOWN


def routes_http(protocol: str) -> bool:
    """The port has an HTTP route configuration (declared HTTP, or sniffed)."""
    return is_http(protocol) or is_sniffed(protocol)


def is_served(protocol: str) -> bool:
    """Whether a sidecar can carry the port at all (Istio does not proxy UDP or SCTP)."""
    return protocol not in ("UDP", "SCTP")


def is_tls(protocol: str) -> bool:
    """TLS the proxy does not terminate: routed by the ClientHello's SNI (VirtualService `tls` routes)."""
    return protocol in ("TLS", "HTTPS")


DNS_RESOLUTIONS = ("DNS", "DNS_ROUND_ROBIN")


@dataclass(frozen=True)
class ServicePort:
    name: str
    number: int
    protocol: str
    target_port: int | str | None = None


@dataclass(frozen=True)
class MeshService:
    hostname: str
    namespace: str
    name: str
    ports: tuple[ServicePort, ...]
    # EDS (endpoints from the model), DNS / DNS_ROUND_ROBIN (Envoy resolves every address / the first
    # one), NONE (the original destination of captured traffic)
    resolution: str = "EDS"
    addresses: tuple[str, ...] = ()  # virtual IPs or CIDR ranges (ServiceEntry `addresses`)
    creation: str = ""
    export_to: tuple[str, ...] = ()  # Istio exportTo; empty = everyone
    mesh_external: bool = False  # a ServiceEntry with location MESH_EXTERNAL (never auto mTLS)
    subject_alt_names: tuple[str, ...] = ()  # ServiceEntry subjectAltNames: also verified in Istio mTLS
    # A Kubernetes Service with clusterIP None: its pods are also reached one by one, by the hostname
    # their EndpointSlice gives them (StatefulSets: `<pod>.<service>.<ns>.svc.<domain>`) or their address.
    headless: bool = False
    # a Kubernetes Service's pod selector, sorted (the pods serving a Gateway API Gateway that names the Service in
    # its `addresses`: model/gateway_api/addresses.py)
    selector: tuple[tuple[str, str], ...] = ()
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Services are dictionary keys on the push path: hash once.
        object.__setattr__(
            self,
            "_hash",
            hash(
                (
                    self.hostname,
                    self.namespace,
                    self.name,
                    self.ports,
                    self.resolution,
                    self.addresses,
                    self.creation,
                    self.export_to,
                    self.mesh_external,
                    self.subject_alt_names,
                    self.headless,
                )
            ),
        )

    def __hash__(self) -> int:
        return self._hash

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.number == number), None)

    @property
    def dns(self) -> bool:
        """Envoy resolves its endpoints' names (STRICT_DNS or LOGICAL_DNS cluster)."""
        return self.resolution in DNS_RESOLUTIONS

    @property
    def wildcard(self) -> bool:
        return self.hostname.startswith("*")


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = ""
    workload: str = ""
    ready: bool = True
    weight: int = 0
    locality: str = ""  # region/zone/subzone ("" when unknown)
    # The workload's sidecar captures its traffic (iptables): peers reach it at its own port.
    captured: bool = False
    hostname: str = ""  # its hostname within a headless service (EndpointSlice `hostname`, StatefulSet pods)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Endpoint tuples key the endpoint cache on the push path: hash once.
        fields = (
            self.address,
            self.port,
            self.labels,
            self.service_account,
            self.workload,
            self.ready,
            self.weight,
            self.locality,
            self.captured,
            self.hostname,
        )
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @property
    def has_sidecar(self) -> bool:
        return dict(self.labels).get(SIDECAR_LABEL) == "istio"

    def matches(self, selector: dict[str, str]) -> bool:
        mine = dict(self.labels)
        return all(mine.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Workload:
    """A pod or WorkloadEntry: what a sidecar with this address is attached to."""

    name: str
    namespace: str
    address: str
    labels: tuple[tuple[str, str], ...] = field(default=())
    service_account: str = ""
    locality: str = ""  # region/zone/subzone ("" when unknown)
    captured: bool = False  # its sidecar captures its traffic (see is_captured)
    # its `proxy.istio.io/config` annotation's gatewayTopology.numTrustedProxies (None: not set), and what is
    # wrong with that annotation ("": nothing); read for gateway workloads
    gateway_trusted_proxies: int | None = None
    proxy_config_problem: str = ""


INTERCEPTION_ANNOTATION = "sidecar.istio.io/interceptionMode"
INJECTED_ANNOTATION = "sidecar.istio.io/status"  # what the injector adds to a pod it injected


def is_captured(annotations: Mapping[str, str]) -> bool:
    """Whether a pod's sidecar captures its traffic (iptables redirects inbound to 15006), so peers
    dial the app's own port: `sidecar.istio.io/interceptionMode` if set (REDIRECT yes, anything else no),
    else whether the injector injected it (`sidecar.istio.io/status`, its default mode is REDIRECT)."""
    mode = annotations.get(INTERCEPTION_ANNOTATION)
    if mode is not None:
        return mode.upper() == "REDIRECT"
    return INJECTED_ANNOTATION in annotations


LOCALITY_LABEL = "istio-locality"
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"


def locality_from_labels(labels: dict[str, str]) -> str:
    """A workload's locality as `region/zone/subzone`: Istio's `istio-locality` label (dots, since a
    label value cannot hold '/'), else the standard topology labels."""
    explicit = labels.get(LOCALITY_LABEL)
    if explicit:
        return "/".join(explicit.split(".", 2))
    parts = [labels.get(REGION_LABEL, ""), labels.get(ZONE_LABEL, ""), labels.get(SUBZONE_LABEL, "")]
    return "/".join(parts).rstrip("/")


def split_locality(locality: str) -> tuple[str, str, str]:
    region, _, rest = locality.partition("/")
    zone, _, subzone = rest.partition("/")
    return region, zone, subzone
