"""JWKS normalisation: only keys Envoy accepts survive, canonical JSON, a set without one is refused; the
placeholder key set no token verifies against is itself a set Envoy accepts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from meshd.api.jwks import NO_KEYS_JWKS, JwksError, normalize_jwks
from tests.jwt_tokens import SigningKey, b64url

RSA, EC = SigningKey("r"), SigningKey("e", kind="EC")


def _ed25519() -> dict[str, str]:
    raw = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": b64url(raw), "kid": "ed"}


def _keys(*keys: Any) -> str:
    return json.dumps({"keys": list(keys)})


def test_usable_keys_are_kept_canonical() -> None:
    text = _keys(
        {**RSA.jwk, "x5c": ["ignored"], "extra": 1},
        EC.jwk,
        _ed25519(),
        {"kty": "oct", "k": b64url(b"secret"), "alg": "HS256"},
        {**RSA.jwk, "use": "enc", "kid": "encryption"},
    )
    out = normalize_jwks(text)
    keys = json.loads(out.text)["keys"]
    assert [k["kty"] for k in keys] == ["RSA", "EC", "OKP", "oct"]
    assert "x5c" not in keys[0] and "extra" not in keys[0]
    assert out.dropped == ("keys[4]: not a signing key (use 'enc')",) and out.malformed == ()
    assert out.text == normalize_jwks(out.text).text  # canonical: a fixed point
    assert out.text == json.dumps(json.loads(out.text), sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ({**RSA.jwk, "e": "Aw"}, None),  # e = 3: accepted
        ({**RSA.jwk, "e": "EQ"}, "exponent 17"),
        ({**RSA.jwk, "alg": "ES256"}, "does not fit an RSA key"),
        ({**RSA.jwk, "n": b64url((2**1000 + 1).to_bytes(126, "big"))}, "1024..16384"),
        ({**RSA.jwk, "n": "!!"}, "base64url"),
        ({**EC.jwk, "crv": "P-192"}, "curve 'P-192'"),
        ({**EC.jwk, "alg": "ES384"}, "does not fit curve P-256"),
        ({**EC.jwk, "y": EC.jwk["x"]}, "not on curve"),
        ({**_ed25519(), "x": b64url(b"short")}, "32-byte"),
        ({"kty": "oct", "k": ""}, "base64url"),
        ({"kty": "oct", "k": "c2VjcmV0", "alg": "RS256"}, "does not fit an HMAC key"),
        ({"kty": "DSA"}, "kty 'DSA'"),
        ({**RSA.jwk, "kid": 7}, "kid must be a string"),
        ("not an object", "is not an object"),
    ],
)
def test_each_key_is_checked(key: Any, reason: str | None) -> None:
    out = normalize_jwks(_keys(EC.jwk, key))
    if reason is None:
        assert out.keys == 2 and not out.dropped
    else:
        assert out.keys == 1 and len(out.malformed) == 1 and reason in out.malformed[0], out.malformed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON"),
        ('{"kid": "x"}', "keys"),
        ('{"keys": {}}', "keys"),
        ('{"keys": []}', "empty"),
        (_keys({**RSA.jwk, "use": "enc"}), "not a signing key"),
        (_keys(*[EC.jwk] * 300), "at most 256"),
    ],
)
def test_a_set_without_a_usable_key_is_refused(text: str, reason: str) -> None:
    with pytest.raises(JwksError, match=reason):
        normalize_jwks(text)


def test_the_placeholder_is_a_valid_rsa_key_set() -> None:
    out = normalize_jwks(NO_KEYS_JWKS)
    (key,) = json.loads(out.text)["keys"]
    modulus = int.from_bytes(base64.urlsafe_b64decode(key["n"] + "=="), "big")
    assert modulus.bit_length() == 2048 and modulus % 2 == 1 and key["e"] == "AQAB"
    assert out.text == NO_KEYS_JWKS
