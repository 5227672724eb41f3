"""Gateway validation: every field of Istio's Gateway either accepted (and translated) or refused with
`Gateway ns/name`, the field path and why; Istio's documented examples parse in v1, v1beta1 and v1alpha3;
VirtualService tcp/tls routes and gateway references validated."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api.gateway import Gateway
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource

SPKI = "2IEpPESU/mmC30tPsnOYbGJ7LgkCQaVDPjQkBKD6i+k="
HASH = "df:6f:f7:2f:e9:11:65:21:26:8f:64:44:9d:11:e3:2e:60:9a:64:2d:8e:b0:42:3e:a0:c5:14:5a:0c:fb:1d:6c"


def gateway(*servers: dict[str, Any], version: str = "v1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"networking.istio.io/{version}",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "ns"},
        "spec": {"selector": {"istio": "ingressgateway"}, "servers": list(servers), **spec},
    }


def server(protocol: str = "HTTP", number: int = 80, hosts: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"port": {"number": number, "name": f"p{number}", "protocol": protocol}, "hosts": hosts or ["*"], **extra}


def https(tls: dict[str, Any], protocol: str = "HTTPS", number: int = 443) -> dict[str, Any]:
    return server(protocol, number, tls=tls)


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_istio_examples_parse(version: str) -> None:
    """The servers of Istio's Gateway reference example (my-gateway), with every TLS field meshd translates."""
    doc = gateway(
        server("HTTP", 80, ["uk.bookinfo.com", "eu.bookinfo.com"], tls={"httpsRedirect": True}),
        https({"mode": "SIMPLE", "serverCertificate": "/etc/certs/servercert.pem", "privateKey": "/etc/certs/pk.pem"}),
        server("HTTPS", 9443, ["bookinfo-namespace/*.bookinfo.com"], tls={"mode": "SIMPLE", "credentialName": "c"}),
        server("HTTP", 9080, ["*"]),
        server("MONGO", 2379, ["*"]),
        server("TLS", 15443, ["*.local"], tls={"mode": "AUTO_PASSTHROUGH"}),
        server("TLS", 8443, ["./*.example.com"], tls={"mode": "PASSTHROUGH"}),
        https({"mode": "MUTUAL", "credentialNames": ["rsa", "ecdsa"], "subjectAltNames": ["client"],
               "verifyCertificateSpki": [SPKI], "verifyCertificateHash": [HASH], "minProtocolVersion": "TLSV1_2",
               "maxProtocolVersion": "TLSV1_3", "cipherSuites": ["ECDHE-ECDSA-AES128-GCM-SHA256"]}, number=8444),
        https({"mode": "OPTIONAL_MUTUAL", "tlsCertificates": [{"serverCertificate": "/c.pem", "privateKey": "/k.pem"}],
               "caCertificates": "/ca.pem", "caCrl": "/crl.pem"}, number=8445),
        https({"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://cluster.local/ns/a/sa/b"]}, number=15444),
        version=version,
    )  # fmt: skip
    parsed = parse_resource(doc)
    assert isinstance(parsed, Gateway) and len(parsed.spec.servers) == 10
    assert parsed.spec.servers[4].port.kind == "tcp"  # MONGO is TCP at a gateway, as in Istio
    assert parsed.spec.servers[6].passthrough and parsed.spec.servers[5].auto_passthrough
    assert parsed.spec.servers[1].terminates_tls and parsed.spec.servers[1].serves_http


