"""The mesh's own view of services and endpoints, independent of where they were declared
(a Kubernetes Service + EndpointSlices, or an Istio ServiceEntry + WorkloadEntries)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SIDECAR_LABEL = "security.istio.io/tlsMode"

# Port-name prefixes and appProtocol values, as Istio reads them.
_PROTOCOLS = {
    "http": "HTTP",
    "http2": "HTTP2",
    "grpc": "GRPC",
    "grpc-web": "HTTP2",  # "same as http2" in Istio's protocol selection table
    "h2c": "HTTP2",
    "kubernetes.io/h2c": "HTTP2",  # appProtocol values Kubernetes defines
    "kubernetes.io/grpc": "GRPC",
    "tcp": "TCP",
    "tls": "TLS",
    "https": "HTTPS",
    "mongo": "TCP",
    "redis": "TCP",
    "mysql": "TCP",
}


def protocol_of(*, name: str, app_protocol: str | None = None, declared: str | None = None) -> str:
    """Istio's protocol selection: explicit protocol, then appProtocol, then the port-name prefix."""
    for candidate in (declared, app_protocol):
        if candidate and candidate.lower() in _PROTOCOLS:
            return _PROTOCOLS[candidate.lower()]
        if candidate and candidate.upper() in {"HTTP", "HTTP2", "GRPC", "TCP", "TLS", "HTTPS"}:
            return candidate.upper()
    # A port name is `<protocol>[-<suffix>]`: `http-web` is HTTP, `httpweb` is not.
    prefix = name.split("-", 1)[0].lower()
    return _PROTOCOLS.get(name.lower(), _PROTOCOLS.get(prefix, "TCP"))


def is_http(protocol: str) -> bool:
    return protocol in ("HTTP", "HTTP2", "GRPC")


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
