"""networking.istio.io Gateway: the servers (port, hosts, TLS) a gateway proxy exposes, validated as
Istio validates them plus what Envoy would otherwise refuse, so an accepted Gateway always becomes
listeners Envoy accepts.

Every field of Istio's API is either translated or refused by name: an unknown field, a field meshd
does not translate (`defaultEndpoint`, a `unix://` bind, `port.targetPort`) and a TLS setting that
would be ignored in its mode (a certificate on a PASSTHROUGH server, subjectAltNames without client
verification) are errors, never dropped.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Literal

from pydantic import Field, model_validator

from meshd.api.meta import Resource, StrictModel, refused
from meshd.api.values import PortNumber

HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "GRPC-WEB")
TLS_PROTOCOLS = ("HTTPS", "TLS")
# Istio treats its former protocol-specific ports as plain TCP at a gateway
TCP_PROTOCOLS = ("TCP", "MONGO", "MYSQL", "REDIS")
PROTOCOLS = (*HTTP_PROTOCOLS, *TLS_PROTOCOLS, *TCP_PROTOCOLS)

PASSTHROUGH, SIMPLE, MUTUAL = "PASSTHROUGH", "SIMPLE", "MUTUAL"
AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL = "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"
TLS_MODES = (PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL)
TERMINATING = (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL)
CLIENT_VERIFYING = (MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL)
TLS_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
# The cipher suite names Envoy (BoringSSL) accepts in tls_params.cipher_suites (Istio's list).
CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-RSA-AES128-SHA", "ECDHE-PSK-AES128-CBC-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
        "ECDHE-PSK-AES256-CBC-SHA", "AES128-SHA", "PSK-AES128-CBC-SHA", "AES256-SHA", "PSK-AES256-CBC-SHA",
        "DES-CBC3-SHA",
    }
)  # fmt: skip
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?$")
_HEX_HASH = re.compile(r"^[0-9A-Fa-f]{64}$")

# The credentialName of a Gateway API listener's certificateRef to another namespace's Secret (Istio's name):
# `kubernetes-gateway://<namespace>/<name>`, served only where a ReferenceGrant allows it (translate/secrets.py).
GATEWAY_SDS_PREFIX = "kubernetes-gateway://"


class GatewayPort(StrictModel):
    number: PortNumber
    protocol: str = Field(min_length=1)
    name: str = ""
    target_port: int | None = refused("gateway servers listen on port.number; a separate target port is not used")

    @model_validator(mode="after")
    def _check(self) -> GatewayPort:
        if self.protocol.upper() not in PROTOCOLS:
            raise ValueError(f"protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if not self.name:
            raise ValueError("name: a gateway server port needs a name (Istio requires it)")
        return self

    @property
    def kind(self) -> str:
        """ "http", "tls" or "tcp": servers of different kinds cannot share a port."""
        protocol = self.protocol.upper()
        return "http" if protocol in HTTP_PROTOCOLS else "tls" if protocol in TLS_PROTOCOLS else "tcp"


class TLSCertificate(StrictModel):
    server_certificate: str = Field(min_length=1)
    private_key: str = Field(min_length=1)
    ca_certificates: str = ""


def _check_spki(value: str) -> None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{value!r} is not a base64-encoded SHA-256 hash (32 bytes)")


def _check_hash(value: str) -> None:
    if not _HEX_HASH.match(value.replace(":", "")):
        raise ValueError(f"{value!r} is not a hex-encoded SHA-256 hash (64 hex digits, colons allowed)")


class ServerTLSSettings(StrictModel):
    https_redirect: bool = False
    mode: Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"] | None = (
        None
    )
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    credential_name: str = ""
    credential_names: list[str] = Field(default_factory=list, max_length=2)
    tls_certificates: list[TLSCertificate] = Field(default_factory=list, max_length=2)
    subject_alt_names: list[str] = Field(default_factory=list)
    verify_certificate_spki: list[str] = Field(default_factory=list)
    verify_certificate_hash: list[str] = Field(default_factory=list)
    min_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] = "TLS_AUTO"
    max_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] = "TLS_AUTO"
    cipher_suites: list[str] = Field(default_factory=list)

    @property
    def effective_mode(self) -> str:
        """The mode, PASSTHROUGH when unset (Istio's default value)."""
        return self.mode or PASSTHROUGH

    @property
    def has_credentials(self) -> bool:
        return bool(
            self.credential_name
            or self.credential_names
            or self.tls_certificates
            or self.server_certificate
            or self.private_key
        )

    @property
    def has_tls_options(self) -> bool:
        """Any setting of a TLS handshake (certificates, client verification, versions, ciphers)."""
        return bool(
            self.has_credentials
            or self.ca_certificates
            or self.ca_crl
            or self.subject_alt_names
            or self.verify_certificate_spki
            or self.verify_certificate_hash
            or self.cipher_suites
            or self.min_protocol_version != "TLS_AUTO"
            or self.max_protocol_version != "TLS_AUTO"
        )

    def credential_bases(self) -> tuple[str, ...]:
        """The Secret names the server's certificates come from (credentialName / credentialNames)."""
        names = [self.credential_name] if self.credential_name else list(self.credential_names)
        return tuple(n.removeprefix("kubernetes://") for n in names)

    @model_validator(mode="after")
    def _check(self) -> ServerTLSSettings:
        for i, value in enumerate(self.verify_certificate_spki):
            try:
                _check_spki(value)
            except ValueError as err:
                raise ValueError(f"verifyCertificateSpki[{i}]: {err}") from None
        for i, value in enumerate(self.verify_certificate_hash):
            try:
                _check_hash(value)
            except ValueError as err:
                raise ValueError(f"verifyCertificateHash[{i}]: {err}") from None
        for i, suite in enumerate(self.cipher_suites):
            if suite not in CIPHER_SUITES:
                raise ValueError(f"cipherSuites[{i}]: {suite!r} is not a cipher suite Envoy supports")
        low, high = self.min_protocol_version, self.max_protocol_version
        if "TLS_AUTO" not in (low, high) and TLS_VERSIONS.index(low) > TLS_VERSIONS.index(high):
            raise ValueError(f"minProtocolVersion: {low} is above maxProtocolVersion {high}")
        for i, name in enumerate(self.credential_names):
            if not name.removeprefix("kubernetes://"):
                raise ValueError(f"credentialNames[{i}]: a credential name cannot be empty")
        if self.credential_name and not self.credential_name.removeprefix("kubernetes://"):
            raise ValueError("credentialName: a credential name cannot be empty")
        self._check_sources()
        self._check_mode()
        return self

    def _check_sources(self) -> None:
        """One source of server certificates: credentialName, credentialNames, files or tlsCertificates."""
        sources = [
            name
            for name, used in (
                ("credentialName", self.credential_name),
                ("credentialNames", self.credential_names),
                ("serverCertificate", self.server_certificate or self.private_key),
                ("tlsCertificates", self.tls_certificates),
            )
            if used
        ]
        if len(sources) > 1:
            raise ValueError(f"{sources[1]}: only one of {', '.join(sources)} may be set")
        if (self.server_certificate or self.private_key) and not (self.server_certificate and self.private_key):
            missing = "privateKey" if self.server_certificate else "serverCertificate"
            raise ValueError(f"{missing}: serverCertificate and privateKey go together")
        if self.credential_name or self.credential_names:
            for field, value in (("caCertificates", self.ca_certificates), ("caCrl", self.ca_crl)):
                if value:
                    raise ValueError(
                        f"{field}: not with credentialName (the CA comes from the Secret, or <name>-cacert)"
                    )
        cas = {c.ca_certificates for c in self.tls_certificates if c.ca_certificates}
        if len(cas | ({self.ca_certificates} if self.ca_certificates and cas else set())) > 1:
            raise ValueError("tlsCertificates: the entries name different caCertificates (one CA bundle is used)")

    def _check_mode(self) -> None:
        mode = self.effective_mode
        if mode in (PASSTHROUGH, AUTO_PASSTHROUGH):
            if self.has_tls_options:
                raise ValueError(f"mode: {mode} does not terminate TLS: certificates and TLS options cannot apply")
            return
        if mode == ISTIO_MUTUAL:
            if self.has_credentials or self.ca_certificates or self.ca_crl:
                raise ValueError(
                    "mode: ISTIO_MUTUAL uses the gateway's workload certificate: no serverCertificate, privateKey,"
                    " caCertificates, caCrl, credentialName(s) or tlsCertificates"
                )
            return
        if not self.has_credentials:
            raise ValueError(
                f"mode: {mode} needs a server certificate: credentialName, credentialNames, tlsCertificates or"
                " serverCertificate and privateKey"
            )
        files = self.server_certificate or self.tls_certificates
        ca = self.ca_certificates or any(c.ca_certificates for c in self.tls_certificates)
        if mode in (MUTUAL, OPTIONAL_MUTUAL) and files and not ca:
            raise ValueError(f"caCertificates: {mode} with certificate files needs caCertificates to verify clients")
        if mode == SIMPLE:
            for field, used in (
                ("caCertificates", self.ca_certificates or ca),
                ("caCrl", self.ca_crl),
                ("subjectAltNames", self.subject_alt_names),
                ("verifyCertificateSpki", self.verify_certificate_spki),
                ("verifyCertificateHash", self.verify_certificate_hash),
            ):
                if used:
                    raise ValueError(f"{field}: SIMPLE does not verify clients (use MUTUAL or OPTIONAL_MUTUAL)")


def split_host(host: str) -> tuple[str, str]:
    """`[namespace/]dnsName` -> (namespace, dnsName); no namespace means `*` (any)."""
    namespace, slash, name = host.partition("/")
    return (namespace, name) if slash else ("*", host)


def _check_server_host(host: str) -> None:
    namespace, name = split_host(host)
    if namespace not in ("*", ".") and not _LABEL.match(namespace):
        raise ValueError(f"{host!r}: {namespace!r} is not a namespace, '*' or '.'")
    if not name:
        raise ValueError(f"{host!r}: the host name is empty")
    if name == "*":
        return
    labels = name.removeprefix("*.").split(".")
    if "*" in name.removeprefix("*."):
        raise ValueError(f"{host!r}: a wildcard is only allowed as the leftmost label")
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r}: {name!r} is not a DNS name")


