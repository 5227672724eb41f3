"""Real JSON Web Tokens for tests: RSA and EC signing keys (`cryptography`), their public JWKS, and
compact JWS tokens (RS256 / ES256) with the claims a test asks for. No JWT library: the format is small
(RFC 7515/7519) and writing it here keeps the tests free of a new dependency."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    """A private key with a key id; `jwk` is its public half as a JWKS entry."""

    kid: str
    kind: str = "RSA"  # or "EC" (P-256)
    _key: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._key is None:
            self._key = (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if self.kind == "RSA"
                else ec.generate_private_key(ec.SECP256R1())
            )

    @property
    def alg(self) -> str:
        return "RS256" if self.kind == "RSA" else "ES256"

    @property
    def jwk(self) -> dict[str, str]:
        public = self._key.public_key().public_numbers()
        if self.kind == "RSA":
            return {
                "kty": "RSA",
                "kid": self.kid,
                "alg": "RS256",
                "use": "sig",
                "n": _int(public.n),
                "e": _int(public.e),
            }
        return {"kty": "EC", "kid": self.kid, "crv": "P-256", "x": _int(public.x, 32), "y": _int(public.y, 32)}

    def sign(self, message: bytes) -> bytes:
        if self.kind == "RSA":
            return bytes(self._key.sign(message, padding.PKCS1v15(), hashes.SHA256()))
        der = self._key.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants r || s, not DER


def jwks(*keys: SigningKey) -> str:
    return json.dumps({"keys": [k.jwk for k in keys]})


def token(key: SigningKey, *, issuer: str, expires_in: float = 3600, kid: str | None = None, **claims: Any) -> str:
    """A signed token with `iss`, `iat`, `exp` (negative `expires_in`: already expired) and `claims`
    (`aud=...`, `sub=...`, nested dicts...)."""
    now = int(time.time())
    header = {"alg": key.alg, "typ": "JWT", "kid": kid or key.kid}
    payload = {"iss": issuer, "iat": now, "exp": int(now + expires_in), **claims}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def tampered(jwt: str) -> str:
    """The same token with its payload changed (the signature no longer matches)."""
    head, payload, signature = jwt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


def decode_payload(text: str) -> dict[str, Any]:
    """A base64url JSON payload as Envoy forwards it (`outputPayloadToHeader`)."""
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return data
