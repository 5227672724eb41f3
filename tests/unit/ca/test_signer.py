"""The pure signing core: identity, key policy, lifetimes (with an injected wall clock), chains."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from meshd.ca.identity import Identity, InvalidIdentity
from meshd.ca.material import CaMaterial, InvalidCaMaterial, SigningCa, generate_root, load
from meshd.ca.signer import CsrParseError, CsrRejected, Signer, SignerUnavailable
from tests.csr_tools import bad_signature_csr, ec_csr, rsa_csr, sha1_csr

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
WEB = Identity(namespace="default", service_account="web")


def _signer(ca: SigningCa | None = None, *, now: datetime.datetime = NOW) -> Signer:
    ca = ca or load(generate_root(now=NOW, trust_domain="cluster.local"), now=NOW)
    return Signer(ca=ca, trust_domain="cluster.local", wall=lambda: now)


def _leaf(chain: tuple[str, ...]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain[0].encode())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_cert(
    *,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: object,
    days: float,
    now: datetime.datetime = NOW,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )


def plugged_material(
    *, intermediate_days: float = 365, now: datetime.datetime = NOW
) -> tuple[CaMaterial, x509.Certificate]:
    """root -> intermediate (the signer), as an operator plugs into `cacerts`."""
    root_key, int_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert(name="root", key=root_key, issuer=None, issuer_key=root_key, days=3650, now=now)
    inter = _ca_cert(
        name="intermediate", key=int_key, issuer=root, issuer_key=root_key, days=intermediate_days, now=now
    )
    material = CaMaterial(
        ca_cert=_pem(inter), ca_key=_key_pem(int_key), cert_chain=_pem(inter) + _pem(root), root_cert=_pem(root)
    )
    return material, root


def test_san_is_the_callers_identity_only() -> None:
    csr = ec_csr(sans=("spiffe://cluster.local/ns/kube-system/sa/admin",))
    issued = _signer().sign_csr(csr_pem=csr, identity=WEB, ttl_s=3600)
    leaf = _leaf(issued.chain)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/web")]
    assert leaf.subject == x509.Name([])


def test_leaf_extensions() -> None:
    leaf = _leaf(_signer().sign_csr(csr_pem=ec_csr(), identity=WEB, ttl_s=0).chain)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_encipherment, usage.key_cert_sign) == (True, True, False)
    eku = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert {o.dotted_string for o in eku} == {"1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"}


def _ed25519_csr() -> str:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return csr.sign(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: rsa_csr(1024), "1024 bits"),
        (lambda: rsa_csr(2048, exponent=3), "exponent 3"),
        (lambda: ec_csr(ec.SECP224R1()), "secp224r1"),
        (lambda: ec_csr(ec.SECP521R1()), "secp521r1"),
        (_ed25519_csr, "ed25519"),
        (sha1_csr, "sha1"),
        (bad_signature_csr, "does not verify"),
    ],
)
def test_refused_csrs(make: object, words: str) -> None:
    with pytest.raises(CsrRejected, match=f"(?i){words}"):
        _signer().sign_csr(csr_pem=make(), identity=WEB, ttl_s=60)  # type: ignore[operator]


@pytest.mark.parametrize("text", ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "A" * 70000])
def test_unparsable_csr(text: str) -> None:
    with pytest.raises(CsrParseError):
        _signer().sign_csr(csr_pem=text, identity=WEB, ttl_s=60)


def test_accepted_keys() -> None:
    for csr in (rsa_csr(2048), rsa_csr(3072), ec_csr(ec.SECP256R1()), ec_csr(ec.SECP384R1())):
        assert len(_signer().sign_csr(csr_pem=csr, identity=WEB, ttl_s=60).chain) == 2


def test_ttl_zero_is_24h_and_above_max_is_refused() -> None:
    signer = _signer()
    assert _leaf(signer.sign_csr(csr_pem=ec_csr(), identity=WEB, ttl_s=0).chain).not_valid_after_utc == NOW.replace(
        day=2
    )
    assert signer.lifetime(90 * 86400)[1] == NOW + datetime.timedelta(days=90)
    with pytest.raises(CsrRejected, match="maximum"):
        signer.lifetime(90 * 86400 + 1)
    with pytest.raises(CsrRejected, match="negative"):
        signer.lifetime(-1)


@pytest.mark.parametrize("ttl_s", [10**12, 2**63 - 1])
def test_huge_ttl_is_refused_not_an_overflow(ttl_s: int) -> None:
    # Beyond what a timedelta holds (issue 20, low): refused like any TTL above the maximum, as istiod does.
    with pytest.raises(CsrRejected, match=f"validity_duration {ttl_s}s refused: the maximum is 7776000s"):
        _signer().sign_csr(csr_pem=ec_csr(), identity=WEB, ttl_s=ttl_s)


def test_lifetime_clamped_to_signer_expiry_and_refused_when_too_close() -> None:
    material, _ = plugged_material(intermediate_days=2)
    ca = load(material, now=NOW)
    issued = _signer(ca).sign_csr(csr_pem=ec_csr(), identity=WEB, ttl_s=30 * 86400)
    assert issued.not_after == ca.cert.not_valid_after_utc == NOW + datetime.timedelta(days=2)
    assert _leaf(issued.chain).not_valid_after_utc == ca.cert.not_valid_after_utc
    almost = NOW + datetime.timedelta(days=2) - datetime.timedelta(seconds=30)
    with pytest.raises(SignerUnavailable):
        _signer(ca, now=almost).sign_csr(csr_pem=ec_csr(), identity=WEB, ttl_s=3600)


def test_plugged_in_chain_leaf_intermediate_root_verifies() -> None:
    material, root = plugged_material()
    ca = load(material, now=NOW)
    chain = _signer(ca).sign_csr(csr_pem=ec_csr(), identity=WEB, ttl_s=3600).chain
    certs = [x509.load_pem_x509_certificate(c.encode()) for c in chain]
    assert len(certs) == 3 and certs[-1] == root and certs[1] == ca.cert
    store = x509.verification.Store([root])
    verifier = x509.verification.PolicyBuilder().store(store).time(NOW).build_client_verifier()
    verified = verifier.verify(certs[0], certs[1:2])
    assert verified.subjects == [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/web")]


def test_material_checks() -> None:
    material, _ = plugged_material()
    other = generate_root(now=NOW, trust_domain="x")
    with pytest.raises(InvalidCaMaterial, match="does not match"):
        load(CaMaterial(material.ca_cert, other.ca_key, material.cert_chain, material.root_cert), now=NOW)
    with pytest.raises(InvalidCaMaterial, match="not signed by"):
        load(CaMaterial(material.ca_cert, material.ca_key, b"", other.root_cert), now=NOW)
    with pytest.raises(InvalidCaMaterial, match="expired"):
        load(material, now=NOW + datetime.timedelta(days=400))


def test_identity_parsing() -> None:
    assert Identity.from_username("system:serviceaccount:ns1:sa-1") == Identity("ns1", "sa-1")
    for bad in ("alice", "system:serviceaccount:ns", "system:serviceaccount:a:b:c", "system:serviceaccount:NS:x"):
        with pytest.raises(InvalidIdentity):
            Identity.from_username(bad)
    assert Identity.from_spiffe_id("spiffe://td/ns/a/sa/b", trust_domain="td") == Identity("a", "b")
    for bad in ("spiffe://other/ns/a/sa/b", "spiffe://td/ns/a", "spiffe://td/ns/a/sa/b/c", "spiffe://td/x/a/sa/b"):
        with pytest.raises(InvalidIdentity):
            Identity.from_spiffe_id(bad, trust_domain="td")
