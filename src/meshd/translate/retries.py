"""Istio HTTPRetry -> Envoy RetryPolicy, with Istio's default policy when a route says nothing.

`retryOn` is Envoy's comma-separated list; numeric entries are status codes, which Envoy takes
as `retriable_status_codes` together with the `retriable-status-codes` condition. `backoff` is the retry
back-off's base interval (Envoy jitters each wait between 0 and the base doubled per retry, capped at 10 times
the base).
"""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from google.protobuf import wrappers_pb2

from meshd.api.http_actions import HTTPRetry
from meshd.api.values import seconds_nanos
from meshd.translate.proto import pack

# Istio's default retry policy when a VirtualService says nothing.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DEFAULT_RETRIES = 2
RETRIABLE_STATUS_CODES = "retriable-status-codes"


def _base_policy(*, retry_on: str, attempts: int) -> rc.RetryPolicy:
    return rc.RetryPolicy(
        retry_on=retry_on,
        num_retries=wrappers_pb2.UInt32Value(value=attempts),
        retry_host_predicate=[
            rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=5,
    )


def default_retry_policy() -> rc.RetryPolicy:
    return _base_policy(retry_on=DEFAULT_RETRY_ON, attempts=DEFAULT_RETRIES)


def retry_policy(retries: HTTPRetry | None) -> rc.RetryPolicy | None:
    """None means no retries (attempts: 0)."""
    if retries is None:
        return default_retry_policy()
    if retries.attempts == 0:
        return None
    conditions: list[str] = []
    codes: list[int] = []
    for item in (p.strip() for p in retries.retry_on.split(",")):
        if item.isdigit():
            codes.append(int(item))
        elif item and item not in conditions:
            conditions.append(item)
    if codes and RETRIABLE_STATUS_CODES not in conditions:
        conditions.append(RETRIABLE_STATUS_CODES)
    policy = _base_policy(retry_on=",".join(conditions) or DEFAULT_RETRY_ON, attempts=retries.attempts)
    policy.retriable_status_codes.extend(codes)
    if retries.per_try_timeout:
        seconds, nanos = seconds_nanos(retries.per_try_timeout)
        policy.per_try_timeout.seconds, policy.per_try_timeout.nanos = seconds, nanos
    if retries.backoff:  # Envoy's max interval: its default, 10 times the base (Istio sets only the base)
        seconds, nanos = seconds_nanos(retries.backoff)
        policy.retry_back_off.base_interval.seconds, policy.retry_back_off.base_interval.nanos = seconds, nanos
    if retries.retry_remote_localities:
        policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        policy.retry_priority.typed_config.CopyFrom(
            pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=2))
        )
    return policy
