"""Caller authentication for the CA and for xDS on the secure port.

A caller is identified by, in this order:
1. a client certificate from the TLS handshake, issued by this CA (identity = its SPIFFE URI SAN);
2. `authorization: Bearer <token>`: a Kubernetes TokenReview (audience `istio-ca`, an authenticated
   `system:serviceaccount:<ns>:<sa>`), or in standalone mode a token file.

Impersonation is refused before anything else (PERMISSION_DENIED). Istio's CA honours two ways for a
caller to speak for someone else: the `ImpersonatedIdentity` key in the request's `metadata` (ztunnel's
node authorizer) and the `ClusterID` header (which cluster verifies the token). meshd supports neither:
`ImpersonatedIdentity` (any request metadata at all, in fact), a `ClusterID` other than its own,
Kubernetes' `impersonate-*` headers and identity-carrying forwarding headers (`x-forwarded-client-cert`,
`x-forwarded-user`, `x-remote-user`, `x-remote-group`) are all refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import json
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import yaml
from cryptography import x509

from meshd.ca.identity import Identity, InvalidIdentity
from meshd.ca.signer import WallClock

AUDIENCE = "istio-ca"
MAX_TOKEN_BYTES = 16 * 1024
_IDENTITY_HEADERS = frozenset({"x-forwarded-client-cert", "x-forwarded-user", "x-remote-user", "x-remote-group"})


class AuthError(Exception):
    def __init__(self, code: Literal["UNAUTHENTICATED", "PERMISSION_DENIED"], message: str) -> None:
        super().__init__(message)
        self.code = code


def unauthenticated(message: str) -> AuthError:
    return AuthError("UNAUTHENTICATED", message)


class TokenAuthenticator(Protocol):
    async def authenticate(self, token: str) -> Identity:
        """The identity behind a bearer token; raises AuthError."""
        ...


# --- tokens -----------------------------------------------------------------------------------


def _b64url_json(part: str) -> Any:
    padded = part + "=" * (-len(part) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise unauthenticated(f"token is not a JWT: {exc}") from None


def check_jwt_shape(token: str) -> dict[str, Any]:
    """A token must look like a JWT (header.payload.signature, JSON objects) before it is sent for
    review: refuses garbage and `null` payloads without a round trip. Returns the payload."""
    if len(token) > MAX_TOKEN_BYTES:
        raise unauthenticated(f"token of {len(token)} bytes is too large")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise unauthenticated("token is not a JWT (header.payload.signature)")
    header, payload = _b64url_json(parts[0]), _b64url_json(parts[1])
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise unauthenticated("token is not a JWT: header and payload must be JSON objects")
    return payload


class TokenFileAuthenticator:
    """Standalone mode: a YAML file `token: {namespace: <ns>, serviceAccount: <sa>}`."""

    def __init__(self, tokens: Mapping[str, Identity]) -> None:
        self._tokens = dict(tokens)

    @classmethod
    def from_file(cls, path: pathlib.Path) -> TokenFileAuthenticator:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: want a mapping token -> {{namespace, serviceAccount}}")
        tokens: dict[str, Identity] = {}
        for token, entry in data.items():
            if not isinstance(entry, dict) or not isinstance(token, str) or not token:
                raise ValueError(f"{path}: entry {token!r}: want {{namespace, serviceAccount}}")
            try:
                tokens[token] = Identity(
                    namespace=str(entry.get("namespace", "")), service_account=str(entry.get("serviceAccount", ""))
                )
            except (InvalidIdentity, TypeError) as exc:
                raise ValueError(f"{path}: entry {token!r}: {exc}") from None
        return cls(tokens)

    async def authenticate(self, token: str) -> Identity:
        found: Identity | None = None
        for known, identity in self._tokens.items():  # compare every entry in constant time
            if hmac.compare_digest(known.encode(), token.encode()):
                found = identity
        if found is None:
            raise unauthenticated("unknown token")
        return found


class TokenReviewAuthenticator:
    """Kubernetes mode: `authentication.k8s.io/v1` TokenReview with audience istio-ca (`audiences=()`: the
    API server's own audiences, as `kubectl create token` issues them)."""

    def __init__(self, *, api: Any, audiences: Sequence[str] = (AUDIENCE,)) -> None:
        from kubernetes_asyncio import client

        self._client = client
        self._auth = client.AuthenticationV1Api(api)
        self._audiences = list(audiences)

    async def authenticate(self, token: str) -> Identity:
        from kubernetes_asyncio.client.exceptions import ApiException

        check_jwt_shape(token)
        body = self._client.V1TokenReview(spec=self._client.V1TokenReviewSpec(token=token, audiences=self._audiences))
        try:
            review = await self._auth.create_token_review(body)
        except ApiException as exc:
            raise unauthenticated(f"TokenReview failed: HTTP {exc.status}") from None
        status = review.status
        if status is None or not status.authenticated:
            error = status.error if status is not None and status.error else "not authenticated"
            raise unauthenticated(f"TokenReview: {error}")
        if self._audiences and not set(self._audiences) & set(status.audiences or ()):
            raise unauthenticated(f"TokenReview: token is not for audience {self._audiences[0]}")
        username = status.user.username if status.user is not None else ""
        try:
            return Identity.from_username(username or "")
        except InvalidIdentity as exc:
            raise unauthenticated(f"TokenReview: {exc}") from None


# --- client certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCertVerifier:
    """A client certificate counts only if this CA issued it, it is valid now, and its single URI SAN is
    a SPIFFE id of our trust domain. (gRPC has already verified the handshake against our root; this
    checks again, with our own rules, what gRPC hands over.)"""

    issuer: x509.Certificate  # the CA certificate that signs workload certificates
    trust_domain: str
    wall: WallClock

    def identity(self, pem: bytes) -> Identity:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise unauthenticated("client certificate is not PEM") from None
        try:
            cert.verify_directly_issued_by(self.issuer)
        except Exception:
            raise unauthenticated("client certificate was not issued by this CA") from None
        now = self.wall()
        if not cert.not_valid_before_utc - datetime.timedelta(minutes=5) <= now < cert.not_valid_after_utc:
            raise unauthenticated("client certificate is not valid now")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise unauthenticated("client certificate has no SAN") from None
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise unauthenticated("client certificate must carry exactly one SPIFFE id")
        try:
            return Identity.from_spiffe_id(uris[0], trust_domain=self.trust_domain)
        except InvalidIdentity as exc:
            raise unauthenticated(f"client certificate: {exc}") from None


# --- the composite ------------------------------------------------------------------------------


def refuse_impersonation(
    metadata: Sequence[tuple[str, str]], *, cluster_id: str, request_metadata_keys: Sequence[str]
) -> None:
    for key, value in metadata:
        name = key.lower()
        if name.startswith("impersonate-") or name in _IDENTITY_HEADERS:
            raise AuthError("PERMISSION_DENIED", f"impersonation refused: header {name!r}")
        if name == "clusterid" and value != cluster_id:
            raise AuthError("PERMISSION_DENIED", f"impersonation refused: ClusterID {value!r} is not {cluster_id!r}")
    if request_metadata_keys:
        keys = ", ".join(sorted(request_metadata_keys))
        raise AuthError("PERMISSION_DENIED", f"impersonation refused: request metadata ({keys}) is not accepted")


class CallerAuthenticator:
    def __init__(self, *, tokens: TokenAuthenticator | None, peer: PeerCertVerifier, cluster_id: str) -> None:
        self._tokens = tokens
        self._peer = peer
        self._cluster_id = cluster_id

    @property
    def peer(self) -> PeerCertVerifier:
        return self._peer

    async def authenticate_token(self, token: str) -> Identity:
        """The identity behind a bearer token alone; raises AuthError."""
        if self._tokens is None:
            raise unauthenticated("bearer tokens are not accepted: no token authenticator configured")
        return await self._tokens.authenticate(token)

    async def authenticate(
        self,
        *,
        metadata: Sequence[tuple[str, str]],
        peer_cert_pem: bytes | None,
        request_metadata_keys: Sequence[str] = (),
    ) -> Identity:
        """Raises AuthError (UNAUTHENTICATED or PERMISSION_DENIED)."""
        refuse_impersonation(metadata, cluster_id=self._cluster_id, request_metadata_keys=request_metadata_keys)
        cert_error: AuthError | None = None
        if peer_cert_pem:
            try:
                return self._peer.identity(peer_cert_pem)
            except AuthError as exc:
                cert_error = exc
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            raise cert_error or unauthenticated("no client certificate and no authorization header")
        if len(values) > 1:
            raise unauthenticated("more than one authorization header")
        scheme, _, token = values[0].partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated("authorization header must be 'Bearer <token>'")
        return await self.authenticate_token(token)
