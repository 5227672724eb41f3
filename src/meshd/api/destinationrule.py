"""networking.istio.io DestinationRule: subsets and every traffic policy (load balancer, connection
pool, outlier detection, TLS, port-level settings), validated as Istio does and so that the clusters
they become are accepted by Envoy."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from meshd.api.destination import PortSelector
from meshd.api.meta import Resource, StrictModel
from meshd.api.values import Duration, DurationOrZero, Percent, PortNumber, parse_duration

INT32_MAX = 2_147_483_647  # Istio's int32 fields; Envoy's thresholds are uint32
MAX_RING_SIZE = 8_388_608  # Envoy's limit for a ring hash's minimum size


class HTTPCookie(StrictModel):
    name: str = Field(min_length=1)
    path: str = ""
    ttl: DurationOrZero | None = None


class RingHash(StrictModel):
    minimum_ring_size: int = Field(default=0, ge=0, le=8_388_608)


class Maglev(StrictModel):
    table_size: int = Field(default=0, ge=0, le=5_000_011)

    @model_validator(mode="after")
    def _prime(self) -> Maglev:
        n = self.table_size
        if n and (n < 2 or any(n % d == 0 for d in range(2, int(n**0.5) + 1))):
            raise ValueError(f"tableSize: {n} must be a prime number (Envoy requires it)")
        return self


class ConsistentHashLB(StrictModel):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    minimum_ring_size: int | None = Field(default=None, ge=0, le=MAX_RING_SIZE)  # deprecated: ringHash.minimumRingSize

    @model_validator(mode="after")
    def _check(self) -> ConsistentHashLB:
        if self.http_header_name is not None and any(c in self.http_header_name for c in "\r\n\0"):
            raise ValueError("httpHeaderName: a header name cannot contain CR, LF or NUL")
        keys = [
            f
            for f in ("http_header_name", "http_cookie", "use_source_ip", "http_query_parameter_name")
            if getattr(self, f) not in (None, False, "")
        ]
        if len(keys) != 1:
            raise ValueError(
                "httpHeaderName: exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName "
                "is required"
            )
        if self.ring_hash is not None and self.maglev is not None:
            raise ValueError("maglev: only one of ringHash or maglev may be set")
        return self


def _check_locality(text: str, field: str) -> None:
    """Istio's locality syntax: region/zone/subzone, where '*' may only stand for a whole last part."""
    parts = text.split("/")
    if len(parts) > 3 or any(not p for p in parts):
        raise ValueError(f"{field}: {text!r} is not a locality (region, region/zone or region/zone/subzone)")
    for i, part in enumerate(parts):
        if "*" in part and (part != "*" or i != len(parts) - 1):
            raise ValueError(f"{field}: {text!r}: '*' may only be the last part of a locality")


class LocalityDistribute(StrictModel):
    from_: str = Field(alias="from", min_length=1)
    to: dict[str, int] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> LocalityDistribute:
        _check_locality(self.from_, "from")
        for locality in self.to:
            _check_locality(locality, "to")
        total = sum(self.to.values())
        if total != 100:
            raise ValueError(f"to: weights must add up to 100, got {total}")
        if any(w < 0 for w in self.to.values()):
            raise ValueError("to: weights cannot be negative")
        return self


class LocalityFailover(StrictModel):
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> LocalityFailover:
        if "/" in self.from_ or "/" in self.to:
            raise ValueError("from: failover is between regions (no '/')")
        if self.from_ == self.to:
            raise ValueError("to: failover to the same region")
        return self


class LocalityLbSetting(StrictModel):
    distribute: list[LocalityDistribute] = Field(default_factory=list)
    failover: list[LocalityFailover] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list)
    enabled: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> LocalityLbSetting:
        if self.distribute and (self.failover or self.failover_priority):
            raise ValueError("failover: only one of distribute or failover/failoverPriority may be set")
        return self


class WarmupConfiguration(StrictModel):
    duration: Duration
    minimum_percent: Percent | None = None
    aggression: float | None = Field(default=None, ge=1)


class LoadBalancerSettings(StrictModel):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLbSetting | None = None
    warmup_duration_secs: Duration | None = None
    warmup: WarmupConfiguration | None = None

    @model_validator(mode="after")
    def _check(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("consistentHash: only one of simple or consistentHash may be set")
        if self.warmup_duration_secs is not None and self.warmup is not None:
            raise ValueError("warmup: only one of warmupDurationSecs or warmup may be set")
        return self


class TcpKeepalive(StrictModel):
    probes: int = Field(default=0, ge=0, le=INT32_MAX)
    time: Duration | None = None
    interval: Duration | None = None

    @model_validator(mode="after")
    def _whole_seconds(self) -> TcpKeepalive:
        # Envoy takes keepalive time and interval in whole seconds; 0 would make the socket option fail.
        for name, value in (("time", self.time), ("interval", self.interval)):
            if value is not None and parse_duration(value) < 1:
                raise ValueError(f"{name}: {value!r} must be at least 1s (keepalive is set in whole seconds)")
        return self


class TCPSettings(StrictModel):
    max_connections: int = Field(default=0, ge=0, le=INT32_MAX)
    connect_timeout: Duration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: DurationOrZero | None = None


class HTTPSettings(StrictModel):
    http1_max_pending_requests: int = Field(default=0, ge=0, le=INT32_MAX)
    http2_max_requests: int = Field(default=0, ge=0, le=INT32_MAX)
    max_requests_per_connection: int = Field(default=0, ge=0, le=INT32_MAX)
    max_retries: int = Field(default=0, ge=0, le=INT32_MAX)
    idle_timeout: Duration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] = "DEFAULT"
    use_client_protocol: bool = False
    max_concurrent_streams: int = Field(default=0, ge=0, le=INT32_MAX)


