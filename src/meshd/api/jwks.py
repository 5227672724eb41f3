"""JSON Web Key Sets as Envoy's `jwt_authn` loads them: parsed, checked key by key, and written back in a
canonical form that holds only keys Envoy accepts.

Envoy refuses a whole inline key set (and so the listener that carries it) when one key in it is malformed:
an RSA exponent other than 3 or 65537, an `alg` that does not fit the key type, an EC point off its curve.
`normalize_jwks` keeps the usable signing keys (RSA, EC P-256/P-384/P-521, Ed25519, HMAC `oct`), says why
each other key was left out, and refuses a set with none. Used for a RequestAuthentication's inline `jwks`
(validation) and for the key sets meshd fetches from a `jwksUri` (sources/jwks.py).

`NO_KEYS_JWKS` is what a provider gets while meshd holds no keys for its `jwksUri` (as istiod inlines a
placeholder): one RSA key whose modulus is a hash output, odd and 2048 bits long, whose factors nobody
knows, so no token verifies (fail closed) and Envoy accepts the set.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshd.api.meta import ObjectMeta, Resource

MAX_KEYS = 256
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_CURVES: dict[str, tuple[str, ec.EllipticCurve]] = {
    "P-256": ("ES256", ec.SECP256R1()),
    "P-384": ("ES384", ec.SECP384R1()),
    "P-521": ("ES512", ec.SECP521R1()),
}
HMAC_ALGS = ("HS256", "HS384", "HS512")
MIN_RSA_BITS, MAX_RSA_BITS = 1024, 16384
_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


class JwksError(ValueError):
    """A key set Envoy could not use (no usable key, not JSON, no `keys`)."""


@dataclass(frozen=True)
class NormalizedJwks:
    text: str  # canonical JSON: only the usable keys, their fields sorted
    keys: int
    dropped: tuple[str, ...]  # why each other key was left out ("keys[2]: ...")
    malformed: tuple[str, ...] = ()  # those of `dropped` Envoy would refuse the whole set for


def _b64url(value: object, field: str) -> bytes:
    if not isinstance(value, str) or not value or not _B64URL.match(value):
        raise ValueError(f"{field} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64url") from None


def _int(value: object, field: str) -> int:
    raw = _b64url(value, field)
    if not raw:
        raise ValueError(f"{field} is empty")
    return int.from_bytes(raw, "big")


def _rsa(key: dict[str, Any], alg: str | None) -> dict[str, Any]:
    if alg is not None and alg not in RSA_ALGS:
        raise ValueError(f"alg {alg!r} does not fit an RSA key ({', '.join(RSA_ALGS)})")
    n, e = _int(key.get("n"), "n"), _int(key.get("e"), "e")
    if e not in (3, 65537):
        raise ValueError(f"RSA exponent {e} is not one Envoy accepts (3 or 65537)")
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS or n % 2 == 0:
        raise ValueError(f"RSA modulus of {n.bit_length()} bits is not an odd {MIN_RSA_BITS}..{MAX_RSA_BITS}-bit one")
    rsa.RSAPublicNumbers(e, n).public_key()
    return {"n": key["n"], "e": key["e"]}


def _ec(key: dict[str, Any], alg: str | None) -> dict[str, Any]:
    crv = key.get("crv")
    if crv is None:
        crv = next((name for name, (a, _) in EC_CURVES.items() if a == alg), "P-256")
    if crv not in EC_CURVES:
        raise ValueError(f"EC curve {crv!r} is not one of {', '.join(EC_CURVES)}")
    expected, curve = EC_CURVES[crv]
    if alg is not None and alg != expected:
        raise ValueError(f"alg {alg!r} does not fit curve {crv} ({expected})")
    x, y = _int(key.get("x"), "x"), _int(key.get("y"), "y")
    try:
        ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    except ValueError:
        raise ValueError(f"the point (x, y) is not on curve {crv}") from None
    return {"crv": crv, "x": key["x"], "y": key["y"]}


def _okp(key: dict[str, Any], alg: str | None) -> dict[str, Any]:
    if key.get("crv") != "Ed25519":
        raise ValueError(f"OKP curve {key.get('crv')!r} is not Ed25519")
    if alg is not None and alg != "EdDSA":
        raise ValueError(f"alg {alg!r} does not fit an Ed25519 key (EdDSA)")
    raw = _b64url(key.get("x"), "x")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError("x is not a 32-byte Ed25519 public key") from None
    return {"crv": "Ed25519", "x": key["x"]}


def _oct(key: dict[str, Any], alg: str | None) -> dict[str, Any]:
    if alg is not None and alg not in HMAC_ALGS:
        raise ValueError(f"alg {alg!r} does not fit an HMAC key ({', '.join(HMAC_ALGS)})")
    if not _b64url(key.get("k"), "k"):
        raise ValueError("k is empty")
    return {"k": key["k"]}


_BY_KTY = {"RSA": _rsa, "EC": _ec, "OKP": _okp, "oct": _oct}


def _key(key: object) -> dict[str, Any] | None:
    """The canonical key, None for a key that is not for signatures; ValueError for a malformed one."""
    if not isinstance(key, dict):
        raise ValueError("is not an object")
    kty = key.get("kty")
    if kty not in _BY_KTY:
        raise ValueError(f"kty {kty!r} is not one of {', '.join(_BY_KTY)}")
    use = key.get("use")
    if use is not None and use != "sig":
        return None
    out: dict[str, Any] = {"kty": kty}
    for field in ("kid", "alg"):
        value = key.get(field)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{field} must be a string")
        if value is not None:
            out[field] = value
    if use is not None:
        out["use"] = use
    out.update(_BY_KTY[kty](key, out.get("alg")))
    return out


def normalize_jwks(text: str) -> NormalizedJwks:
    """The usable keys of a JWKS document, canonical. Raises JwksError when there is none."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise JwksError(f"not JSON: {str(err)[:120]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError('not a JSON Web Key Set (an object with a "keys" array)')
    entries: list[Any] = doc["keys"]
    if len(entries) > MAX_KEYS:
        raise JwksError(f"{len(entries)} keys: at most {MAX_KEYS} are accepted")
    keys: list[dict[str, Any]] = []
    dropped: list[str] = []
    malformed: list[str] = []
    for i, entry in enumerate(entries):
        try:
            key = _key(entry)
        except ValueError as err:
            malformed.append(f"keys[{i}]: {err}")
            dropped.append(malformed[-1])
            continue
        if key is None:
            dropped.append(f"keys[{i}]: not a signing key (use {entry.get('use')!r})")
        else:
            keys.append(key)
    if not keys:
        reasons = "; ".join(dropped[:5]) or "the keys array is empty"
        raise JwksError(f"no key Envoy can verify tokens with ({reasons})")
    return NormalizedJwks(
        text=json.dumps({"keys": keys}, sort_keys=True, separators=(",", ":")),
        keys=len(keys),
        dropped=tuple(dropped),
        malformed=tuple(malformed),
    )


def _no_keys_modulus() -> int:
    seed = b"meshd: no JSON Web Key Set is available for this issuer; every token is rejected"
    n = int.from_bytes(hashlib.shake_256(seed).digest(256), "big")
    return n | (1 << 2047) | 1  # 2048 bits, odd


def _b64(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


NO_KEYS_KID = "meshd-no-keys"
NO_KEYS_JWKS = json.dumps(
    {"keys": [{"alg": "RS256", "e": "AQAB", "kid": NO_KEYS_KID, "kty": "RSA", "n": _b64(_no_keys_modulus())}]},
    sort_keys=True,
    separators=(",", ":"),
)


FETCHED_JWKS: Literal["FetchedJwks"] = "FetchedJwks"


class FetchedJwks(Resource):
    """A key set meshd fetched from a `jwksUri` (canonical, `normalize_jwks`), as the fetcher
    (sources/jwks.py) puts it in the store: translation reads fetched keys from the World, never from the
    network. Named by its URI; not a kind users apply (parse.KINDS does not know it)."""

    kind: Literal["FetchedJwks"]
    keys: str

    @property
    def uri(self) -> str:
        return self.metadata.name


def fetched_jwks(uri: str, keys: str) -> FetchedJwks:
    return FetchedJwks(
        api_version="meshd.internal/v1", kind=FETCHED_JWKS, metadata=ObjectMeta(name=uri, namespace=""), keys=keys
    )
