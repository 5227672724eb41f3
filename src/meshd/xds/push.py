"""The push pipeline: store changes are debounced (quiet period, capped by a maximum delay), then
one World and one ConfigGenerator are built and published to every stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from meshd.api.meta import InvalidResource, Resource, ResourceKey
from meshd.clock import Clock
from meshd.gcpolicy import GcPolicy
from meshd.model.fallback import LastAccepted, kept_previous
from meshd.model.state import WorldState
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.settings import Settings
from meshd.xds.cache import ConfigGenerator
from meshd.xds.hub import Hub
from meshd.xds.resource import XdsResource
from meshd.xds.tls_files import read_file


class Debouncer:
    """Coalesces bursts of events: fires `quiet` after the last event, or `max_delay` after the first."""

    def __init__(self, *, clock: Clock, quiet: float, max_delay: float) -> None:
        self._clock, self._quiet, self._max = clock, quiet, max_delay
        self._event = asyncio.Event()
        self.first: float | None = None
        self._last = 0.0

    def touch(self) -> None:
        now = self._clock.now()
        if self.first is None:
            self.first = now
        self._last = now
        self._event.set()

    async def pending(self) -> None:
        """Return as soon as an event is waiting to be handled."""
        await self._event.wait()

    async def wait(self) -> float:
        """Wait for a burst to settle; returns the time of its first event."""
        await self._event.wait()
        while True:
            assert self.first is not None
            deadline = min(self._last + self._quiet, self.first + self._max)
            now = self._clock.now()
            if now >= deadline:
                break
            await self._clock.sleep(deadline - now)
        first, self.first = self.first, None
        self._event.clear()
        return first


class PushLoop:
    def __init__(
        self,
        *,
        store: ConfigStore,
        hub: Hub,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        log: logging.Logger,
        gc_policy: GcPolicy | None = None,
        idle_s: float = 1.0,
    ) -> None:
        self._gc = gc_policy
        self._idle_s = idle_s
        self._clock = clock
        self._store, self._hub, self._settings = store, hub, settings
        self._metrics, self._log = metrics, log
        self._debouncer = Debouncer(clock=clock, quiet=settings.debounce_quiet_s, max_delay=settings.debounce_max_s)
        self._extra: dict[str, Sequence[XdsResource]] = {}
        self._generator: ConfigGenerator | None = None
        self._state = WorldState(domain_suffix=settings.domain_suffix)
        self._fallback = LastAccepted()
        self._substituted: dict[ResourceKey, Resource] = {}
        self._reported: list[InvalidResource] = []
        self._translation_errors: list[InvalidResource] = []
        store.subscribe(self._debouncer.touch)
        metrics.config_errors.set_function(lambda: len(self.errors))

    @property
    def errors(self) -> list[InvalidResource]:
        """Every resource rejected right now: by validation (live from the store) or translation."""
        return self._store.errors() + self._translation_errors

    def inject(self, type_url: str, resources: Sequence[XdsResource]) -> None:
        """Test hook: serve extra resources as they are (used to exercise Envoy's NACK path)."""
        self._extra[type_url] = resources
        self._debouncer.touch()

    def _generate(self, previous: ConfigGenerator | None) -> ConfigGenerator:
        generator = ConfigGenerator(
            self._state.world(revision=self._store.revision),
            inbound_port=self._settings.inbound_port,
            sidecar_endpoint_port=self._settings.inbound_port,
            root_namespace=self._settings.root_namespace,
            extra=dict(self._extra),
            previous=previous,
            read_file=read_file if self._settings.check_tls_files else None,
            trust_domain=self._settings.trust_domain,
            auto_mtls=self._settings.enable_auto_mtls,
            outbound_traffic_policy=self._settings.outbound_traffic_policy,
        )
        generator.precompute()
        return generator

    def _with_fallbacks(self) -> tuple[ConfigGenerator, list[InvalidResource]]:
        """Generate from the newest resources; where translation rejects a new version of a
        VirtualService or DestinationRule, generate again with its last accepted version (kept only
        if that one is still accepted). Returns the generator and every rejection to report."""
        changes: dict[ResourceKey, Resource | None] = dict(self._store.drain_changes())
        self._fallback.observe(changes)
        for key in self._substituted:  # start again from the newest versions
            changes.setdefault(key, self._fallback.latest(key))
        self._state.apply(changes)
        generator = self._generate(self._generator)
        substitutes = self._fallback.substitutions(generator.errors)
        rejected = [e for e in generator.errors if e.key in substitutes]
        if substitutes:
            self._state.apply(substitutes)
            generator = self._generate(generator)
            failed = {e.key for e in generator.errors if e.key in substitutes}
            if failed:
                self._fallback.failed(failed)
                self._state.apply({key: self._fallback.latest(key) for key in failed})
                substitutes = {k: v for k, v in substitutes.items() if k not in failed}
                rejected = [e for e in rejected if e.key not in failed]
                generator = self._generate(generator)
        self._substituted = substitutes
        errors = generator.errors + [kept_previous(e) for e in rejected]
        self._fallback.settle(e.key for e in errors if e.key is not None)
        return generator, errors

    def rebuild(self, *, changed_at: float) -> ConfigGenerator:
        generator, errors = self._with_fallbacks()
        world = generator.world
        self._generator = generator
        self._translation_errors = errors
        for err in errors:
            if err not in self._reported:
                self._log.error(
                    "event=config_rejected resource=%s field=%s message=%r",
                    err.key or "-",
                    err.field,
                    err.message,
                )
        self._reported = errors
        woken = self._hub.publish(generator, changed_at=changed_at)
        self._log.info(
            "event=push_generation generation=%d revision=%d services=%d proxies=%d pushed=%d built=%d reused=%d"
            " errors=%d",
            self._hub.generation,
            world.revision,
            len(world.services),
            len(self._hub.connections),
            woken,
            generator.memo.built,
            generator.memo.reused,
            len(self.errors),
        )
        return generator

    async def _collect_when_idle(self) -> None:
        """If a full GC is due, run it once no change has been pending for idle_s."""
        if self._gc is None or not self._gc.due:
            return
        pending = asyncio.ensure_future(self._debouncer.pending())
        idle = asyncio.ensure_future(self._clock.sleep(self._idle_s))
        try:
            done, _ = await asyncio.wait({pending, idle}, return_when=asyncio.FIRST_COMPLETED)
            if idle in done and pending not in done:
                self._gc.collect()
                self._log.info("event=gc_full_collection")
        finally:
            for task in (pending, idle):
                task.cancel()

    async def run(self) -> None:
        while True:
            await self._collect_when_idle()
            changed_at = await self._debouncer.wait()
            if not self._store.loaded:
                continue
            self.rebuild(changed_at=changed_at)
            if self._gc is not None:
                self._gc.after_push()
            await asyncio.sleep(0)  # let streams pick the generation up before the next one