class ConnectionPoolSettings(StrictModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(StrictModel):
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int | None = Field(default=None, ge=0, le=INT32_MAX)
    consecutive_gateway_errors: int | None = Field(default=None, ge=0, le=INT32_MAX)
    consecutive_5xx_errors: int | None = Field(default=None, ge=0, le=INT32_MAX, alias="consecutive5xxErrors")
    consecutive_errors: int | None = Field(default=None, ge=0, le=INT32_MAX)  # deprecated: consecutive gateway errors
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int = Field(default=0, ge=0, le=100)
    min_health_percent: int = Field(default=0, ge=0, le=100)

    @model_validator(mode="after")
    def _check(self) -> OutlierDetection:
        if self.consecutive_local_origin_failures is not None and not self.split_external_local_origin_errors:
            raise ValueError(
                "consecutiveLocalOriginFailures: requires splitExternalLocalOriginErrors: true (as in Istio)"
            )
        return self


class ClientTLSSettings(StrictModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    subject_alt_names: list[str] = Field(default_factory=list)
    sni: str = ""
    insecure_skip_verify: bool | None = None
    ca_crl: str = ""

    @model_validator(mode="after")
    def _check(self) -> ClientTLSSettings:
        files = self.client_certificate or self.private_key or self.ca_certificates or self.ca_crl
        if self.mode in ("DISABLE", "ISTIO_MUTUAL") and (files or self.credential_name):
            raise ValueError(f"mode: {self.mode} does not take certificates or credentialName")
        if self.credential_name and files:
            raise ValueError("credentialName: cannot be combined with certificate files")
        if self.mode == "MUTUAL" and not self.credential_name:
            if not self.client_certificate:
                raise ValueError("clientCertificate: required for MUTUAL (or set credentialName)")
            if not self.private_key:
                raise ValueError("privateKey: required for MUTUAL (or set credentialName)")
        if self.mode == "SIMPLE" and (self.client_certificate or self.private_key):
            raise ValueError("clientCertificate: SIMPLE is one-way TLS; use MUTUAL to present a certificate")
        for field, path in (
            ("clientCertificate", self.client_certificate),
            ("privateKey", self.private_key),
            ("caCertificates", self.ca_certificates),
            ("caCrl", self.ca_crl),
        ):
            if path and not path.startswith("/"):
                raise ValueError(f"{field}: {path!r} must be an absolute path (a file in the proxy's filesystem)")
        if len(self.sni.encode()) > 255:
            raise ValueError("sni: at most 255 bytes (Envoy's limit)")
        if self.credential_name and not self.credential_name.removeprefix("kubernetes://"):
            raise ValueError("credentialName: names no Secret")
        return self


class PortTrafficPolicy(StrictModel):
    port: PortSelector
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TunnelSettings(StrictModel):
    """TCP tunnelled over HTTP to `targetHost:targetPort` through the rule's host (an HTTP proxy)."""

    protocol: Literal["CONNECT", "POST"] = "CONNECT"
    target_host: str = Field(min_length=1)
    target_port: PortNumber

    @model_validator(mode="after")
    def _check(self) -> TunnelSettings:
        if any(c in self.target_host for c in "/: \t\r\n") and not _is_ipv6(self.target_host):
            raise ValueError(f"targetHost: {self.target_host!r} must be an FQDN or an IP address")
        return self


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


class ProxyProtocol(StrictModel):
    """The PROXY protocol header the proxy sends upstream before the connection's bytes."""

    version: Literal["V1", "V2"] = "V1"


class TrafficPolicy(StrictModel):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = Field(default_factory=list)
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None

    @model_validator(mode="after")
    def _unique_ports(self) -> TrafficPolicy:
        seen: set[int] = set()
        for i, setting in enumerate(self.port_level_settings):
            if setting.port.number in seen:
                raise ValueError(f"portLevelSettings[{i}].port: port {setting.port.number} is listed twice")
            seen.add(setting.port.number)
        return self


class Subset(StrictModel):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class WorkloadSelector(StrictModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class DestinationRuleSpec(StrictModel):
    host: str = Field(min_length=1)
    subsets: list[Subset] = Field(default_factory=list)
    traffic_policy: TrafficPolicy | None = None
    export_to: list[str] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None

    @model_validator(mode="after")
    def _unique_subsets(self) -> DestinationRuleSpec:
        seen: set[str] = set()
        for i, subset in enumerate(self.subsets):
            if subset.name in seen:
                raise ValueError(f"subsets[{i}].name: duplicate subset name {subset.name!r}")
            seen.add(subset.name)
            if "|" in subset.name:
                raise ValueError(f"subsets[{i}].name: {subset.name!r} cannot contain '|'")
        return self

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)


class DestinationRule(Resource):
    kind: Literal["DestinationRule"]
    spec: DestinationRuleSpec
