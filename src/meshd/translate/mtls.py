"""Istio's own mutual TLS between sidecars, as Envoy configuration.

Both ends use the workload certificate the node agent serves over SDS (resource `default`: chain and
key) and the mesh root (`ROOTCA`), fetched from the bootstrap's static `sds-grpc` cluster, exactly the
names Istio uses, so the same sidecars work with Istio's agent and with `meshd agent`.

- client side (`ISTIO_MUTUAL`, chosen by a DestinationRule or by auto mTLS): SNI
  `outbound_.<port>_.<subset>_.<host>`, server certificate checked against the root and the SPIFFE
  identities `spiffe://<trust domain>/ns/<ns>/sa/<sa>` of the destination's workloads (plus the rule's
  subjectAltNames), ALPN `istio` (and `h2` for HTTP/2 upstreams), and for HTTP requests Istio's
  `istio-http/1.x` / `istio-h2` before it (`translate/alpn.py`);
- auto mTLS: the cluster carries two transport socket matches, TLS for endpoints whose metadata says
  `tlsMode: istio` (Pods labelled `security.istio.io/tlsMode: istio`) and plaintext for the rest;
- server side: a DownstreamTlsContext requiring a client certificate issued by the root.

ALPN: Istio advertises `istio-peer-exchange` too when its metadata-exchange filter is present; meshd has
no such filter, so it uses the values Istio uses without it (a server negotiating a protocol its HTTP
connection manager does not know would misread HTTP/2 as HTTP/1).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import duration_pb2, struct_pb2

from meshd.model.services import is_http2
from meshd.translate.alpn import MTLS_HTTP_ALPNS, MTLS_TCP_ALPNS, mark_cluster
from meshd.translate.proto import pack

SDS_CLUSTER = "sds-grpc"
WORKLOAD_SECRET = "default"
ROOT_SECRET = "ROOTCA"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_SOCKET = "envoy.transport_sockets.raw_buffer"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
TLS_MODE_KEY = "tlsMode"
ISTIO_MUTUAL_MATCH = "tlsMode-istio"  # auto mTLS: the socket of endpoints with a sidecar
ALPN_IN_MESH = ("istio",)
ALPN_IN_MESH_H2 = ("istio", "h2")
ALPN_DOWNSTREAM = ("h2", "http/1.1")
# What a client sidecar advertises, any of which marks a connection as Istio mTLS on the server side.
MTLS_ALPNS = (*MTLS_TCP_ALPNS, *MTLS_HTTP_ALPNS)


def spiffe_id(*, trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def sni(*, port: int, subset: str, host: str) -> str:
    """Istio's SNI for in-mesh mTLS: the cluster name in DNS SRV form."""
    return f"outbound_.{port}_.{subset}_.{host}"


def agent_sds(name: str) -> secret_pb2.SdsSecretConfig:
    """A secret from the node agent over the `sds-grpc` cluster (no fetch timeout: Envoy waits for it)."""
    return secret_pb2.SdsSecretConfig(name=name, sds_config=_agent_source())  # (a copy of the source)


@functools.lru_cache(maxsize=1)
def _agent_source() -> config_source_pb2.ConfigSource:
    """Built once (every cluster and listener with mTLS names it twice); only ever copied."""
    grpc = grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER))
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.V3,
            grpc_services=[grpc],
            set_node_on_first_message_only=True,
        ),
        initial_fetch_timeout=duration_pb2.Duration(seconds=0),
        resource_api_version=config_source_pb2.V3,
    )


def _common(common: common_pb2.CommonTlsContext, *, sans: Iterable[str], alpn: Iterable[str]) -> None:
    common.tls_params.tls_minimum_protocol_version = common_pb2.TlsParameters.TLSv1_2
    common.tls_params.tls_maximum_protocol_version = common_pb2.TlsParameters.TLSv1_3
    common.alpn_protocols.extend(alpn)
    common.tls_certificate_sds_secret_configs.append(agent_sds(WORKLOAD_SECRET))
    combined = common.combined_validation_context
    combined.default_validation_context.SetInParent()
    san = common_pb2.SubjectAltNameMatcher
    for name in sans:
        combined.default_validation_context.match_typed_subject_alt_names.append(
            san(san_type=san.URI if "://" in name else san.DNS, matcher=string_pb2.StringMatcher(exact=name))
        )
    combined.validation_context_sds_secret_config.CopyFrom(agent_sds(ROOT_SECRET))


def istio_mutual_context(*, sni_name: str, sans: Iterable[str], http2: bool) -> tls_pb2.UpstreamTlsContext:
    context = tls_pb2.UpstreamTlsContext(sni=sni_name)
    _common(context.common_tls_context, sans=sans, alpn=ALPN_IN_MESH_H2 if http2 else ALPN_IN_MESH)
    return context


def tls_socket(context: tls_pb2.UpstreamTlsContext | tls_pb2.DownstreamTlsContext) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def apply_istio_mutual(
    cluster: cluster_pb2.Cluster, *, sni_name: str, sans: Iterable[str], protocol: str, auto: bool
) -> None:
    """ISTIO_MUTUAL on a cluster of a port of `protocol`: for every endpoint (a DestinationRule asked for it),
    or with auto mTLS only for endpoints whose metadata says `tlsMode: istio` (plaintext for the others); the
    ALPNs its HTTP requests announce in its metadata (`translate/alpn.py`)."""
    socket = tls_socket(istio_mutual_context(sni_name=sni_name, sans=sans, http2=is_http2(protocol)))
    mark_cluster(cluster, protocol=protocol)
    if not auto:
        cluster.transport_socket.CopyFrom(socket)
        return
    match = struct_pb2.Struct()
    match.update({TLS_MODE_KEY: "istio"})
    cluster.transport_socket_matches.append(
        cluster_pb2.Cluster.TransportSocketMatch(name=ISTIO_MUTUAL_MATCH, match=match, transport_socket=socket)
    )
    cluster.transport_socket_matches.append(
        cluster_pb2.Cluster.TransportSocketMatch(
            name="tlsMode-disabled",
            match=struct_pb2.Struct(),
            transport_socket=base_pb2.TransportSocket(name=RAW_SOCKET, typed_config=pack(raw_buffer_pb2.RawBuffer())),
        )
    )


def tls_mode_metadata() -> base_pb2.Metadata:
    """Endpoint metadata selecting the `tlsMode-istio` socket: the endpoint has a sidecar."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({TLS_MODE_KEY: "istio"})
    return metadata


def downstream_context() -> tls_pb2.DownstreamTlsContext:
    """The inbound side of Istio mTLS: the workload certificate, and a client certificate required
    and verified against the mesh root (any workload of the mesh; authorization is another layer)."""
    context = tls_pb2.DownstreamTlsContext()
    context.require_client_certificate.value = True
    _common(context.common_tls_context, sans=(), alpn=ALPN_DOWNSTREAM)
    return context
