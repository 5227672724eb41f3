"""The JWKS fetcher as `meshd serve` wires it: real HTTP fetches under the settings' address policy,
size limit and timeouts, writing what it fetched into the store (sources/jwks.py)."""

from __future__ import annotations

import logging
from functools import partial

from meshd.clock import Clock
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.sources.jwks import JwksFetcher, JwksTimings
from meshd.sources.jwks_fetch import AddressPolicy, fetch_document


def jwks_fetcher(
    *, settings: Settings, store: ConfigStore, clock: Clock, metrics: Metrics, log: logging.Logger
) -> JwksFetcher:
    policy = AddressPolicy(allow_loopback=settings.jwks_allow_loopback, allow_link_local=settings.jwks_allow_link_local)

    async def get(url: str, timeout_s: float) -> bytes:
        return await fetch(url, timeout_s=timeout_s)

    fetch = partial(fetch_document, policy=policy, max_bytes=settings.jwks_max_bytes)
    return JwksFetcher(
        store=store,
        get=get,
        clock=clock,
        log=log,
        fetches=metrics.jwks_fetches,
        timings=JwksTimings(
            refresh_s=settings.jwks_refresh_s,
            retry_s=settings.jwks_retry_s,
            default_timeout_s=settings.jwks_fetch_timeout_s,
        ),
    )
