"""Envoy v3 bootstrap for a meshd sidecar: identity (node), ADS towards meshd, admin, runtime.

The bootstrap is the only static configuration a sidecar gets: everything else (listeners,
routes, clusters, endpoints) arrives over one ADS stream from the `xds-grpc` cluster.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

import yaml

from meshd.translate.proxy import parse_node_id

XDS_CLUSTER = "xds-grpc"
_DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
_HTTP_PROTOCOL_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket_address(*, host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _xds_cluster(*, host: str, port: int) -> dict[str, Any]:
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host=host, port=port)}}]}],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                    }
                },
            }
        },
        "upstream_connection_options": {"tcp_keepalive": {"keepalive_time": 300}},
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": priority,
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                }
                for priority in ("DEFAULT", "HIGH")
            ]
        },
    }


def _node_metadata(*, node_id: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    identity = parse_node_id(node_id)
    metadata: dict[str, Any] = {
        "NAMESPACE": identity.namespace,
        "NAME": identity.pod,
        "INSTANCE_IPS": identity.ip,
        "CLUSTER_ID": "Kubernetes",
    }
    if extra:
        metadata.update(extra)
    return metadata


def build_bootstrap(
    *,
    node_id: str,
    cluster: str,
    xds_host: str,
    xds_port: int,
    admin_host: str,
    admin_port: int,
    delta: bool,
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (JSON-able dict) for the sidecar `node_id`, fetching config from meshd.

    `extra_metadata` is merged over the Istio-like node metadata derived from the node id.
    """
    return {
        "node": {
            "id": node_id,
            "cluster": cluster,
            "metadata": _node_metadata(node_id=node_id, extra=extra_metadata),
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [_xds_cluster(host=xds_host, port=xds_port)]},
        "admin": {"address": _socket_address(host=admin_host, port=admin_port)},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": 1 << 20,
                    },
                }
            ]
        },
        "layered_runtime": {
            "layers": [
                {
                    "name": "static",
                    "static_layer": {"re2.max_program_size.error_level": 32768},
                },
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }


def render(config: Mapping[str, Any], *, fmt: str) -> str:
    """Serialise a bootstrap as "json" (indented) or "yaml"; always ends with a newline."""
    if fmt == "json":
        return json.dumps(config, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    raise ValueError(f"unknown bootstrap format {fmt!r}: want 'json' or 'yaml'")
