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

from meshd.agent.prometheus import stats_cluster, stats_config, stats_listener
from meshd.translate.proxy import parse_node_id

XDS_CLUSTER = "xds-grpc"
SDS_CLUSTER = "sds-grpc"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
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


def _http2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _HTTP_PROTOCOL_OPTIONS,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def sds_config(*, delta: bool = False) -> dict[str, Any]:
    """How Envoy fetches a secret from the node agent: gRPC over the `sds-grpc` cluster, waiting as
    long as it takes (no initial fetch timeout: never start without the certificate)."""
    return {
        "api_config_source": {
            "api_type": "DELTA_GRPC" if delta else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            "set_node_on_first_message_only": True,
        },
        "initial_fetch_timeout": "0s",
        "resource_api_version": "V3",
    }


def _sds_cluster(*, socket_path: str) -> dict[str, Any]:
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}],
        },
        "typed_extension_protocol_options": _http2_options(),
    }


def _xds_mtls(*, server_name: str, sds_delta: bool) -> dict[str, Any]:
    """mTLS towards meshd: the workload certificate (`default`) as client cert, `ROOTCA` as trust,
    and meshd's DNS name checked in its certificate."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS,
            "sni": server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": sds_config(delta=sds_delta)}],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": server_name}}]
                    },
                    "validation_context_sds_secret_config": {
                        "name": "ROOTCA",
                        "sds_config": sds_config(delta=sds_delta),
                    },
                },
            },
        },
    }


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
    sds_socket: str | None = None,
    xds_server_name: str | None = None,
    sds_delta: bool = False,
    stats_port: int | None = None,
    stats_socket: str | None = None,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (JSON-able dict) for the sidecar `node_id`, fetching config from meshd.

    `extra_metadata` is merged over the Istio-like node metadata derived from the node id.
    `sds_socket`: the node agent's SDS Unix socket, served as static cluster `sds-grpc`.
    `xds_server_name` (requires `sds_socket`): reach meshd over mTLS with the SDS secrets `default` and
    `ROOTCA`, sending and checking this DNS name; None keeps plaintext xDS.
    `stats_port`: /stats/prometheus with Istio's metric names and labels on the admin host (Istio's 15090),
    answered by the agent on its Unix socket `stats_socket` (`agent/prometheus.py`).
    """
    clusters = [_xds_cluster(host=xds_host, port=xds_port)]
    if xds_server_name is not None:
        if sds_socket is None:
            raise ValueError("xDS over mTLS needs the SDS socket (sds_socket) for its certificate")
        clusters[0]["transport_socket"] = _xds_mtls(server_name=xds_server_name, sds_delta=sds_delta)
    if sds_socket is not None:
        clusters.append(_sds_cluster(socket_path=sds_socket))
    static: dict[str, Any] = {"clusters": clusters}
    if stats_port:
        if stats_socket is None:
            raise ValueError("the stats listener needs the agent's stats socket (stats_socket)")
        clusters.append(stats_cluster(socket_path=stats_socket))
        static["listeners"] = [stats_listener(host=admin_host, port=stats_port)]
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
        "static_resources": static,
        "stats_config": stats_config(),
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
