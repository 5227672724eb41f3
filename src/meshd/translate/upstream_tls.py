"""Client TLS of outbound clusters: a DestinationRule's `tls` (DISABLE / SIMPLE / MUTUAL, with
certificate files or a credentialName) as Envoy's `envoy.transport_sockets.tls` UpstreamTlsContext.

As Istio builds it:
- SIMPLE verifies the server against `caCertificates` (absent: the OS CA bundle), with
  `subjectAltNames` as SAN matchers and `caCrl`; `insecureSkipVerify` drops verification;
- MUTUAL also presents `clientCertificate` / `privateKey`;
- `sni` absent: Envoy sets SNI from the request's Host/authority (`auto_sni`) and, when no
  subjectAltNames are given either, checks the server certificate against it (`auto_san_validation`);
- `credentialName` `configmap://<namespace>/<name>` (a BackendTLSPolicy's CA): the CA over SDS under that name,
  from the ConfigMap's `ca.crt`, the same for proxies of every namespace;
- `credentialName`: the certificate comes over SDS as `kubernetes://<name>` and the CA as
  `kubernetes://<name>-cacert`, both resolved from Secrets in the *proxy's* namespace (see
  `translate/secrets.py`), so the cluster itself is the same for every namespace;
- HTTP/2 upstreams advertise ALPN `h2`; TLS 1.2 to 1.3.
Istio serves certificate files to Envoy over its agent's SDS (`file-cert:`); meshd puts the paths
into the TLS context and Envoy reads them itself.
`ISTIO_MUTUAL` (the mesh's own mTLS over the node agent's SDS) is built by `translate/client_mtls.py`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2

from meshd.api.destinationrule import ClientTLSSettings, DestinationRule
from meshd.translate.proto import pack

TLS_SOCKET = "envoy.transport_sockets.tls"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SDS_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"
# A CA from a ConfigMap (`ca.crt`) of any namespace, as Istio names it: what a BackendTLSPolicy's
# caCertificateRefs becomes (model/gateway_api/backend_tls.py).
CONFIGMAP_SDS_PREFIX = "configmap://"
# What Istio verifies a server against when caCertificates is absent (VERIFY_CERTIFICATE_AT_CLIENT).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SDS_FETCH_TIMEOUT_S = 15
_SAN = common_pb2.SubjectAltNameMatcher


def tls_blocks(rule: DestinationRule) -> Iterator[tuple[str, ClientTLSSettings]]:
    """Every tls block of a rule (top level, port level, subsets and theirs), with its field path."""
    levels = [("spec.trafficPolicy", rule.spec.traffic_policy)]
    levels += [(f"spec.subsets[{i}].trafficPolicy", s.traffic_policy) for i, s in enumerate(rule.spec.subsets)]
    for path, policy in levels:
        if policy is None:
            continue
        if policy.tls is not None:
            yield f"{path}.tls", policy.tls
        for i, setting in enumerate(policy.port_level_settings):
            if setting.tls is not None:
                yield f"{path}.portLevelSettings[{i}].tls", setting.tls


def credential_settings(rule: DestinationRule) -> Iterator[tuple[str, ClientTLSSettings]]:
    """Every tls block of a rule that names a credentialName, with its field path."""
    for path, tls in tls_blocks(rule):
        if tls.credential_name and tls.mode in ("SIMPLE", "MUTUAL"):
            yield path, tls


def credential_base(name: str) -> str:
    """The Secret name behind a credentialName (Istio also accepts it with the `kubernetes://` prefix)."""
    return name.removeprefix(SDS_PREFIX)


def sds_names(tls: ClientTLSSettings | None) -> tuple[str, ...]:
    """The SDS resources a cluster with these settings asks for (none for files or plaintext)."""
    if tls is None or not tls.credential_name or tls.mode not in ("SIMPLE", "MUTUAL"):
        return ()
    if tls.credential_name.startswith(CONFIGMAP_SDS_PREFIX):  # a CA only
        return () if tls.insecure_skip_verify else (tls.credential_name,)
    base = SDS_PREFIX + credential_base(tls.credential_name)
    names = (base,) if tls.mode == "MUTUAL" else ()
    return names if tls.insecure_skip_verify else (*names, base + CA_SUFFIX)


def _file(path: str) -> base_pb2.DataSource:
    return base_pb2.DataSource(filename=path)


def san_matchers(names: list[str]) -> list[common_pb2.SubjectAltNameMatcher]:
    """Exact SAN matchers; the SAN type follows the value (an IP, a URI such as spiffe://..., a DNS name)."""
    out = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            san_type = _SAN.IP_ADDRESS
        except ValueError:
            san_type = _SAN.URI if "://" in name else _SAN.DNS
        out.append(_SAN(san_type=san_type, matcher=string_pb2.StringMatcher(exact=name)))
    return out


def ads_secret(name: str) -> secret_pb2.SdsSecretConfig:
    """A secret over the ADS stream. A secret meshd cannot serve (no such Secret) keeps the cluster
    warming only until this timeout (Envoy's default, stated here): then the cluster is used without
    it and its connections fail (closed), as with Istio."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
            initial_fetch_timeout=duration_pb2.Duration(seconds=SDS_FETCH_TIMEOUT_S),
        ),
    )


def upstream_tls_context(tls: ClientTLSSettings | None, *, http2: bool = False) -> tls_pb2.UpstreamTlsContext | None:
    """The UpstreamTlsContext for the settings, or None for plaintext."""
    if tls is None or tls.mode == "DISABLE":
        return None
    if tls.mode == "ISTIO_MUTUAL":
        # Istio's own mTLS: translate/client_mtls.py (proxies without the agent's SDS stay plaintext)
        return None
    context = tls_pb2.UpstreamTlsContext(sni=tls.sni)
    common = context.common_tls_context  # edited in place (a constructor argument would be a copy)
    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    common.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    if http2:
        common.alpn_protocols.append("h2")
    verify = not tls.insecure_skip_verify
    sans = san_matchers(tls.subject_alt_names)
    if tls.credential_name.startswith(CONFIGMAP_SDS_PREFIX):
        if verify:
            combined = common.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(sans)
            combined.validation_context_sds_secret_config.CopyFrom(ads_secret(tls.credential_name))
        return context
    if tls.credential_name:
        base = SDS_PREFIX + credential_base(tls.credential_name)
        if tls.mode == "MUTUAL":
            common.tls_certificate_sds_secret_configs.append(ads_secret(base))
        if verify:
            combined = common.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(sans)
            combined.validation_context_sds_secret_config.CopyFrom(ads_secret(base + CA_SUFFIX))
        return context
    if tls.mode == "MUTUAL":
        common.tls_certificates.append(
            common_pb2.TlsCertificate(
                certificate_chain=_file(tls.client_certificate), private_key=_file(tls.private_key)
            )
        )
    if verify:
        validation = common.validation_context
        validation.trusted_ca.CopyFrom(_file(tls.ca_certificates or SYSTEM_CA_BUNDLE))
        validation.match_typed_subject_alt_names.extend(sans)
        if tls.ca_crl:
            validation.crl.CopyFrom(_file(tls.ca_crl))
    return context


def transport_socket(tls: ClientTLSSettings | None, *, http2: bool = False) -> base_pb2.TransportSocket | None:
    """`envoy.transport_sockets.tls` for the settings; None = plaintext."""
    context = upstream_tls_context(tls, http2=http2)
    if context is None:
        return None
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def apply_upstream_tls(cluster: cluster_pb2.Cluster, tls: ClientTLSSettings | None, *, protocol: str) -> None:
    """Set a cluster's transport socket and, for HTTP upstreams without an explicit `sni`, Envoy's
    auto_sni (and auto_san_validation when no subjectAltNames are given and verification is on)."""
    http2 = protocol in ("HTTP2", "GRPC")
    socket = transport_socket(tls, http2=http2)
    if socket is None or tls is None:
        return
    cluster.transport_socket.CopyFrom(socket)
    if tls.sni or protocol not in ("HTTP", "HTTP2", "GRPC"):
        return
    packed = cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    if packed.type_url:
        packed.Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    upstream = options.upstream_http_protocol_options
    upstream.auto_sni = True
    if not tls.subject_alt_names and not tls.insecure_skip_verify:
        upstream.auto_san_validation = True
    packed.Pack(options)


def tls_files(tls: ClientTLSSettings | None) -> tuple[tuple[str, str], ...]:
    """(field, path) of each certificate file the settings make Envoy open."""
    if tls is None or tls.mode not in ("SIMPLE", "MUTUAL") or tls.credential_name:
        return ()
    fields = [("clientCertificate", tls.client_certificate), ("privateKey", tls.private_key)]
    if not tls.insecure_skip_verify:
        fields += [("caCertificates", tls.ca_certificates), ("caCrl", tls.ca_crl)]
    return tuple((field, path) for field, path in fields if path)


def rule_files(rule: DestinationRule) -> tuple[tuple[str, ClientTLSSettings], ...]:
    """The tls blocks of a rule that make Envoy open certificate files, with their field paths."""
    return tuple((path, tls) for path, tls in tls_blocks(rule) if tls_files(tls))