INVALID = [
    ("unknown field", gateway(server(), colour="red"), "spec.colour", "unknown field"),
    ("unknown server field", gateway({**server(), "sni": "x"}), "spec.servers[0].sni", "unknown field"),
    ("unknown tls field", gateway(https({"mode": "SIMPLE", "credentialName": "c", "ocsp": 1})),
     "spec.servers[0].tls.ocsp", "unknown field"),
    ("no servers", gateway(), "spec.servers", "at least 1"),
    ("no hosts", gateway({**server(), "hosts": []}), "spec.servers[0].hosts", "at least 1"),
    ("protocol", gateway(server("QUIC")), "spec.servers[0].port.protocol", "'QUIC' is not one of"),
    ("port name", gateway({"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"]}),
     "spec.servers[0].port.name", "needs a name"),
    ("target port", gateway({"port": {"number": 80, "name": "h", "protocol": "HTTP", "targetPort": 8080},
                             "hosts": ["*"]}), "spec.servers[0].port.targetPort", "not used"),
    ("port range", gateway(server(number=70000)), "spec.servers[0].port.number", "less than or equal"),
    ("host namespace", gateway(server(hosts=["Bad_NS/foo.com"])), "spec.servers[0].hosts[0]", "is not a namespace"),
    ("host wildcard", gateway(server(hosts=["foo.*.com"])), "spec.servers[0].hosts[0]", "leftmost label"),
    ("default endpoint", gateway({**server(), "defaultEndpoint": "127.0.0.1:8080"}),
     "spec.servers[0].defaultEndpoint", "not implemented"),
    ("bind unix", gateway({**server(), "bind": "unix:///sock"}), "spec.servers[0].bind", "not an IP address"),
    ("https without tls", gateway(server("HTTPS", 443)), "spec.servers[0].tls", "needs TLS settings"),
    ("tls on http", gateway(server(tls={"mode": "SIMPLE", "credentialName": "c"})), "spec.servers[0].tls",
     "only httpsRedirect"),
    ("tls on tcp", gateway(server("TCP", 9000, tls={"httpsRedirect": True})), "spec.servers[0].tls",
     "carries no TLS"),
    ("simple without cert", gateway(https({"mode": "SIMPLE"})), "spec.servers[0].tls.mode",
     "needs a server certificate"),
    ("mutual files without ca", gateway(https({"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"})),
     "spec.servers[0].tls.caCertificates", "needs caCertificates"),
    ("cert without key", gateway(https({"mode": "SIMPLE", "serverCertificate": "/c"})),
     "spec.servers[0].tls.privateKey", "go together"),
    ("two sources", gateway(https({"mode": "SIMPLE", "credentialName": "c", "serverCertificate": "/c",
                                   "privateKey": "/k"})), "spec.servers[0].tls.serverCertificate", "only one of"),
    ("ca with credentialName", gateway(https({"mode": "MUTUAL", "credentialName": "c", "caCertificates": "/ca"})),
     "spec.servers[0].tls.caCertificates", "not with credentialName"),
    ("istio mutual with cert", gateway(https({"mode": "ISTIO_MUTUAL", "credentialName": "c"})),
     "spec.servers[0].tls.mode", "workload certificate"),
    ("passthrough with cert", gateway(https({"mode": "PASSTHROUGH", "credentialName": "c"}, "TLS")),
     "spec.servers[0].tls.mode", "does not terminate TLS"),
    ("auto passthrough on https", gateway(https({"mode": "AUTO_PASSTHROUGH"})), "spec.servers[0].tls.mode",
     "needs protocol TLS"),
    ("simple with client checks", gateway(https({"mode": "SIMPLE", "credentialName": "c", "subjectAltNames": ["x"]})),
     "spec.servers[0].tls.subjectAltNames", "does not verify clients"),
    ("redirect on tls", gateway(https({"mode": "PASSTHROUGH", "httpsRedirect": True}, "TLS")),
     "spec.servers[0].tls.httpsRedirect", "HTTP and HTTPS servers only"),
    ("bad mode", gateway(https({"mode": "STRICT"})), "spec.servers[0].tls.mode", "Input should be"),
    ("cipher", gateway(https({"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["RC4-MD5"]})),
     "spec.servers[0].tls.cipherSuites[0]", "not a cipher suite Envoy supports"),
    ("versions", gateway(https({"mode": "SIMPLE", "credentialName": "c", "minProtocolVersion": "TLSV1_3",
                                "maxProtocolVersion": "TLSV1_2"})), "spec.servers[0].tls.minProtocolVersion", "above"),
    ("spki", gateway(https({"mode": "MUTUAL", "credentialName": "c", "verifyCertificateSpki": ["abc"]})),
     "spec.servers[0].tls.verifyCertificateSpki[0]", "SHA-256"),
    ("hash", gateway(https({"mode": "MUTUAL", "credentialName": "c", "verifyCertificateHash": ["zz"]})),
     "spec.servers[0].tls.verifyCertificateHash[0]", "hex-encoded"),
    ("three credentialNames", gateway(https({"mode": "SIMPLE", "credentialNames": ["a", "b", "c"]})),
     "spec.servers[0].tls.credentialNames", "at most 2"),
    ("duplicate server name", gateway({**server(), "name": "a"}, {**server(number=81), "name": "a"}),
     "spec.servers[1].name", "also the name of servers[0]"),
    ("kinds on one port", gateway(server("HTTP", 443), https({"mode": "SIMPLE", "credentialName": "c"})),
     "spec.servers[1].port", "cannot share it"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "field", "message"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_gateways_are_refused_naming_the_field(doc: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc, origin="gw.yaml")
    err = info.value
    assert str(err.key) == "Gateway ns/gw"
    assert err.field == field, err
    assert message in err.message, err


def vs(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "vs", "namespace": "ns"}, "spec": {"hosts": ["*"], **spec}}  # fmt: skip


VS_INVALID = [
    ("gateway name", vs({"gateways": ["a/b/c"]}), "spec.gateways[0]", "must be"),
    ("tcp without route", vs({"tcp": [{"match": [{"port": 1}]}]}), "spec.tcp[0].route", "at least one destination"),
    ("tcp weights", vs({"tcp": [{"route": [{"destination": {"host": "a"}}, {"destination": {"host": "b"}}]}]}),
     "spec.tcp[0].route", "add up to 0"),
    ("tcp subnet", vs({"tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/33"]}],
                                "route": [{"destination": {"host": "a"}}]}]}),
     "spec.tcp[0].match[0].destinationSubnets[0]", "not an IP address or CIDR"),
    ("tls without sni", vs({"tls": [{"match": [{"port": 443}], "route": [{"destination": {"host": "a"}}]}]}),
     "spec.tls[0].match[0].sniHosts", "Field required"),
    ("tls without match", vs({"tls": [{"route": [{"destination": {"host": "a"}}]}]}), "spec.tls[0].match",
     "Field required"),
    ("sni wildcard", vs({"tls": [{"match": [{"sniHosts": ["a.*.com"]}], "route": [{"destination": {"host": "a"}}]}]}),
     "spec.tls[0].match[0].sniHosts[0]", "leftmost label"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "field", "message"), [case[1:] for case in VS_INVALID], ids=[c[0] for c in VS_INVALID])
def test_invalid_l4_routes_and_gateway_names_are_refused(doc: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    assert info.value.field == field, info.value
    assert message in info.value.message, info.value