class Server(StrictModel):
    port: GatewayPort
    bind: str = ""
    hosts: list[str] = Field(min_length=1)
    tls: ServerTLSSettings | None = None
    default_endpoint: str | None = refused("not implemented by Istio either")
    name: str = ""

    @model_validator(mode="after")
    def _check(self) -> Server:
        for i, host in enumerate(self.hosts):
            try:
                _check_server_host(host)
            except ValueError as err:
                raise ValueError(f"hosts[{i}]: {err}") from None
        if self.bind:
            try:
                ipaddress.ip_address(self.bind)
            except ValueError:
                raise ValueError(f"bind: {self.bind!r} is not an IP address (unix sockets are not supported)") from None
        kind, protocol, tls = self.port.kind, self.port.protocol.upper(), self.tls
        if kind == "tls" and tls is None:
            raise ValueError(f"tls: a {protocol} server needs TLS settings")
        if tls is None:
            return self
        if kind == "tcp":
            raise ValueError(f"tls: a {protocol} server carries no TLS (use protocol TLS)")
        if kind == "http":
            if tls.mode is not None or tls.has_tls_options:
                raise ValueError(f"tls: a {protocol} server does not terminate TLS; only httpsRedirect applies")
            return self
        mode = tls.effective_mode
        if tls.https_redirect and protocol != "HTTPS":
            raise ValueError("tls.httpsRedirect: applies to HTTP and HTTPS servers only")
        if mode == AUTO_PASSTHROUGH and protocol != "TLS":
            raise ValueError("tls.mode: AUTO_PASSTHROUGH needs protocol TLS")
        if tls.https_redirect and mode in (PASSTHROUGH, AUTO_PASSTHROUGH):
            raise ValueError(f"tls.httpsRedirect: a {mode} server sees no HTTP requests")
        return self

    @property
    def protocol(self) -> str:
        return self.port.protocol.upper()

    @property
    def terminates_tls(self) -> bool:
        return self.tls is not None and self.port.kind == "tls" and self.tls.effective_mode in TERMINATING

    @property
    def serves_http(self) -> bool:
        """HTTP routes apply: a plain HTTP server, or HTTPS whose TLS the gateway terminates."""
        return self.port.kind == "http" or (self.protocol == "HTTPS" and self.terminates_tls)

    @property
    def serves_tcp(self) -> bool:
        """TCP routes apply: a TCP server, or a TLS server whose TLS the gateway terminates."""
        return self.port.kind == "tcp" or (self.protocol == "TLS" and self.terminates_tls)

    @property
    def passthrough(self) -> bool:
        """TLS routes (by SNI) apply: TLS the gateway does not terminate."""
        return self.port.kind == "tls" and self.tls is not None and self.tls.effective_mode == PASSTHROUGH

    @property
    def auto_passthrough(self) -> bool:
        return self.tls is not None and self.tls.effective_mode == AUTO_PASSTHROUGH


class GatewaySpec(StrictModel):
    selector: dict[str, str] = Field(default_factory=dict)
    servers: list[Server] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> GatewaySpec:
        names: dict[str, int] = {}
        kinds: dict[tuple[str, int], tuple[int, str]] = {}
        for i, server in enumerate(self.servers):
            if server.name:
                if server.name in names:
                    other = names[server.name]
                    raise ValueError(f"servers[{i}].name: {server.name!r} is also the name of servers[{other}]")
                names[server.name] = i
            at = (server.bind, server.port.number)
            first = kinds.setdefault(at, (i, server.port.kind))
            if first[1] != server.port.kind:
                raise ValueError(
                    f"servers[{i}].port: port {server.port.number} is a {first[1]} port in servers[{first[0]}];"
                    f" a {server.protocol} server cannot share it"
                )
        return self


class Gateway(Resource):
    kind: Literal["Gateway"]
    spec: GatewaySpec
