"""The push loop: store changes are debounced (quiet period, capped by a maximum delay), then one World
and one generation are built (meshd.generate) and published to every stream through the hub.

No input stops meshd: a generation that raises is reported (log, `meshd_build_failures`, an error in
/debug/config_errors) and the hub keeps serving the last good one; a proxy whose snapshot raises keeps
its last good snapshot while every other proxy is updated (xds/hub.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from meshd.api.mesh import MeshConfig
from meshd.api.meshconfig import MeshPolicy
from meshd.api.meta import InvalidResource
from meshd.api.proxyconfig import ProxyConfig, namespace_conflicts
from meshd.clock import Clock
from meshd.gcpolicy import GcPolicy
from meshd.generate.generations import Generations
from meshd.generate.generator import ConfigGenerator
from meshd.generate.nacks import nack_errors
from meshd.generate.options import GenerateOptions
from meshd.model.store import ConfigStore
from meshd.obs.metrics import Metrics
from meshd.push.debounce import Debouncer
from meshd.push.files import read_file
from meshd.settings import Settings
from meshd.translate.proxy import Proxy
from meshd.xds.hub import Hub
from meshd.xds.isolation import Rejected
from meshd.xds.resource import XdsResource


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
        rejected: Callable[[], list[tuple[Proxy, Rejected]]] | None = None,
    ) -> None:
        # what connected proxies rejected: the hub's own, and (`--workers`) every worker's
        self._rejected = rejected if rejected is not None else hub.rejected
        self._gc = gc_policy
        self._idle_s = idle_s
        self._clock = clock
        self._store, self._hub, self._settings = store, hub, settings
        self._metrics, self._log = metrics, log
        self._debouncer = Debouncer(
            clock=clock,
            quiet=settings.debounce_quiet_s,
            max_delay=settings.debounce_max_s,
            calm_quiet=settings.debounce_calm_quiet_s,
        )
        self._extra: dict[str, Sequence[XdsResource]] = {}
        self._mesh: Callable[[], MeshConfig | None] = lambda: None
        self._generations = Generations(
            domain_suffix=settings.domain_suffix,
            options=generate_options(settings),
            read_file=read_file if settings.check_tls_files else None,
        )
        self._reported: list[InvalidResource] = []
        self._translation_errors: list[InvalidResource] = []
        self._build_errors: list[InvalidResource] = []  # generation or proxy builds that raised
        store.subscribe(self._debouncer.touch)
        metrics.config_errors.set_function(lambda: sum(e.severity != "warning" for e in self.errors))

    @property
    def errors(self) -> list[InvalidResource]:
        """Every resource rejected right now: by validation (live from the store), translation, the
        proto guard (generated resources left out, live: a proxy connecting later may meet more), or a
        connected Envoy (NACKs, on the resources behind the rejected one)."""
        current, reported = self._generations.current, self._translation_errors
        refused = [e for e in current.refused if e not in reported] if current is not None else []
        rejected = self._rejected()
        nacked = (
            nack_errors(rejected, current.world, root_namespace=self._settings.root_namespace)
            if rejected and current is not None
            else []
        )
        proxy_configs = namespace_conflicts(c for c in self._store.of_kind("ProxyConfig") if isinstance(c, ProxyConfig))
        return self._store.errors() + reported + refused + self._build_errors + nacked + proxy_configs

    def follow_mesh(self, mesh: Callable[[], MeshConfig | None]) -> None:
        """Where the mesh config comes from (read at every generation; a change rebuilds everything:
        options are part of every key): the `istio` ConfigMap, or the `--mesh-config` file. The source
        touches the store on a change."""
        self._mesh = mesh

    @property
    def mesh_config(self) -> MeshConfig | None:
        """The mesh config as its source has it now (a worker is sent it too)."""
        return self._mesh()

    def inject(self, type_url: str, resources: Sequence[XdsResource]) -> None:
        """Test hook: serve extra resources as they are (used to exercise Envoy's NACK path)."""
        self._extra[type_url] = resources
        self._debouncer.touch()

    @property
    def injected(self) -> dict[str, Sequence[XdsResource]]:
        """The resources `inject` added (a worker is sent them too)."""
        return dict(self._extra)

    def rebuild(self, *, changed_at: float) -> ConfigGenerator:
        started = self._clock.now()
        options = generate_options(self._settings, self._mesh())
        generator, errors = self._generations.next(
            self._store.drain_changes(),
            revision=self._store.revision,
            extra=dict(self._extra),
            options=options if options != self._generations.options else None,
        )
        world = generator.world
        self._translation_errors = errors
        generated = self._clock.now()
        woken = self._hub.publish(generator, changed_at=changed_at)
        published = self._clock.now()
        # generated resources the proto guard left out of the snapshots just built
        errors = self._translation_errors = errors + [e for e in generator.refused if e not in errors]
        for err in errors:
            if err not in self._reported:
                self._log.log(
                    logging.WARNING if err.severity == "warning" else logging.ERROR,
                    "event=%s resource=%s field=%s message=%r",
                    "config_warning" if err.severity == "warning" else "config_rejected",
                    err.key or "-",
                    err.field,
                    err.message,
                )
        self._reported = errors
        self._report_proxy_failures()
        self._log.info(
            "event=push_generation generation=%d revision=%d services=%d proxies=%d pushed=%d built=%d reused=%d"
            " errors=%d waited_ms=%.1f generate_ms=%.1f publish_ms=%.1f",
            self._hub.generation,
            world.revision,
            len(world.services),
            len(self._hub.connections),
            woken,
            generator.memo.built,
            generator.memo.reused,
            len(self.errors),
            (started - changed_at) * 1000,  # from the first change seen (debounce, the loop being busy)
            (generated - started) * 1000,
            (published - generated) * 1000,
        )
        return generator

    def push(self, *, changed_at: float) -> bool:
        """One generation, published; False if it raised (the hub keeps serving the last good one)."""
        try:
            self.rebuild(changed_at=changed_at)
        except Exception as exc:  # never stops meshd
            self._generation_failed(exc)
            return False
        return True

    def _report_proxy_failures(self) -> None:
        reported = {e.field for e in self._build_errors}
        self._build_errors = []
        for failure in self._hub.failures.values():
            field = f"proxy {_clip(failure.node_id)}"
            self._build_errors.append(
                InvalidResource(
                    None, field, f"its config could not be built, it keeps its last: {_clip(failure.error)}"
                )
            )
            if field not in reported:
                self._metrics.build_failures.inc("proxy")
                self._log.error(
                    "event=proxy_build_failed proxy=%r generation=%d error=%r",
                    _clip(failure.node_id),
                    self._hub.generation,
                    _clip(failure.error),
                )

    def _generation_failed(self, exc: Exception) -> None:
        """A generation raised: the hub keeps serving the last good one."""
        self._metrics.build_failures.inc("generation")
        error = _clip(f"{type(exc).__name__}: {exc}")
        self._build_errors = [
            InvalidResource(None, "<generation>", f"config generation failed, the last good one is served: {error}")
        ]
        self._log.exception(
            "event=generation_failed revision=%d serving_generation=%d error=%r",
            self._store.revision,
            self._hub.generation,
            error,
        )

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
            if self._gc is not None:
                with self._gc.pushing():  # no collection inside; the push's config frozen after it
                    self.push(changed_at=changed_at)
            else:
                self.push(changed_at=changed_at)
            self._debouncer.ready()  # a change coming `quiet` after this found the loop calm
            await asyncio.sleep(0)  # let streams pick the generation up before the next one


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def generate_options(settings: Settings, mesh: MeshConfig | None = None) -> GenerateOptions:
    """The mesh-wide settings generation reads, from meshd's settings and the mesh config (whose
    rootNamespace and trustDomain win over the settings' defaults)."""
    policy = mesh.policy if mesh is not None else MeshPolicy()
    return GenerateOptions(
        mesh=policy,
        inbound_port=settings.inbound_port,
        sidecar_endpoint_port=settings.inbound_port,
        root_namespace=mesh.root_namespace if mesh is not None else settings.root_namespace,
        trust_domain=mesh.trust_domain if mesh is not None else settings.trust_domain,
        gateway_trusted_proxies=mesh.gateway_trusted_proxies if mesh is not None else 0,
        auto_mtls=settings.enable_auto_mtls,
        cluster_id=settings.cluster_id,
        # the mesh config's outboundTrafficPolicy.mode, else the flag (a Sidecar's own mode wins over both)
        outbound_traffic_policy=policy.outbound_traffic_policy or settings.outbound_traffic_policy,
        scope_gateway_to_namespace=settings.scope_gateway_to_namespace,
        gateway_bind_proxy_ip=settings.gateway_bind == "proxy-ip"
        or (settings.gateway_bind == "auto" and settings.config_dir is not None),
        protocol_detection_timeout=settings.protocol_detection_timeout_s,
    )
