"""`meshd analyze PATH...`: every problem meshd would report for a directory (or files) of Istio and
Kubernetes YAML, found without serving anything, so it can run in CI before `kubectl apply`.

The same steps as a running meshd: the directory source's parsing and validation into a ConfigStore, one
generation (translation checks: missing subsets, unknown hosts, conflicts, ...), then the config of every
workload found (pods and WorkloadEntries with an address) built once so that generated resources the proto
guard refuses are reported too. Each problem is an Istio analysis message (`IST0101`...), the code the
status writer puts on the resource in Kubernetes mode."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

from meshd.api.meta import InvalidResource
from meshd.clock import SystemClock
from meshd.generate.generations import Generations
from meshd.kube.status_message import message_for
from meshd.model.store import ConfigStore
from meshd.model.world import World
from meshd.push.loop import generate_options
from meshd.settings import Settings
from meshd.sources.directory import DirectorySource
from meshd.sources.yaml_file import parse_file
from meshd.translate.proxy import Proxy


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
