"""CUSTOM policies: the mesh config's extension provider -> Envoy's ext_authz filter, placed as Istio does.

An RBAC filter before it holds the CUSTOM rules as shadow rules (stat prefix `istio_ext_authz_`, policy
names starting `istio-ext-authz`): a request they match gets its policy id in the RBAC filter's dynamic
metadata, and ext_authz runs only for such requests (`filter_enabled_metadata`). The provider's service is
reached through its outbound cluster `outbound|<port>||<host>`.

- envoyExtAuthzHttp: `http_service` (path prefix, headers sent in the check, headers added to it, headers
  passed upstream on allow and downstream on allow/deny), request body, timeout, failOpen, statusOnError;
- envoyExtAuthzGrpc: `grpc_service` (envoy.service.auth.v3.Authorization), body, timeout, failOpen,
  statusOnError; on TCP ports the network ext_authz filter (a gRPC provider only: Envoy has no HTTP one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3 import base_pb2, grpc_service_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as net_ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from envoy.type.v3 import http_status_pb2

from meshd.api.meshconfig import DEFAULT_EXT_AUTHZ_TIMEOUT, ExtAuthzGrpc, ExtAuthzHttp, ExtensionProvider
from meshd.model.services import MeshService
from meshd.translate import naming
from meshd.translate.proto import duration, pack

HTTP_FILTER = "envoy.filters.http.ext_authz"
NETWORK_FILTER = "envoy.filters.network.ext_authz"
HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
SHADOW_PREFIX = "istio_ext_authz_"
POLICY_PREFIX = "istio-ext-authz"


def provider_problem(name: str, provider: ExtensionProvider | None, services: Mapping[str, MeshService]) -> str | None:
    """Why a CUSTOM policy's provider cannot be used (the workloads it selects then deny), or None."""
    if provider is None:
        return f"{name!r} is not an extension provider of the mesh config (meshConfig.extensionProviders)"
    found = provider.ext_authz
    if found is None:
        return f"{name!r} is a {provider.kind} provider, not envoyExtAuthzHttp or envoyExtAuthzGrpc"
    service = services.get(found.hostname)
    if service is None:
        return f"provider {name!r}: service {found.hostname!r} is not a service of the mesh"
    if service.port(found.port) is None:
        return f"provider {name!r}: {found.port} is not a port of service {found.hostname!r}"
    return None


def cluster(provider: ExtAuthzHttp | ExtAuthzGrpc) -> str:
    return naming.outbound_cluster(port=provider.port, host=provider.hostname)


def _enabled_when(rbac_filter: str) -> metadata_pb2.MetadataMatcher:
    """The RBAC filter's shadow rules matched one of the CUSTOM rules."""
    return metadata_pb2.MetadataMatcher(
        filter=rbac_filter,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=f"{SHADOW_PREFIX}shadow_effective_policy_id")],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(prefix=POLICY_PREFIX)),
    )


def _header_names(names: Iterable[str]) -> string_pb2.ListStringMatcher:
    """Istio's header lists: `x*` a prefix, `*x` a suffix, else the name; case-insensitively."""
    out = string_pb2.ListStringMatcher()
    for name in names:
        if name.endswith("*") and name != "*":
            out.patterns.add(prefix=name[:-1], ignore_case=True)
        elif name.startswith("*") and name != "*":
            out.patterns.add(suffix=name[1:], ignore_case=True)
        else:
            out.patterns.add(exact=name, ignore_case=True)
    return out


def _timeout(provider: ExtAuthzHttp | ExtAuthzGrpc) -> str:
    return provider.timeout or DEFAULT_EXT_AUTHZ_TIMEOUT


def _common(out: ext_authz_pb2.ExtAuthz, provider: ExtAuthzHttp | ExtAuthzGrpc) -> None:
    out.transport_api_version = 2  # V3
    out.failure_mode_allow = provider.fail_open
    out.clear_route_cache = provider.clear_route_cache
    out.status_on_error.CopyFrom(http_status_pb2.HttpStatus(code=provider.status_code))
    body = provider.include_request_body_in_check
    if body is not None:
        out.with_request_body.CopyFrom(
            ext_authz_pb2.BufferSettings(
                max_request_bytes=body.max_request_bytes,
                allow_partial_message=body.allow_partial_message,
                pack_as_bytes=body.pack_as_bytes,
            )
        )
    out.filter_enabled_metadata.CopyFrom(_enabled_when(HTTP_RBAC))


def _grpc_service(provider: ExtAuthzGrpc) -> grpc_service_pb2.GrpcService:
    return grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=cluster(provider), authority=provider.hostname),
        timeout=duration(_timeout(provider)),
    )


def http_filter(provider: ExtAuthzHttp | ExtAuthzGrpc) -> hcm_pb2.HttpFilter:
    out = ext_authz_pb2.ExtAuthz()
    _common(out, provider)
    if isinstance(provider, ExtAuthzGrpc):
        out.grpc_service.CopyFrom(_grpc_service(provider))
        return hcm_pb2.HttpFilter(name=HTTP_FILTER, typed_config=pack(out))
    service = out.http_service
    service.server_uri.CopyFrom(
        http_uri_pb2.HttpUri(
            uri=f"http://{provider.hostname}:{provider.port}",
            cluster=cluster(provider),
            timeout=duration(_timeout(provider)),
        )
    )
    service.path_prefix = provider.path_prefix
    sent = (*provider.include_request_headers_in_check, *provider.include_headers_in_check)
    if sent:
        out.allowed_headers.CopyFrom(_header_names(sent))
    for key, value in provider.include_additional_headers_in_check:
        service.authorization_request.headers_to_add.append(base_pb2.HeaderValue(key=key, value=value))
    response = service.authorization_response
    if provider.headers_to_upstream_on_allow:
        response.allowed_upstream_headers.CopyFrom(_header_names(provider.headers_to_upstream_on_allow))
    if provider.headers_to_downstream_on_deny:
        response.allowed_client_headers.CopyFrom(_header_names(provider.headers_to_downstream_on_deny))
    if provider.headers_to_downstream_on_allow:
        response.allowed_client_headers_on_success.CopyFrom(_header_names(provider.headers_to_downstream_on_allow))
    return hcm_pb2.HttpFilter(name=HTTP_FILTER, typed_config=pack(out))


def network_filter(provider: ExtAuthzGrpc) -> listener_components_pb2.Filter:
    out = net_ext_authz_pb2.ExtAuthz(
        stat_prefix="tcp.",
        grpc_service=_grpc_service(provider),
        failure_mode_allow=provider.fail_open,
        transport_api_version=2,  # V3
        filter_enabled_metadata=_enabled_when(NETWORK_RBAC),
    )
    return listener_components_pb2.Filter(name=NETWORK_FILTER, typed_config=pack(out))
