"""Who may read the debug endpoints from another address (`meshd serve --debug-expose`).

Kubernetes mode: a service-account bearer token (TokenReview, the API server's own audiences, as
`kubectl create token` issues them) whose account Kubernetes RBAC lets `get` the path (SubjectAccessReview
with non-resource attributes: grant it with a ClusterRole rule `nonResourceURLs: ["/debug/*"], verbs: [get]`).
Standalone: a token of `--ca-token-file` whose identity is in meshd's own namespace (`--namespace`), as
istiod lets its system namespace debug. Neither available: no authorizer, so the endpoints stay closed.
"""

from __future__ import annotations

import logging
from typing import Any

from meshd.ca.auth import AuthError, TokenAuthenticator, TokenFileAuthenticator, TokenReviewAuthenticator
from meshd.kube.access_review import may_get_path
from meshd.ops.http import DebugAuthorizer
from meshd.settings import Settings


def debug_authorizer(*, settings: Settings, api: Any, log: logging.Logger) -> DebugAuthorizer | None:
    """`api`: the Kubernetes API client in Kubernetes mode, else None."""
    if api is not None:
        return _kubernetes(TokenReviewAuthenticator(api=api, audiences=()), api=api, log=log)
    if settings.ca_token_file is not None:
        return _standalone(TokenFileAuthenticator.from_file(settings.ca_token_file), namespace=settings.namespace)
    return None


def _kubernetes(tokens: TokenAuthenticator, *, api: Any, log: logging.Logger) -> DebugAuthorizer:
    async def authorize(token: str, path: str) -> tuple[int, str] | None:
        try:
            identity = await tokens.authenticate(token)
        except AuthError as exc:
            return 401, f"not authenticated: {exc}"
        user = f"system:serviceaccount:{identity.namespace}:{identity.service_account}"
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{identity.namespace}", "system:authenticated"]
        try:
            allowed, reason = await may_get_path(api, user=user, groups=groups, path=path)
        except Exception as exc:  # fails closed: no answer from RBAC is no access
            log.warning("event=debug_access_review_failed user=%s error=%r", user, type(exc).__name__)
            return 403, "the access review failed; access denied"
        if not allowed:
            return 403, f"{user} may not get {path}" + (f": {reason}" if reason else "")
        return None

    return authorize


def _standalone(tokens: TokenAuthenticator, *, namespace: str) -> DebugAuthorizer:
    async def authorize(token: str, path: str) -> tuple[int, str] | None:
        try:
            identity = await tokens.authenticate(token)
        except AuthError as exc:
            return 401, f"not authenticated: {exc}"
        if identity.namespace != namespace:
            return 403, f"only identities of namespace {namespace!r} may read {path}"
        return None

    return authorize
