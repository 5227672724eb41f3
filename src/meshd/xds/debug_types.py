"""Istio's debug xDS types, answered on an ADS stream of their own as istiod answers them, so that an
unmodified `istioctl x proxy-status --xds-address` (and `meshd proxy-status`) can read meshd:

- `istio.io/debug/syncz`: one `envoy.service.status.v3.ClientConfig` per connected proxy, its node id
  in Istio's proxy-id form `<pod>.<namespace>` with CLUSTER_ID and ISTIO_VERSION metadata, and one
  `PerXdsConfig` per type (LDS, CDS, RDS, EDS) with the CSDS status: NOT_SENT (never sent), SYNCED (the
  last response acked), ERROR (the last response NACKed; the error is kept in `/debug/syncz`), STALE
  (sent, not yet acked);
- `istio.io/debug/config_dump`: for the proxy id in `resource_names`, an `envoy.admin.v3.ConfigDump`
  of what meshd serves it (private keys redacted, as Envoy's own config dump does).

The response's `control_plane.identifier` is the JSON istioctl reads for its ISTIOD and VERSION columns."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.admin.v3 import config_dump_pb2, config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from meshd.translate.proxy import InvalidNodeId, Proxy, parse_node_id
from meshd.xds.hub import Connection, Hub
from meshd.xds.resource import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshd.xds.stream import TypeState

DEBUG_PREFIX = "istio.io/debug/"
SYNCZ = "istio.io/debug/syncz"
CONFIG_DUMP = "istio.io/debug/config_dump"
SUPPORTED = (SYNCZ, CONFIG_DUMP)
# One PerXdsConfig per type, in istioctl's column order; the oneof field naming the type.
_TYPE_FIELDS = (
    (CLUSTER, "cluster_config"),
    (LISTENER, "listener_config"),
    (ENDPOINT, "endpoint_config"),
    (ROUTE, "route_config"),
)


def is_debug_type(type_url: str) -> bool:
    return type_url.startswith(DEBUG_PREFIX)


@dataclass(frozen=True)
class ControlPlane:
    """Who answers: the identifier istioctl shows (pod or host name) and meshd's version."""

    identity: str
    version: str
    cluster_id: str

    def identifier(self) -> str:
        return json.dumps({"Component": "meshd", "ID": self.identity, "Info": {"version": self.version}})


def sync_status(state: TypeState | None) -> int:
    """The CSDS status of one type on one stream."""
    if state is None or state.sent_version is None:
        return int(csds_pb2.NOT_SENT)
    if state.nack_version is not None and state.nack_version == state.sent_version:
        return int(csds_pb2.ERROR)
    if state.acked_version == state.sent_version:
        return int(csds_pb2.SYNCED)
    return int(csds_pb2.STALE)


def proxy_id(conn: Connection) -> str:
    """Istio's proxy id: `<pod>.<namespace>` (what istioctl shows and takes as its argument)."""
    return f"{conn.proxy.pod}.{conn.proxy.namespace}"


def client_config(conn: Connection, *, cluster_id: str) -> csds_pb2.ClientConfig:
    out = csds_pb2.ClientConfig(node=base_pb2.Node(id=proxy_id(conn)))
    out.node.metadata.update(
        {
            "CLUSTER_ID": cluster_id,
            "NAMESPACE": conn.proxy.namespace,
            "PROXY_TYPE": conn.proxy.type,
            "NODE_ID": conn.proxy.node_id,
        }
    )
    held = {r.type_url: r for r in conn.isolation.rejected}  # rejected resources still held back
    for type_url, field in _TYPE_FIELDS:
        state = conn.stream.types.get(type_url)
        status = sync_status(state)
        if type_url in held:
            status = csds_pb2.ERROR
        getattr(out.xds_config.add(status=status), field).SetInParent()
        # The newer CSDS form also carries the NACK's error (meshd proxy-status shows it).
        generic = out.generic_xds_configs.add(type_url=type_url, config_status=status)
        if state is not None:
            generic.version_info = state.sent_version or ""
            if status == csds_pb2.ERROR:
                rejected = held.get(type_url)
                detail = f"{rejected.name}: {rejected.error}" if rejected is not None else state.nack_error or ""
                generic.error_state.details = detail
                generic.error_state.version_info = state.nack_version or ""
    return out


def syncz(hub: Hub, *, cluster_id: str) -> list[any_pb2.Any]:
    """One ClientConfig per proxy connected to this meshd (newest connection of a proxy id wins)."""
    by_id: dict[str, Connection] = {}
    for conn in hub.connections.values():
        if not conn.agent_only:
            by_id[proxy_id(conn)] = conn
    return [_packed(client_config(conn, cluster_id=cluster_id)) for _, conn in sorted(by_id.items())]


def config_dump(hub: Hub, names: Iterable[str]) -> list[any_pb2.Any]:
    """The config meshd serves each named proxy: a connected one by proxy id or node id, any other by its
    full node id (computed as for a sidecar run by the agent, with SDS, not capturing); names that are
    neither are left out."""
    out = []
    for name in names:
        proxy = _proxy(hub, name)
        if proxy is None:
            continue
        dump = config_dump_pb2.ConfigDump()
        snapshot = hub.snapshot_for(proxy)
        clusters = config_dump_shared_pb2.ClustersConfigDump()
        listeners = config_dump_shared_pb2.ListenersConfigDump()
        routes = config_dump_shared_pb2.RoutesConfigDump()
        endpoints = config_dump_shared_pb2.EndpointsConfigDump()
        secrets = config_dump_pb2.SecretsConfigDump()
        for type_url, resources in sorted(snapshot.resources.items()):
            for rname, resource in sorted(resources.items()):
                packed = resource.to_any()
                if type_url == CLUSTER:
                    clusters.dynamic_active_clusters.add(version_info=resource.version).cluster.CopyFrom(packed)
                elif type_url == LISTENER:
                    entry = listeners.dynamic_listeners.add(name=rname)
                    entry.active_state.version_info = resource.version
                    entry.active_state.listener.CopyFrom(packed)
                elif type_url == ROUTE:
                    routes.dynamic_route_configs.add(version_info=resource.version).route_config.CopyFrom(packed)
                elif type_url == ENDPOINT:
                    item = endpoints.dynamic_endpoint_configs.add(version_info=resource.version)
                    item.endpoint_config.CopyFrom(packed)
                elif type_url == SECRET:  # names only: private keys are never shown
                    secrets.dynamic_active_secrets.add(name=rname, version_info=resource.version)
        for section in (clusters, listeners, routes, endpoints, secrets):
            dump.configs.add().Pack(section)
        out.append(_packed(dump))
    return out


def _proxy(hub: Hub, name: str) -> Proxy | None:
    if (conn := hub.find(name)) is not None:
        return conn.proxy
    try:
        return dataclasses.replace(parse_node_id(name), sds=True)
    except InvalidNodeId:
        return None


def _packed(message: csds_pb2.ClientConfig | config_dump_pb2.ConfigDump) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out
