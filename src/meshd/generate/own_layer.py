"""A proxy group's own layer: the listeners and inbound clusters of the proxies at one address in one
scope (its key: own_inputs.py). Capture-mode resources are shared through the memo by the proxies of a
scope serving the same ports; the rest is bound to the address and built directly."""

from __future__ import annotations

from functools import partial

from meshd.api.meta import InvalidResource
from meshd.generate.memo import MemoEntry, Refused, ResourceMemo, build_all, reuse_layer
from meshd.generate.reads import Context
from meshd.translate.capture import capture_cluster_specs, capture_listener_specs
from meshd.translate.clusters import inbound_cluster_specs
from meshd.translate.listeners import inbound_listener_specs, outbound_listener_specs
from meshd.translate.scope import ScopeKey
from meshd.translate.sidecar_ingress import (
    bound_ingress_listener_specs,
    bound_ports,
    ingress_cluster_specs,
    plaintext_ports,
)
from meshd.translate.spec import Spec
from meshd.translate.telemetry.apply import with_telemetry
from meshd.translate.telemetry.resolve import WorkloadTelemetry
from meshd.translate.virtual_inbound import inbound_protocols
from meshd.xds.resource import CLUSTER, LISTENER, Snapshot


def build_own_layer(
    ctx: Context, previous: Snapshot | None, *, key: ScopeKey, memo: ResourceMemo, inbound_port: int
) -> tuple[Snapshot, list[MemoEntry]]:
    """A proxy group's own layer: its listeners and inbound clusters (the refused memo entries it holds are
    returned to be reported while the layer is used)."""
    proxy, q = ctx.proxy, ctx.queries
    assert proxy is not None
    plan, served = q.plan(key), q.served(proxy.ip)
    modes = q.inbound_mtls(proxy.namespace, proxy.ip)
    jwt = q.jwt_providers(proxy.namespace, proxy.ip)
    authz = q.authorization(proxy.namespace, proxy.ip)
    inbound = q.sidecar_inbound(key)
    telemetry = q.workload_telemetry(proxy.namespace, proxy.ip)
    refused: list[MemoEntry] = []  # left out by the proto guard: reported while the layer is used
    if proxy.capture:
        listener_specs = capture_listener_specs(
            plan=plan,
            served=served,
            modes=modes,
            sds=proxy.sds,
            outbound_mode=q.outbound_mode(key),
            inbound_port=inbound_port,
            jwt=jwt,
            authz=authz,
            inbound=inbound,
            skeletons=partial(_skeleton, memo, telemetry),
        )
        ingress_specs = bound_ingress_listener_specs(inbound, proxy, modes=modes, capture=True, jwt=jwt, authz=authz)
        # Nothing here is bound to the proxy's address unless its key says so (a Sidecar's ingress):
        # proxies of a scope serving the same ports share these resources through the memo. Only
        # the refused entries are carried with the layer (reported while it is used): keeping every
        # entry would cost each carried proxy a walk per push; one not kept is built again by the
        # first proxy that needs it after the next generation.
        used: list[MemoEntry] = []
        own = {
            LISTENER: memo.resolve(with_telemetry([*listener_specs, *ingress_specs], telemetry), used),
            CLUSTER: memo.resolve(capture_cluster_specs(served=served, inbound=inbound, address=proxy.ip), used),
        }
        return reuse_layer(own, previous), [entry for entry in used if type(entry[1]) is Refused]
    else:
        # Bound to this proxy's address: nothing to share, so built directly (no memo). A Sidecar's
        # ingress replaces the inbound side derived from the services (peers still reach its
        # plaintext ports through the inbound port).
        if inbound.ingress is not None:
            plaintext = plaintext_ports(inbound)
            served = tuple(e for e in served if e[2] in plaintext)
            clusters = ingress_cluster_specs(inbound, address=proxy.ip, capture=False)
        else:
            clusters = inbound_cluster_specs(
                address=proxy.ip,
                target_ports=[t for _, _, t in served],
                protocols=inbound_protocols(served),
                pool=inbound.pool,
            )
        own = {
            LISTENER: build_all(
                with_telemetry(
                    [
                        *outbound_listener_specs(plan, proxy, taken=bound_ports(inbound, proxy, capture=False)),
                        *inbound_listener_specs(
                            proxy, served, inbound_port=inbound_port, modes=modes, jwt=jwt, authz=authz
                        ),
                        *bound_ingress_listener_specs(inbound, proxy, modes=modes, capture=False, jwt=jwt, authz=authz),
                    ],
                    telemetry,
                ),
                refused,
            ),
            CLUSTER: build_all(clusters, refused),
        }
    memo.keep(refused)
    return reuse_layer(own, previous), refused


def _skeleton(memo: ResourceMemo, telemetry: WorkloadTelemetry, spec: Spec) -> bytes | tuple[InvalidResource, ...]:
    """virtualInbound's skeleton through the memo (shared by every proxy serving the same ports the same
    way), with the workload's telemetry on its connection managers and TCP proxies."""
    [decorated] = with_telemetry([spec], telemetry)
    built = memo.resolve_one(decorated)
    if isinstance(built, Refused):
        return built.errors
    return built.body
