"""An HTTPRoute rule's `retry` (GEP-1731) and `timeouts.backendRequest` as VirtualService route fields, as Istio
converts them:

- `retry.attempts` -> `retries.attempts` (Envoy's num_retries: retries after the first try; 0: none), Istio's
  default 2 when a retry stanza leaves it out;
- `retry.codes` -> `retries.retryOn`: the codes (retriable status codes) and the connection errors the
  specification says to retry on (connect-failure, refused-stream, unavailable, cancelled); without codes,
  Istio's default conditions;
- `retry.backoff` -> `retries.backoff` (Envoy's retry back-off base interval; the maximum stays Envoy's default,
  10 times the base, as Istio and the other Envoy-based implementations do); with `attempts: 0` there is no
  retry to wait for;
- `timeouts.backendRequest` -> `retries.perTryTimeout` (each try, the first one included); with `attempts: 0`
  there is one try, so it becomes the route `timeout` (never longer than `timeouts.request`: the model checks
  it). A zero duration means none.
A rule with neither keeps Istio's default retry policy (no field is set).
"""

from __future__ import annotations

from typing import Any

from meshd.api.httproute import RouteRule
from meshd.api.values import parse_duration

DEFAULT_ATTEMPTS = 2  # Istio's
CONNECTION_ERRORS = "connect-failure,refused-stream,unavailable,cancelled"


def retry_fields(rule: RouteRule) -> dict[str, Any]:
    """The VirtualService route fields (`retries`, maybe `timeout`) of a rule."""
    retry = rule.retry
    backend = rule.timeouts.backend_request if rule.timeouts is not None else None
    per_try = backend if backend and parse_duration(backend) > 0 else None
    if retry is None and per_try is None:
        return {}
    attempts = DEFAULT_ATTEMPTS if retry is None or retry.attempts is None else retry.attempts
    if attempts == 0:
        out: dict[str, Any] = {"retries": {"attempts": 0}}
        if per_try is not None:  # (never longer than timeouts.request: the model checks it)
            out["timeout"] = per_try
        return out
    retries: dict[str, Any] = {"attempts": attempts}
    if retry is not None and retry.codes:
        retries["retryOn"] = ",".join([CONNECTION_ERRORS, *(str(c) for c in dict.fromkeys(retry.codes))])
    if per_try is not None:
        retries["perTryTimeout"] = per_try
    if retry is not None and retry.backoff is not None:
        retries["backoff"] = retry.backoff
    return {"retries": retries}
