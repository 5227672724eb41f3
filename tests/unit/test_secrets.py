"""Secrets for credentialName: parsed and checked as PEM, resolved as Istio does (`<name>-cacert`
first for the CA), served only to proxies of their own namespace, and reported when missing."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from meshd.api.kube import Secret
from meshd.api.meta import InvalidResource
from meshd.api.parse import parse_resource
from meshd.generate.generator import ConfigGenerator
from meshd.generate.options import GenerateOptions
from meshd.model.world import build_world
from meshd.translate.proxy import parse_node_id
from meshd.xds.resource import CLUSTER, SECRET
from tests.certs import Authority

CA = Authority()
CLIENT = CA.issue("client", client=True)
OTHER = CA.issue("other", client=True)


def _secret(name: str, ns: str = "default", *, kind: str = "Opaque", **data: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": kind,
        "data": {k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()},
    }


def _parse(doc: dict[str, Any]) -> Secret:
    resource = parse_resource(doc)
    assert isinstance(resource, Secret)
    return resource


def test_tls_and_generic_keys_are_read_as_istio_reads_them() -> None:
    tls = _parse(_secret("a", kind="kubernetes.io/tls", tls_crt=CLIENT.cert, tls_key=CLIENT.key, ca_crt=CA.pem))
    assert tls.key_cert() == (CLIENT.cert, CLIENT.key)
    assert tls.ca() == (CA.pem, None)
    crl = CA.crl()
    generic = _parse(_secret("b", cert=OTHER.cert, key=OTHER.key, cacert=CA.pem, crl=crl))
    assert generic.key_cert() == (OTHER.cert, OTHER.key)
    assert generic.ca() == (CA.pem, crl)
    text = parse_resource(
        {**_secret("c"), "stringData": {"cacert": CA.pem.decode()}}  # stringData, as users write it
    )
    assert isinstance(text, Secret) and text.ca() == (CA.pem, None) and text.key_cert() is None


def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, bytes]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return {
        "cert": cert.public_bytes(serialization.Encoding.PEM),
        "key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


@pytest.mark.parametrize(
    ("doc", "field", "needle"),
    [
        ({**_secret("x"), "data": {"cert": "not base64!"}}, "data.cert", "base64"),
        (_secret("x", kind="kubernetes.io/tls", tls_crt=CLIENT.cert), "data", "tls.key"),
        (_secret("x", tls_crt=b"garbage", tls_key=CLIENT.key), "data.tls.crt", "PEM certificate"),
        (_secret("x", cert=CLIENT.cert, key=b"garbage"), "data.key", "PEM private key"),
        (_secret("x", cert=CLIENT.cert, key=OTHER.key), "data.key", "does not match"),
        (_secret("x", cert=CLIENT.cert), "data.key", "go together"),
        (_secret("x", cacert=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "data.cacert", "PEM"),
        (_secret("x", cacert=CA.pem, crl=b"nope"), "data.crl", "revocation list"),
        (_secret("x", **_self_signed(rsa.generate_private_key(65537, 1024))), "data.key", "2048"),
        (_secret("x", **_self_signed(ec.generate_private_key(ec.SECP256K1()))), "data.key", "P-256"),
    ],
)
def test_malformed_tls_secrets_are_refused_naming_the_key(doc: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(doc)
    assert caught.value.field == field
    assert needle in caught.value.message


def test_other_keys_of_a_secret_are_not_checked() -> None:
    assert _parse(_secret("db", password=b"hunter2")).ca() is None


RULE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "DestinationRule",
    "metadata": {"name": "pay", "namespace": "default"},
    "spec": {
        "host": "pay.default.svc.cluster.local",
        "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "cred"}},
    },
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "pay", "namespace": "default"},
    "spec": {"ports": [{"name": "http", "port": 80}]},
}


def _pod(ns: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": ns}, "status": {"podIP": ip}}


def _generator(docs: list[dict[str, Any]]) -> ConfigGenerator:
    world = build_world([parse_resource(d) for d in docs], domain_suffix="cluster.local")
    generator = ConfigGenerator(world, options=GenerateOptions(inbound_port=15006, sidecar_endpoint_port=None))
    generator.precompute()
    return generator


def _served(generator: ConfigGenerator, ns: str, ip: str) -> dict[str, secret_pb2.Secret]:
    snapshot = generator.snapshot(parse_node_id(f"sidecar~{ip}~client.{ns}~{ns}.svc.cluster.local"))
    out = {}
    for resource in snapshot.select(SECRET, None):
        secret = secret_pb2.Secret()
        secret.ParseFromString(resource.body)
        out[resource.name] = secret
    return out


def test_a_proxy_gets_its_own_namespace_secrets_and_never_another_namespaces() -> None:
    docs = [SERVICE, RULE, _pod("default", "10.0.0.1"), _pod("other", "10.0.0.2")]
    docs += [_secret("cred", cert=CLIENT.cert, key=CLIENT.key, cacert=CA.pem)]
    docs += [_secret("cred-cacert", "other", cacert=CA.pem)]  # `other` has the CA, not the certificate
    generator = _generator(docs)

    mine = _served(generator, "default", "10.0.0.1")
    assert sorted(mine) == ["kubernetes://cred", "kubernetes://cred-cacert"]
    assert mine["kubernetes://cred"].tls_certificate.certificate_chain.inline_bytes == CLIENT.cert
    assert mine["kubernetes://cred"].tls_certificate.private_key.inline_bytes == CLIENT.key
    assert mine["kubernetes://cred-cacert"].validation_context.trusted_ca.inline_bytes == CA.pem

    theirs = _served(generator, "other", "10.0.0.2")
    assert sorted(theirs) == ["kubernetes://cred-cacert"]  # default's certificate never reaches `other`
    # Both proxies hold the same cluster (it names the secrets; each namespace resolves them).
    a = generator.snapshot(parse_node_id("sidecar~10.0.0.1~client.default~default.svc.cluster.local"))
    b = generator.snapshot(parse_node_id("sidecar~10.0.0.2~client.other~other.svc.cluster.local"))
    name = "outbound|80||pay.default.svc.cluster.local"
    assert a.resources[CLUSTER][name] is b.resources[CLUSTER][name]

    (error,) = generator.errors
    assert str(error.key) == "DestinationRule default/pay"
    assert error.field == "spec.trafficPolicy.tls.credentialName"
    assert "no Secret cred in namespace other" in error.message


def test_the_ca_comes_from_name_cacert_first_then_from_the_secret_itself() -> None:
    own_ca = Authority("own")
    docs = [SERVICE, RULE, _pod("default", "10.0.0.1")]
    docs += [_secret("cred", cert=CLIENT.cert, key=CLIENT.key, cacert=own_ca.pem)]
    served = _served(_generator(docs), "default", "10.0.0.1")
    assert served["kubernetes://cred-cacert"].validation_context.trusted_ca.inline_bytes == own_ca.pem

    crl = CA.crl()
    docs.append(_secret("cred-cacert", ca_crt=CA.pem, ca_crl=crl))
    served = _served(_generator(docs), "default", "10.0.0.1")
    assert served["kubernetes://cred-cacert"].validation_context.trusted_ca.inline_bytes == CA.pem
    assert served["kubernetes://cred-cacert"].validation_context.crl.inline_bytes == crl


def test_a_secret_without_the_keys_a_rule_needs_is_reported() -> None:
    docs = [SERVICE, RULE, _pod("default", "10.0.0.1"), _secret("cred", password=b"x")]
    generator = _generator(docs)
    messages = sorted(e.message for e in generator.errors)
    assert messages == [
        "Secret default/cred holds no CA certificate (cacert or ca.crt)",
        "Secret default/cred holds no certificate and key (cert/key or tls.crt/tls.key)",
    ]
    assert _served(generator, "default", "10.0.0.1") == {}
