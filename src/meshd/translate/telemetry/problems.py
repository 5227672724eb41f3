"""The rejections of telemetry config, once per World: each Telemetry's provider references (unknown, of a
kind that does not fit the field, of a kind meshd does not translate, or whose service is not a service
of the mesh) and the mesh config's own (defaultProviders, the `enableTracing` collector). What is
reported here is what resolution (`resolve.py`) leaves out."""

from __future__ import annotations

from collections.abc import Mapping

from meshd.api.meshtelemetry import ACCESS_LOG_KINDS, TRACING_KINDS, UNSUPPORTED_KINDS, MeshTelemetry
from meshd.api.meta import InvalidResource
from meshd.api.telemetry import Telemetry
from meshd.model.services import MeshService
from meshd.translate.telemetry.resolve import MESH_LOG, legacy_address, service_hostname

MESH_CONFIG_FIELD = "meshConfig"


def provider_problem(
    name: str,
    *,
    kinds: tuple[str, ...],
    mesh: MeshTelemetry,
    services: Mapping[str, MeshService],
    domain_suffix: str,
) -> str | None:
    """Why the provider `name` cannot serve a field taking `kinds` (None: it can)."""
    if name == MESH_LOG:
        return None
    provider = mesh.provider(name)
    if provider is None:
        return f"provider {name!r} is not an extensionProviders entry of the mesh config"
    if provider.kind in UNSUPPORTED_KINDS:
        return (
            f"provider {name!r} is of kind {provider.kind}, which meshd does not support "
            f"(supported: {', '.join(kinds)})"
        )
    if provider.kind not in kinds:
        return f"provider {name!r} is of kind {provider.kind}, not one of {', '.join(kinds)}"
    config = provider.otel_als or provider.zipkin or provider.otel
    if config is None:
        return None
    host = service_hostname(config.service, domain_suffix=domain_suffix)
    service = services.get(host)
    if service is None:
        return f"provider {name!r}: service {host!r} is not a service of the mesh"
    if service.port(config.port) is None:
        return f"provider {name!r}: {config.port} is not a port of service {host!r}"
    return None


def telemetry_errors(
    telemetries: Mapping[str, tuple[Telemetry, ...]],
    *,
    mesh: MeshTelemetry,
    services: Mapping[str, MeshService],
    domain_suffix: str,
    root_namespace: str,
) -> list[InvalidResource]:
    out: list[InvalidResource] = []

    def check(where: str, name: str, kinds: tuple[str, ...], key: object) -> None:
        problem = provider_problem(name, kinds=kinds, mesh=mesh, services=services, domain_suffix=domain_suffix)
        if problem is not None:
            out.append(InvalidResource(key, where, problem))  # type: ignore[arg-type]

    for group in telemetries.values():
        for telemetry in group:
            spec = telemetry.spec
            for i, logging in enumerate(spec.access_logging):
                for j, ref in enumerate(logging.providers):
                    check(f"spec.accessLogging[{i}].providers[{j}].name", ref.name, ACCESS_LOG_KINDS, telemetry.key)
            for i, tracing in enumerate(spec.tracing):
                for j, ref in enumerate(tracing.providers):
                    check(f"spec.tracing[{i}].providers[{j}].name", ref.name, TRACING_KINDS, telemetry.key)
    for i, name in enumerate(mesh.default_providers.access_logging):
        check(f"{MESH_CONFIG_FIELD}.defaultProviders.accessLogging[{i}]", name, ACCESS_LOG_KINDS, None)
    for i, name in enumerate(mesh.default_providers.tracing):
        check(f"{MESH_CONFIG_FIELD}.defaultProviders.tracing[{i}]", name, TRACING_KINDS, None)
    if mesh.enable_tracing:
        host, port = legacy_address(mesh, root_namespace=root_namespace)
        hostname = service_hostname(host, domain_suffix=domain_suffix)
        service = services.get(hostname)
        if service is None or service.port(port) is None:
            out.append(
                InvalidResource(
                    None,
                    f"{MESH_CONFIG_FIELD}.defaultConfig.tracing.zipkin.address",
                    f"enableTracing: the collector {host}:{port} is not a service port of the mesh "
                    f"({hostname}): no spans are sent until it is",
                )
            )
    return out
