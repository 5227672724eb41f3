"""The TLS a gateway server terminates, as Envoy's DownstreamTlsContext.

- certificates: `credentialName` (or each of `credentialNames`) over SDS on the ADS stream as
  `kubernetes://<name>`, served from the Secret of that name in the gateway workload's namespace
  (`translate/secrets.py`, Istio's rule); `serverCertificate`/`privateKey` (or each `tlsCertificates`
  entry) and `caCertificates`: files of the gateway pod, served by its node agent over SDS as
  `file-cert:<cert>~<key>` / `file-root:<ca>` (Istio's names), or read by Envoy itself when the proxy
  has no agent;
- client verification (MUTUAL: a certificate is required; OPTIONAL_MUTUAL: verified when presented):
  the CA of `kubernetes://<name>-cacert` (Secret `<name>-cacert`, else the `ca.crt`/`cacert` key of
  `<name>`) or the `caCertificates` file and `caCrl`, with `subjectAltNames`, `verifyCertificateSpki`
  and `verifyCertificateHash`;
- ISTIO_MUTUAL: the gateway's own workload certificate from its node agent (`default`, `ROOTCA`),
  a client certificate of the mesh required;
- `minProtocolVersion` (default TLS 1.2, Istio's mesh default) / `maxProtocolVersion`, `cipherSuites`;
  HTTPS servers offer ALPN h2 and http/1.1.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from meshd.api.gateway import GATEWAY_SDS_PREFIX, ISTIO_MUTUAL, MUTUAL, OPTIONAL_MUTUAL, ServerTLSSettings
from meshd.translate.mtls import ROOT_SECRET, WORKLOAD_SECRET, agent_sds
from meshd.translate.upstream_tls import CA_SUFFIX, SDS_PREFIX, ads_secret, san_matchers

_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}
HTTP_ALPN = ("h2", "http/1.1")
# Istio's names of certificate files its agent serves over SDS (meshd agent: agent/file_secrets.py)
FILE_CERT, FILE_ROOT = "file-cert:", "file-root:"


def sds_name(base: str) -> str:
    """The SDS resource of a credential name: `kubernetes://<name>`, or a Gateway API listener's
    `kubernetes-gateway://<namespace>/<name>` as it is."""
    return base if base.startswith(GATEWAY_SDS_PREFIX) else SDS_PREFIX + base


def sds_secret_names(tls: ServerTLSSettings) -> tuple[str, ...]:
    """The SDS resources (on the ADS stream) a server with these settings asks for."""
    bases = tls.credential_bases()
    names = tuple(sds_name(base) for base in bases)
    if bases and tls.effective_mode in (MUTUAL, OPTIONAL_MUTUAL):
        names += (SDS_PREFIX + bases[0] + CA_SUFFIX,)
    return names


def server_files(tls: ServerTLSSettings) -> list[tuple[str, str]]:
    """(field, path) of every file the server makes Envoy open in the gateway pod."""
    out = []
    if tls.server_certificate:
        out += [("tls.serverCertificate", tls.server_certificate), ("tls.privateKey", tls.private_key)]
    for i, entry in enumerate(tls.tls_certificates):
        out += [
            (f"tls.tlsCertificates[{i}].serverCertificate", entry.server_certificate),
            (f"tls.tlsCertificates[{i}].privateKey", entry.private_key),
        ]
        if entry.ca_certificates:
            out.append((f"tls.tlsCertificates[{i}].caCertificates", entry.ca_certificates))
    if tls.ca_certificates:
        out.append(("tls.caCertificates", tls.ca_certificates))
    if tls.ca_crl:
        out.append(("tls.caCrl", tls.ca_crl))
    return out


def _file(path: str) -> base_pb2.DataSource:
    return base_pb2.DataSource(filename=path)


def _validation(context: common_pb2.CertificateValidationContext, tls: ServerTLSSettings) -> None:
    context.match_typed_subject_alt_names.extend(san_matchers(tls.subject_alt_names))
    context.verify_certificate_spki.extend(tls.verify_certificate_spki)
    context.verify_certificate_hash.extend(tls.verify_certificate_hash)


def downstream_tls(tls: ServerTLSSettings, *, http: bool, sds: bool) -> tls_pb2.DownstreamTlsContext | None:
    """The context of a terminating server; None when it cannot be enforced here (ISTIO_MUTUAL on a
    proxy without the node agent's certificate): the server is then not served at all."""
    mode = tls.effective_mode
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    params = common.tls_params
    params.tls_minimum_protocol_version = (
        _VERSIONS[tls.min_protocol_version]
        if tls.min_protocol_version != "TLS_AUTO"
        else common_pb2.TlsParameters.TLSv1_2
    )
    params.tls_maximum_protocol_version = _VERSIONS[tls.max_protocol_version]
    params.cipher_suites.extend(tls.cipher_suites)
    if http:
        common.alpn_protocols.extend(HTTP_ALPN)
    if mode == ISTIO_MUTUAL:
        if not sds:
            return None
        context.require_client_certificate.value = True
        common.tls_certificate_sds_secret_configs.append(agent_sds(WORKLOAD_SECRET))
        combined = common.combined_validation_context
        combined.default_validation_context.SetInParent()
        _validation(combined.default_validation_context, tls)
        combined.validation_context_sds_secret_config.CopyFrom(agent_sds(ROOT_SECRET))
        return context
    bases = tls.credential_bases()
    verify = mode in (MUTUAL, OPTIONAL_MUTUAL)
    context.require_client_certificate.value = mode == MUTUAL
    if bases:
        for base in bases:
            common.tls_certificate_sds_secret_configs.append(ads_secret(sds_name(base)))
        if verify:
            combined = common.combined_validation_context
            combined.default_validation_context.SetInParent()
            _validation(combined.default_validation_context, tls)
            combined.validation_context_sds_secret_config.CopyFrom(ads_secret(SDS_PREFIX + bases[0] + CA_SUFFIX))
        return context
    pairs = [(tls.server_certificate, tls.private_key)] if tls.server_certificate else []
    pairs += [(c.server_certificate, c.private_key) for c in tls.tls_certificates]
    ca = tls.ca_certificates or next((c.ca_certificates for c in tls.tls_certificates if c.ca_certificates), "")
    if sds:
        # as Istio: the node agent reads the pod's files and serves them over SDS (a missing one keeps
        # the listener warming, closed; Envoy never refuses the update for it)
        for cert, key in pairs:
            common.tls_certificate_sds_secret_configs.append(agent_sds(f"{FILE_CERT}{cert}~{key}"))
        if verify:
            combined = common.combined_validation_context
            combined.default_validation_context.SetInParent()
            _validation(combined.default_validation_context, tls)
            if tls.ca_crl:
                combined.default_validation_context.crl.CopyFrom(_file(tls.ca_crl))
            combined.validation_context_sds_secret_config.CopyFrom(agent_sds(f"{FILE_ROOT}{ca}"))
        return context
    for cert, key in pairs:
        common.tls_certificates.append(common_pb2.TlsCertificate(certificate_chain=_file(cert), private_key=_file(key)))
    if verify:
        validation = common.validation_context
        validation.trusted_ca.CopyFrom(_file(ca))
        if tls.ca_crl:
            validation.crl.CopyFrom(_file(tls.ca_crl))
        _validation(validation, tls)
    return context
