"""`meshd analyze PATH...`: every problem meshd would report for a directory (or files) of Istio and
Kubernetes YAML, found without serving anything, so it can run in CI before `kubectl apply`; or
(`--kubeconfig`) for what a cluster holds, read as `meshd serve` reads it.

The same steps as a running meshd: the directory source's parsing and validation into a ConfigStore, one
generation (translation checks: missing subsets, unknown hosts, conflicts, ...), then the config of every
workload found (pods and WorkloadEntries with an address) built once so that generated resources the proto
guard refuses are reported too. Each problem is an Istio analysis message (`IST0101`...), the code the
status writer puts on the resource in Kubernetes mode."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from meshd.api.meta import InvalidResource
from meshd.clock import SystemClock
from meshd.generate.generations import Generations
from meshd.kube.client import new_api_client
from meshd.kube.status_message import message_for
from meshd.model.store import ConfigStore
from meshd.model.world import World
from meshd.push.loop import generate_options
from meshd.settings import Settings
from meshd.sources.directory import DirectorySource
from meshd.sources.yaml_file import parse_file
from meshd.translate.proxy import Proxy
from meshd.wiring.kube_mode import build_kube_mode


@dataclass(frozen=True, order=True)
class Finding:
    level: str  # Error or Warning, as istioctl analyze prints them
    code: str
    name: str
    resource: str
    origin: str
    field: str
    message: str

    def render(self) -> str:
        where = f" {self.origin}" if self.origin else ""
        return f"{self.level} [{self.code}] ({self.resource}{where}) {self.field}: {self.message}"


def analyze_paths(paths: Sequence[pathlib.Path], *, settings: Settings, log: logging.Logger) -> list[Finding]:
    store = ConfigStore()
    for path in paths:
        if path.is_dir():
            source = DirectorySource(directory=path, store=store, clock=SystemClock(), interval_s=1.0, log=log)
            source.scan()
        else:
            parse_file(path.read_text(errors="replace"), origin=str(path)).apply(store, origin=str(path))
    store.mark_loaded()
    return analyze_store(store, settings=settings)


async def analyze_cluster(
    kubeconfig: pathlib.Path, *, settings: Settings, log: logging.Logger, timeout_s: float = 60.0
) -> list[Finding]:
    """The cluster of `kubeconfig`, read as `meshd serve` reads it (every watched kind listed once)."""
    store = ConfigStore()
    api = await new_api_client(kubeconfig)
    try:
        kube = build_kube_mode(
            api=api, settings=settings, store=store, registry=CollectorRegistry(), clock=SystemClock(), log=log
        )
        reading = asyncio.create_task(kube.run())
        try:
            async with asyncio.timeout(timeout_s):
                while not store.loaded:
                    if reading.done():
                        reading.result()  # raises what stopped it
                        raise RuntimeError("the Kubernetes reader stopped before listing every kind")
                    await asyncio.sleep(0.05)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    finally:
        await api.close()
    return analyze_store(store, settings=settings)


def analyze_store(store: ConfigStore, *, settings: Settings) -> list[Finding]:
    generations = Generations(domain_suffix=settings.domain_suffix, options=generate_options(settings), read_file=None)
    generator, errors = generations.next(store.drain_changes(), revision=store.revision, extra={})
    for proxy in workload_proxies(generator.world):
        generator.snapshot(proxy)
    refused = [e for e in generator.refused if e not in errors]
    origins = {resource.key: origin for origin, resource in store.resources()}
    found = [*store.errors(), *errors, *refused]
    return sorted({_finding(e, origin=e.origin or (origins.get(e.key, "") if e.key else "")) for e in found})


def workload_proxies(world: World) -> list[Proxy]:
    """A sidecar for every workload with an address, as if each had connected (with the agent's SDS)."""
    out = []
    for address, workload in sorted(world.workloads.items()):
        domain = f"{workload.namespace}.svc.{world.domain_suffix}"
        out.append(
            Proxy(
                node_id=f"sidecar~{address}~{workload.name}.{workload.namespace}~{domain}",
                type="sidecar",
                ip=address,
                pod=workload.name,
                namespace=workload.namespace,
                dns_domain=domain,
                sds=True,
                capture=workload.captured,
            )
        )
    return out


def _finding(error: InvalidResource, *, origin: str) -> Finding:
    message = message_for(error)
    return Finding(
        level="Warning" if message.level == "WARNING" else "Error",
        code=message.code,
        name=message.name,
        resource=str(error.key) if error.key is not None else "-",
        origin=origin,
        field=error.field,
        message=error.message,
    )
