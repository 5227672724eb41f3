"""DestinationRule client TLS as Envoy UpstreamTlsContext: which settings apply to which cluster
(Istio's merge of top level, portLevelSettings and subsets) and what each field becomes."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshd.api.destinationrule import ClientTLSSettings, DestinationRule
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.translate.policy import effective_policy
from meshd.translate.upstream_tls import (
    HTTP_OPTIONS_KEY,
    SYSTEM_CA_BUNDLE,
    apply_upstream_tls,
    sds_names,
    upstream_tls_context,
)


def _tls(**fields: Any) -> ClientTLSSettings:
    return ClientTLSSettings.model_validate(fields)


def _rule(spec: dict[str, Any]) -> DestinationRule:
    resource = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"host": "web", **spec},
        }
    )
    assert isinstance(resource, DestinationRule)
    return resource


def test_port_level_replaces_the_top_level_and_subsets_override_both() -> None:
    rule = _rule(
        {
            "trafficPolicy": {
                "tls": {"mode": "SIMPLE"},
                "portLevelSettings": [
                    {"port": {"number": 8443}, "tls": {"mode": "MUTUAL", "credentialName": "c"}},
                    {"port": {"number": 9000}, "loadBalancer": {"simple": "RANDOM"}},
                ],
            },
            "subsets": [
                {"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                {
                    "name": "v2",
                    "labels": {"v": "2"},
                    "trafficPolicy": {
                        "portLevelSettings": [{"port": {"number": 80}, "tls": {"sni": "x", "mode": "SIMPLE"}}]
                    },
                },
                {"name": "v3", "labels": {"v": "3"}},
            ],
        }
    )

    def mode(subset: str, port: int) -> str | None:
        tls = effective_policy(rule, subset=subset, port=port).tls
        return tls.mode if tls else None

    assert mode("", 80) == "SIMPLE"
    assert mode("", 8443) == "MUTUAL"
    # A port-level entry without tls does not inherit the top level's (Istio: defaults apply).
    assert mode("", 9000) is None
    assert mode("v1", 80) == "DISABLE"
    assert mode("v1", 8443) == "DISABLE"
    assert mode("v2", 80) == "SIMPLE"
    assert effective_policy(rule, subset="v2", port=80).tls.sni == "x"  # type: ignore[union-attr]
    assert mode("v2", 8443) == "MUTUAL"
    assert mode("v3", 80) == "SIMPLE"
    assert effective_policy(None, subset="", port=80).tls is None


def test_disable_and_istio_mutual_stay_plaintext() -> None:
    assert upstream_tls_context(_tls(mode="DISABLE")) is None
    assert upstream_tls_context(_tls(mode="ISTIO_MUTUAL")) is None  # until meshd has its own mTLS
    assert upstream_tls_context(None) is None


def test_simple_with_files_verifies_ca_sans_crl_and_sets_sni() -> None:
    context = upstream_tls_context(
        _tls(
            mode="SIMPLE",
            caCertificates="/etc/certs/ca.pem",
            caCrl="/etc/certs/crl.pem",
            subjectAltNames=["api.example.com", "spiffe://td/ns/a/sa/b", "10.1.2.3"],
            sni="api.example.com",
        )
    )
    assert context is not None
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/certs/ca.pem"
    assert validation.crl.filename == "/etc/certs/crl.pem"
    san = common_pb2.SubjectAltNameMatcher
    sans = [(m.san_type, m.matcher.exact) for m in validation.match_typed_subject_alt_names]
    assert sans == [(san.DNS, "api.example.com"), (san.URI, "spiffe://td/ns/a/sa/b"), (san.IP_ADDRESS, "10.1.2.3")]
    assert context.sni == "api.example.com"
    assert not context.common_tls_context.tls_certificates
    params = context.common_tls_context.tls_params
    versions = (params.tls_minimum_protocol_version, params.tls_maximum_protocol_version)
    assert versions == (common_pb2.TlsParameters.TLSv1_2, common_pb2.TlsParameters.TLSv1_3)


def test_simple_without_ca_uses_the_os_bundle_and_insecure_skip_verify_verifies_nothing() -> None:
    context = upstream_tls_context(_tls(mode="SIMPLE"))
    assert context is not None
    assert context.common_tls_context.validation_context.trusted_ca.filename == SYSTEM_CA_BUNDLE
    skip = upstream_tls_context(_tls(mode="SIMPLE", caCertificates="/ca.pem", insecureSkipVerify=True))
    assert skip is not None
    assert not skip.common_tls_context.HasField("validation_context")
    assert not skip.common_tls_context.HasField("combined_validation_context")


def test_mutual_with_files_presents_the_certificate() -> None:
    context = upstream_tls_context(
        _tls(mode="MUTUAL", clientCertificate="/c.pem", privateKey="/k.pem", caCertificates="/ca.pem"), http2=True
    )
    assert context is not None
    (cert,) = context.common_tls_context.tls_certificates
    assert (cert.certificate_chain.filename, cert.private_key.filename) == ("/c.pem", "/k.pem")
    assert list(context.common_tls_context.alpn_protocols) == ["h2"]


def test_credential_name_goes_over_sds_as_istio_names_it() -> None:
    mutual = _tls(mode="MUTUAL", credentialName="client-cred", subjectAltNames=["pay.example.com"])
    context = upstream_tls_context(mutual)
    assert context is not None
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["kubernetes://client-cred"]
    assert common.tls_certificate_sds_secret_configs[0].sds_config.HasField("ads")
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "kubernetes://client-cred-cacert"
    assert [m.matcher.exact for m in combined.default_validation_context.match_typed_subject_alt_names] == [
        "pay.example.com"
    ]
    assert sds_names(mutual) == ("kubernetes://client-cred", "kubernetes://client-cred-cacert")
    assert sds_names(_tls(mode="SIMPLE", credentialName="kubernetes://ca")) == ("kubernetes://ca-cacert",)
    assert sds_names(_tls(mode="MUTUAL", credentialName="c", insecureSkipVerify=True)) == ("kubernetes://c",)
    assert sds_names(_tls(mode="SIMPLE", caCertificates="/ca.pem")) == ()


@pytest.mark.parametrize(
    ("tls", "protocol", "auto_sni", "auto_san"),
    [
        ({"mode": "SIMPLE"}, "HTTP", True, True),
        ({"mode": "SIMPLE", "subjectAltNames": ["a"]}, "HTTP", True, False),
        ({"mode": "SIMPLE", "insecureSkipVerify": True}, "HTTP", True, False),
        ({"mode": "SIMPLE", "sni": "a"}, "HTTP", False, False),
        ({"mode": "SIMPLE"}, "TCP", False, False),
        ({"mode": "SIMPLE"}, "GRPC", True, True),
    ],
)
def test_auto_sni_and_auto_san_validation_when_sni_is_absent(
    tls: dict[str, Any], protocol: str, auto_sni: bool, auto_san: bool
) -> None:
    cluster = cluster_pb2.Cluster(name="c")
    apply_upstream_tls(cluster, _tls(**tls), protocol=protocol)
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    if not auto_sni:
        assert HTTP_OPTIONS_KEY not in cluster.typed_extension_protocol_options
        return
    options = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    assert options.upstream_http_protocol_options.auto_sni is auto_sni
    assert options.upstream_http_protocol_options.auto_san_validation is auto_san
    assert options.HasField("explicit_http_config")


def test_plaintext_cluster_is_left_alone() -> None:
    cluster = cluster_pb2.Cluster(name="c")
    apply_upstream_tls(cluster, _tls(mode="DISABLE"), protocol="HTTP")
    assert cluster == cluster_pb2.Cluster(name="c")


@pytest.mark.parametrize(
    ("tls", "field", "needle"),
    [
        (
            {"mode": "MUTUAL", "clientCertificate": "certs/c.pem", "privateKey": "/k.pem"},
            "clientCertificate",
            "absolute",
        ),
        ({"mode": "SIMPLE", "caCertificates": "ca.pem"}, "caCertificates", "absolute"),
        ({"mode": "SIMPLE", "caCrl": "./crl.pem"}, "caCrl", "absolute"),
        ({"mode": "MUTUAL", "clientCertificate": "/c.pem"}, "privateKey", "required"),
        ({"mode": "SIMPLE", "credentialName": "c", "caCertificates": "/ca.pem"}, "credentialName", "cannot"),
        ({"mode": "SIMPLE", "sni": "a" * 256}, "sni", "255"),
        ({"mode": "DISABLE", "credentialName": "c"}, "mode", "does not take"),
    ],
)
def test_invalid_tls_settings_are_refused_naming_the_field(tls: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        _rule({"trafficPolicy": {"tls": tls}})
    assert caught.value.field == f"spec.trafficPolicy.tls.{field}"
    assert needle in caught.value.message
