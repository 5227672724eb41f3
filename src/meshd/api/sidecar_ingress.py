"""The inbound side of Istio's Sidecar resource: `ingress` listeners (custom inbound ports forwarded to
the application at `defaultEndpoint`, optionally terminating TLS) and `inboundConnectionPool`, and the
`outboundTrafficPolicy` of the outbound side. Validated as Istio does for sidecars (TLS modes SIMPLE and
MUTUAL with certificate files), naming the field.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from meshd.api.destination import Destination
from meshd.api.destinationrule import ConnectionPoolSettings
from meshd.api.meta import StrictModel, refused
from meshd.api.values import PortNumber

CAPTURE_MODES = ("DEFAULT", "IPTABLES", "NONE")
CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
# The cipher suites BoringSSL (Envoy) knows by name; Envoy refuses a listener naming another.
CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-PSK-AES128-CBC-SHA",
        "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA", "ECDHE-PSK-AES256-CBC-SHA", "AES128-GCM-SHA256",
        "AES256-GCM-SHA384", "AES128-SHA", "PSK-AES128-CBC-SHA", "AES256-SHA", "PSK-AES256-CBC-SHA", "DES-CBC3-SHA",
    }
)  # fmt: skip
OUTBOUND_MODES = ("ALLOW_ANY", "REGISTRY_ONLY")


class SidecarPort(StrictModel):
    number: PortNumber
    protocol: str = ""
    name: str = ""
    target_port: PortNumber | None = None


class IngressTLSSettings(StrictModel):
    """Istio's ServerTLSSettings as a sidecar's ingress listener takes them."""

    mode: str = "SIMPLE"
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    credential_name: str | None = refused(
        "a sidecar's ingress listener reads its certificate from files: give serverCertificate and privateKey"
    )
    credential_names: list[str] | None = refused(
        "a sidecar's ingress listener reads its certificate from files: give serverCertificate and privateKey"
    )
    subject_alt_names: list[str] = Field(default_factory=list)
    verify_certificate_spki: list[str] = Field(default_factory=list)
    verify_certificate_hash: list[str] = Field(default_factory=list)
    min_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] = "TLS_AUTO"
    max_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] = "TLS_AUTO"
    cipher_suites: list[str] = Field(default_factory=list)
    https_redirect: bool | None = refused("httpsRedirect applies to gateways only")

    @model_validator(mode="after")
    def _check(self) -> IngressTLSSettings:
        if self.mode not in ("SIMPLE", "MUTUAL"):
            raise ValueError(f"mode: {self.mode!r}: a sidecar's ingress terminates TLS with SIMPLE or MUTUAL only")
        if not self.server_certificate:
            raise ValueError("serverCertificate: required (a file in the proxy's filesystem)")
        if not self.private_key:
            raise ValueError("privateKey: required (a file in the proxy's filesystem)")
        if self.mode == "MUTUAL" and not self.ca_certificates:
            raise ValueError("caCertificates: required for MUTUAL (the CA that signs client certificates)")
        for field, path in (
            ("serverCertificate", self.server_certificate),
            ("privateKey", self.private_key),
            ("caCertificates", self.ca_certificates),
            ("caCrl", self.ca_crl),
        ):
            if path and not path.startswith("/"):
                raise ValueError(f"{field}: {path!r} must be an absolute path (a file in the proxy's filesystem)")
        order = TLS_VERSIONS.index
        low, high = self.min_protocol_version, self.max_protocol_version
        if "TLS_AUTO" not in (low, high) and order(low) > order(high):
            raise ValueError(f"minProtocolVersion: {low} is above maxProtocolVersion {high}")
        for i, suite in enumerate(self.cipher_suites):
            names = suite.strip("[]").split("|")
            if not all(name in CIPHER_SUITES for name in names):
                raise ValueError(f"cipherSuites[{i}]: {suite!r} is not a cipher suite Envoy knows")
        return self


def parse_endpoint(text: str) -> tuple[str, int] | str:
    """`127.0.0.1:PORT` or `0.0.0.0:PORT` as (host, port), or a Unix socket path from `unix:///path`."""
    if text.startswith("unix://"):
        path = text.removeprefix("unix://")
        if not path or (not path.startswith("/") and not path.startswith("@")):
            raise ValueError(f"{text!r}: a Unix socket is unix:///path/to/socket (or unix://@abstract)")
        return path
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} must be 127.0.0.1:PORT, 0.0.0.0:PORT or unix:///path/to/socket")
    if host not in ("127.0.0.1", "0.0.0.0", "::1", "::"):
        raise ValueError(
            f"{text!r}: the application is reached on loopback (127.0.0.1:PORT) or at the workload's address "
            "(0.0.0.0:PORT); other addresses are not supported"
        )
    return host, int(port)


class IstioIngressListener(StrictModel):
    port: SidecarPort
    bind: str = ""
    capture_mode: CaptureMode = "DEFAULT"
    default_endpoint: str = ""
    tls: IngressTLSSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> IstioIngressListener:
        if self.bind:
            if self.bind.startswith("unix://"):
                raise ValueError("bind: Unix domain socket binds are not supported by meshd; bind an IP address")
            try:
                ipaddress.ip_address(self.bind)
            except ValueError:
                raise ValueError(f"bind: {self.bind!r} is not an IP address") from None
        if self.default_endpoint:
            try:
                parse_endpoint(self.default_endpoint)
            except ValueError as err:
                raise ValueError(f"defaultEndpoint: {err}") from None
        return self

    def endpoint(self) -> tuple[str, int] | str:
        """Where the application listens: (host, port) with host 0.0.0.0 for the workload's own address
        (also when `defaultEndpoint` is absent: the workload's address at the port), or a socket path."""
        if not self.default_endpoint:
            return "0.0.0.0", self.port.target_port or self.port.number
        return parse_endpoint(self.default_endpoint)


class OutboundTrafficPolicy(StrictModel):
    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"
    egress_proxy: Destination | None = refused(
        "unknown destinations pass through to their original destination with ALLOW_ANY; route them with a "
        "ServiceEntry and VirtualService instead"
    )


def check_ingress(listeners: list[IstioIngressListener]) -> None:
    """Ports are unique across a Sidecar's ingress listeners."""
    seen: set[int] = set()
    for i, listener in enumerate(listeners):
        if listener.port.number in seen:
            raise ValueError(f"ingress[{i}].port.number: port {listener.port.number} is listed twice")
        seen.add(listener.port.number)
