"""The JWKS fetcher without a network: a scripted `get` and a manual clock. What it writes to the store
(keys as FetchedJwks of its own origin, errors naming policy and field), keeping the last good keys,
retry and refresh timing, discovery, and the address policy's verdicts."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from meshd.api.jwks import FetchedJwks
from meshd.api.parse import parse_resource
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.sources.jwks import ORIGIN, JwksFetcher, JwksTimings
from meshd.sources.jwks_fetch import AddressPolicy, FetchFailed, FetchRefused, fetch_document
from tests.jwt_tokens import SigningKey, jwks

KEY_A, KEY_B = SigningKey("a"), SigningKey("b", kind="EC")
URI = "https://keys.example/jwks"
LOG = logging.getLogger("test-jwks")


class Clock:
    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += seconds
        await asyncio.sleep(0)


class Issuer:
    """Scripted answers per URL: bytes, or an exception to raise."""

    def __init__(self) -> None:
        self.answers: dict[str, bytes | Exception] = {}
        self.asked: list[tuple[str, float]] = []

    async def get(self, url: str, timeout_s: float) -> bytes:
        self.asked.append((url, timeout_s))
        answer = self.answers.get(url, FetchFailed("HTTP 404"))
        if isinstance(answer, Exception):
            raise answer
        return answer


def _ra(name: str, rules: list[dict[str, Any]]) -> Any:
    return parse_resource(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"jwtRules": rules},
        }
    )


def _setup(*policies: Any) -> tuple[ConfigStore, Issuer, Clock, JwksFetcher, Metrics]:
    store = ConfigStore()
    store.replace_origin("file", {p.key: p for p in policies})
    issuer, clock, metrics = Issuer(), Clock(), Metrics(CollectorRegistry())
    fetcher = JwksFetcher(
        store=store,
        get=issuer.get,
        clock=clock,
        log=LOG,
        fetches=metrics.jwks_fetches,
        timings=JwksTimings(refresh_s=60.0, retry_s=1.0, default_timeout_s=5.0),
    )
    return store, issuer, clock, fetcher, metrics


def _held(store: ConfigStore) -> dict[str, list[str]]:
    return {
        r.uri: [k["kid"] for k in json.loads(r.keys)["keys"]]
        for _, r in store.resources()
        if isinstance(r, FetchedJwks)
    }


def _errors(store: ConfigStore) -> list[tuple[str, str, str]]:
    return [(str(e.key), e.field, e.severity) for e in store.errors() if e.origin == ORIGIN]


async def test_keys_are_fetched_written_to_the_store_and_refreshed() -> None:
    store, issuer, clock, fetcher, metrics = _setup(
        _ra("a", [{"issuer": "i", "jwksUri": URI, "timeout": "2s"}]),
        _ra("b", [{"issuer": "j", "jwksUri": URI, "timeout": "9s"}, {"issuer": "k", "jwks": jwks(KEY_A)}]),
    )
    issuer.answers[URI] = jwks(KEY_A).encode()
    await fetcher.sync_once()
    assert issuer.asked == [(URI, 9.0)]  # one fetch per URI, with the longest timeout of its rules
    assert _held(store) == {URI: ["a"]} and _errors(store) == []
    assert metrics.jwks_fetches.get("ok") == 1

    await fetcher.sync_once()
    assert len(issuer.asked) == 1  # not due before the refresh interval
    clock.time = 60.0
    issuer.answers[URI] = jwks(KEY_B).encode()  # rotated
    revision = store.revision
    await fetcher.sync_once()
    assert _held(store) == {URI: ["b"]} and store.revision > revision

    revision = store.revision
    clock.time = 120.0
    await fetcher.sync_once()
    assert store.revision == revision  # the same keys again: nothing changes, no push


async def test_a_failure_keeps_the_last_keys_and_retries_with_backoff() -> None:
    store, issuer, clock, fetcher, metrics = _setup(_ra("a", [{"issuer": "i", "jwksUri": URI}]))
    issuer.answers[URI] = jwks(KEY_A).encode()
    await fetcher.sync_once()
    clock.time = 60.0
    issuer.answers[URI] = FetchFailed("HTTP 500")
    await fetcher.sync_once()
    assert _held(store) == {URI: ["a"]}
    assert _errors(store) == [("RequestAuthentication default/a", "spec.jwtRules[0].jwksUri", "warning")]
    message = store.errors()[0].message
    assert "HTTP 500" in message and "the last keys fetched stay in use" in message

    asked = len(issuer.asked)
    for at, fetched in ((60.5, False), (61.0, True), (62.5, False), (63.0, True), (67.0, True)):
        clock.time = at
        await fetcher.sync_once()
        assert (len(issuer.asked) > asked) == fetched, at  # retried after 1 s, then 2 s, then 4 s
        asked = len(issuer.asked)
    assert metrics.jwks_fetches.get("failed") == 4

    issuer.answers[URI] = jwks(KEY_B).encode()
    clock.time = 200.0
    await fetcher.sync_once()
    assert _held(store) == {URI: ["b"]} and _errors(store) == []


async def test_no_keys_yet_is_an_error_and_invalid_key_sets_count_as_failures() -> None:
    store, issuer, _, fetcher, metrics = _setup(_ra("a", [{"issuer": "i", "jwksUri": URI}]))
    issuer.answers[URI] = b'{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}'
    await fetcher.sync_once()
    assert _held(store) == {}
    assert _errors(store) == [("RequestAuthentication default/a", "spec.jwtRules[0].jwksUri", "error")]
    assert "no key Envoy can verify tokens with" in store.errors()[0].message
    assert "every token of this rule is rejected" in store.errors()[0].message
    assert metrics.jwks_fetches.get("failed") == 1


async def test_a_refused_address_is_reported_as_such() -> None:
    store, issuer, _, fetcher, metrics = _setup(_ra("a", [{"issuer": "i", "jwksUri": URI}]))
    issuer.answers[URI] = FetchRefused("keys.example is 169.254.169.254, a cloud metadata address")
    await fetcher.sync_once()
    assert metrics.jwks_fetches.get("refused") == 1
    assert "refused: keys.example is 169.254.169.254" in store.errors()[0].message


async def test_discovery_then_keys() -> None:
    discovery = "https://accounts.example/.well-known/openid-configuration"
    store, issuer, clock, fetcher, _ = _setup(_ra("a", [{"issuer": "https://accounts.example"}]))
    issuer.answers[discovery] = json.dumps({"jwks_uri": URI}).encode()
    issuer.answers[URI] = jwks(KEY_A).encode()
    await fetcher.sync_once()
    assert [url for url, _ in issuer.asked] == [discovery, URI]
    assert _held(store) == {discovery: ["a"]}  # held under the source the rule names

    issuer.answers[discovery] = json.dumps({"jwks_uri": "file:///etc/passwd"}).encode()
    clock.time = 60.0
    await fetcher.sync_once()
    assert _errors(store) == [("RequestAuthentication default/a", "spec.jwtRules[0].issuer", "warning")]
    assert "jwks_uri" in store.errors()[0].message


async def test_a_removed_policy_takes_its_keys_and_errors_away() -> None:
    store, issuer, _, fetcher, _ = _setup(_ra("a", [{"issuer": "i", "jwksUri": URI}]))
    issuer.answers[URI] = jwks(KEY_A).encode()
    await fetcher.sync_once()
    store.replace_origin("file", {})
    await fetcher.sync_once()
    assert _held(store) == {} and _errors(store) == []


async def test_run_wakes_on_store_changes() -> None:
    store, issuer, _, fetcher, _ = _setup()
    issuer.answers[URI] = jwks(KEY_A).encode()
    task = asyncio.create_task(fetcher.run())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert issuer.asked == []
        policy = _ra("a", [{"issuer": "i", "jwksUri": URI}])
        store.replace_origin("file", {policy.key: policy})
        for _ in range(50):
            await asyncio.sleep(0)
            if _held(store):
                break
        assert _held(store) == {URI: ["a"]}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("address", "refused", "allowed_by"),
    [
        ("127.0.0.1", "loopback", "loopback"),
        ("127.8.9.10", "loopback", "loopback"),
        ("::1", "loopback", "loopback"),
        ("::ffff:127.0.0.1", "loopback", "loopback"),
        ("0.0.0.0", "loopback", "loopback"),
        ("169.254.169.254", "cloud metadata", "link_local"),
        ("169.254.170.2", "cloud metadata", "link_local"),
        ("fd00:ec2::254", "cloud metadata", "link_local"),
        ("100.100.100.200", "cloud metadata", "link_local"),
        ("169.254.10.20", "link-local", "link_local"),
        ("fe80::1%eth0", "link-local", "link_local"),
        ("::ffff:169.254.169.254", "cloud metadata", "link_local"),
        ("10.1.2.3", None, None),
        ("203.0.113.7", None, None),
        ("2001:db8::1", None, None),
    ],
)
def test_address_policy(address: str, refused: str | None, allowed_by: str | None) -> None:
    reason = AddressPolicy().refusal(address)
    assert (reason is None) if refused is None else (reason is not None and refused in reason), reason
    if allowed_by is not None:
        allowed = AddressPolicy(allow_loopback=allowed_by == "loopback", allow_link_local=allowed_by == "link_local")
        assert allowed.refusal(address) is None
        other = AddressPolicy(allow_loopback=allowed_by != "loopback", allow_link_local=allowed_by != "link_local")
        assert other.refusal(address) is not None


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1/k", "http://[::1]:1/k", "http://169.254.169.254/latest", "http://localhost:1/k"],
)
async def test_fetch_refuses_before_connecting(url: str) -> None:
    with pytest.raises(FetchRefused):
        await fetch_document(url, policy=AddressPolicy(), timeout_s=5, max_bytes=100)
