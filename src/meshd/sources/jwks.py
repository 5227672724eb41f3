"""The JWKS fetcher: meshd fetches the key sets RequestAuthentications name and inlines them into the
config, as istiod does, so sidecars never reach out to the issuer themselves.

It watches the store for RequestAuthentications, works out where each rule's keys come from (its
`jwksUri`, or its issuer's OpenID discovery document: `api.request_authentication.key_source`) and fetches
each source every `refresh` seconds (sources/jwks_fetch.py: bounded, timed out, address policy). What it
fetched is normalised (`api.jwks.normalize_jwks`) and written to the store as `FetchedJwks` resources of
its own origin: translation reads them from the World like any other input, never doing I/O.

Failures never crash anything and never throw keys away: a failed refresh keeps the last good key set
(a warning on every RequestAuthentication that uses it); a source with no good keys yet has none in the
store, so its providers get the placeholder no token verifies against (fail closed) and its users an
error. Failed sources are retried sooner than the refresh (doubling from `retry` up to `refresh`).
Errors go where every error goes: the store (so `/debug/config_errors`, status, `meshd_config_errors`),
the log, and `meshd_jwks_fetches{result}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from meshd.api.jwks import JwksError, fetched_jwks, normalize_jwks
from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.api.request_authentication import KeySource, RequestAuthentication, check_jwks_uri, key_source
from meshd.api.values import parse_duration
from meshd.clock import Clock, sleep_or_wake
from meshd.model.store import ConfigStore
from meshd.obs.logsafe import quoted
from meshd.obs.metrics import IstioCounter
from meshd.sources.jwks_fetch import FetchFailed, FetchRefused

ORIGIN = "meshd:jwks"
MAX_PARALLEL = 8
Get = Callable[[str, float], Awaitable[bytes]]  # (url, timeout seconds) -> body; raises FetchFailed


@dataclass
class _Source:
    """One place keys come from, and the rules that use it."""

    source: KeySource
    timeout_s: float
    users: list[tuple[ResourceKey, str]] = field(default_factory=list)  # (policy, field path)


@dataclass
class _State:
    keys: str | None = None  # the last good key set (canonical)
    failure: str | None = None  # why the last attempt failed
    failures: int = 0
    due: float = 0.0


@dataclass(frozen=True)
class JwksTimings:
    refresh_s: float = 1200.0  # Istio's default refresh (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL: 20m)
    retry_s: float = 5.0
    default_timeout_s: float = 5.0  # a rule without `timeout` (Istio's default)


class JwksFetcher:
    def __init__(
        self,
        *,
        store: ConfigStore,
        get: Get,
        clock: Clock,
        log: logging.Logger,
        fetches: IstioCounter,
        timings: JwksTimings = JwksTimings(),
    ) -> None:
        self._store, self._get, self._clock, self._log = store, get, clock, log
        self._fetches = fetches
        self._timings = timings
        self._states: dict[str, _State] = {}
        self._wake = asyncio.Event()
        self._published: tuple[dict[ResourceKey, Resource], list[InvalidResource]] | None = None
        store.subscribe(self._wake.set)

    def sources(self) -> dict[str, _Source]:
        """Every key source the RequestAuthentications in the store name, with its users."""
        found: dict[str, _Source] = {}
        for resource in self._store.of_kind("RequestAuthentication"):
            if not isinstance(resource, RequestAuthentication):
                continue
            for i, rule in enumerate(resource.spec.jwt_rules):
                source = key_source(rule)
                if source is None:
                    continue
                timeout = self._timings.default_timeout_s if rule.timeout is None else parse_duration(rule.timeout)
                entry = found.setdefault(source.url, _Source(source, timeout))
                entry.timeout_s = max(entry.timeout_s, timeout)
                where = "issuer" if source.discovery else "jwksUri"
                entry.users.append((resource.key, f"spec.jwtRules[{i}].{where}"))
        return found

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.sync_once()
            now = self._clock.now()
            next_due = min((s.due for s in self._states.values()), default=now + self._timings.refresh_s)
            await sleep_or_wake(self._clock, max(next_due - now, 0.0), self._wake)

    async def sync_once(self) -> None:
        """Fetch every source that is due, publishing after each result."""
        sources = self.sources()
        for url in [u for u in self._states if u not in sources]:
            del self._states[url]
        now = self._clock.now()
        due = [s for url, s in sources.items() if self._states.setdefault(url, _State()).due <= now]
        self._publish(sources)
        if not due:
            return
        limit = asyncio.Semaphore(MAX_PARALLEL)

        async def one(source: _Source) -> None:
            async with limit:
                await self._refresh(source)
            self._publish(sources)

        await asyncio.gather(*(one(s) for s in due))

    async def _refresh(self, source: _Source) -> None:
        url = source.source.url
        state = self._states[url]
        try:
            keys = await self._fetch(source)
        except (FetchFailed, JwksError) as err:
            result = "refused" if isinstance(err, FetchRefused) else "failed"
            state.failure = f"{'refused' if result == 'refused' else 'fetch failed'}: {err}"
            state.failures += 1
            backoff = self._timings.retry_s * 2 ** min(state.failures - 1, 16)
            state.due = self._clock.now() + min(backoff, self._timings.refresh_s)
            self._fetches.inc(result)
            self._log.warning(
                "event=jwks_fetch_failed url=%s result=%s keeping_last_keys=%s error=%s",
                quoted(url),
                result,
                state.keys is not None,
                quoted(str(err), 300),
            )
            return
        changed = keys != state.keys
        state.keys, state.failure, state.failures = keys, None, 0
        state.due = self._clock.now() + self._timings.refresh_s
        self._fetches.inc("ok")
        if changed:
            self._log.info("event=jwks_fetched url=%s keys=%d", quoted(url), len(json.loads(keys)["keys"]))

    async def _fetch(self, source: _Source) -> str:
        url = source.source.url
        if source.source.discovery:
            document = _json_object(await self._get(url, source.timeout_s), what="OpenID discovery document")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchFailed(f"the OpenID discovery document at {url} has no jwks_uri")
            try:
                check_jwks_uri(jwks_uri)
            except ValueError as err:
                raise FetchFailed(f"the discovery document's jwks_uri: {err}") from None
            url = jwks_uri
        body = await self._get(url, source.timeout_s)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise JwksError("the key set is not UTF-8 text") from None
        normalized = normalize_jwks(text)
        if normalized.dropped:
            self._log.info(
                "event=jwks_keys_skipped url=%s skipped=%s", quoted(url), quoted("; ".join(normalized.dropped))
            )
        return normalized.text

    def _publish(self, sources: dict[str, _Source]) -> None:
        resources: dict[ResourceKey, Resource] = {}
        errors: list[InvalidResource] = []
        for url, source in sorted(sources.items()):
            state = self._states.get(url)
            if state is None:
                continue
            if state.keys is not None:
                fetched = fetched_jwks(url, state.keys)
                resources[fetched.key] = fetched
            if state.failure is None:
                continue
            where = f"keys from {url}" if not source.source.discovery else f"keys of issuer discovery {url}"
            if state.keys is not None:
                message, severity = f"{where}: {state.failure}; the last keys fetched stay in use", "warning"
            else:
                message, severity = (
                    f"{where}: {state.failure}; no keys yet: every token of this rule is rejected",
                    "error",
                )
            errors += [
                InvalidResource(key, path, message, origin=ORIGIN, severity=severity) for key, path in source.users
            ]
        if self._published == (resources, errors):
            return
        self._published = (resources, errors)
        self._store.replace_origin(ORIGIN, resources, errors)


def _json_object(body: bytes, *, what: str) -> dict[str, object]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchFailed(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise FetchFailed(f"the {what} is not a JSON object")
    return value
