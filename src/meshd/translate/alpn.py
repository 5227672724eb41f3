"""Istio's ALPN signal that a mesh (mTLS) connection carries HTTP, with upstream Envoy only.

Istio's client sidecars announce, for HTTP over Istio mTLS, `istio-http/1.0`, `istio-http/1.1` or `istio-h2`
(by the upstream protocol) followed by `istio` and the plain protocol (`http/1.0`, `http/1.1`, `h2`); raw TCP
announces `istio` only. A server sidecar can then serve a port whose protocol it sniffs with an HTTP chain
for the first (matched by transport `tls` and those ALPNs) and a TCP chain for the rest. Istio does it with
its own `istio.alpn` HTTP filter; meshd, whose Envoys are unmodified, with these parts of upstream Envoy:

- each outbound cluster with Istio mTLS carries, in its metadata `istio.alpn`, the ALPN list to announce
  for HTTP (downstream `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`): from its upstream protocol (HTTP/2 for HTTP2/gRPC
  ports, HTTP/1.1 for HTTP ports); a sniffed port's cluster, which speaks the downstream's own protocol,
  carries `by-downstream` and the filter picks the list by the request's protocol (one short value per
  cluster: clusters are most of a proxy's config); other protocols (TCP, TLS...) and clusters with the
  user's TLS carry none;
- the server's sniffed ports (and undeclared ones where HTTP must be checked) get, for mTLS, an HTTP chain
  matched by transport `tls` and those ALPNs (`mesh_http`) beside the TCP chain (`mesh_tcp`);
- the client's HTTP connection managers run a `set_filter_state` filter named `istio.alpn` (before CORS,
  fault and the router): it writes Envoy's well-known `envoy.network.application_protocols` object (the ALPN
  override of the upstream connection) from that metadata of the route's cluster and the request's
  protocol, a CEL expression; nothing (`skip_if_empty`) where the cluster carries none, so clusters with the
  user's TLS keep their own ALPN. tcp_proxy connections never see it: they announce the cluster's `istio`.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshd.model.services import is_http, is_http2, is_sniffed
from meshd.translate.proto import pack

ALPN_FILTER = "istio.alpn"
APPLICATION_PROTOCOLS = "envoy.network.application_protocols"  # Envoy's well-known filter state object
METADATA_KEY = "alpn"  # in the cluster's `istio` filter metadata: the ALPN list, or BY_DOWNSTREAM
BY_DOWNSTREAM = "by-downstream"  # the list follows the request's protocol (a sniffed port's cluster)
# What a client announces for HTTP over Istio mTLS (any of them selects the server's HTTP chain), and for TCP.
MTLS_HTTP_ALPNS = ("istio-http/1.0", "istio-http/1.1", "istio-h2")
MTLS_TCP_ALPNS = ("istio-peer-exchange", "istio")
_HTTP10 = "istio-http/1.0,istio,http/1.0"
_HTTP11 = "istio-http/1.1,istio,http/1.1"
_H2 = "istio-h2,istio,h2"
_DOWNSTREAM = ("HTTP/1.0", "HTTP/1.1", "HTTP/2")  # CEL's request.protocol values for HTTP over TCP


def alpn_by_protocol(protocol: str) -> dict[str, str]:
    """The ALPN list (comma-separated) to announce per downstream protocol to a cluster of this port protocol
    with Istio mTLS; empty for protocols that are not HTTP (nothing is overridden there)."""
    if is_http2(protocol):
        upstream = dict.fromkeys(_DOWNSTREAM, _H2)
    elif is_http(protocol):
        upstream = dict.fromkeys(_DOWNSTREAM, _HTTP11)
    elif is_sniffed(protocol):  # the cluster speaks the downstream's protocol
        upstream = {"HTTP/1.0": _HTTP10, "HTTP/1.1": _HTTP11, "HTTP/2": _H2}
    else:
        upstream = {}
    return upstream


def cluster_alpn(protocol: str) -> str | None:
    """What a cluster of this port protocol with Istio mTLS carries (`METADATA_KEY`): the one list its HTTP
    requests announce, BY_DOWNSTREAM when that depends on the request's protocol, None for non-HTTP."""
    lists = set(alpn_by_protocol(protocol).values())
    if not lists:
        return None
    return lists.pop() if len(lists) == 1 else BY_DOWNSTREAM


def mark_cluster(cluster: cluster_pb2.Cluster, *, protocol: str) -> None:
    """Istio mTLS on `cluster`: the ALPNs its HTTP requests announce (read by the `istio.alpn` filter)."""
    found = cluster_alpn(protocol)
    if found is not None:
        cluster.metadata.filter_metadata["istio"].update({METADATA_KEY: found})


_META = f"xds.cluster_metadata.filter_metadata['istio']['{METADATA_KEY}']"
_BY_DOWNSTREAM = " : ".join(f"request.protocol == '{p}' ? '{v}'" for p, v in alpn_by_protocol("UNKNOWN").items())
# The route's cluster is known before the router runs (the connection manager resolves the route first);
# a cluster without the metadata (or no cluster at all) gives '' and the filter sets nothing.
_EXPRESSION = (
    "'istio' in xds.cluster_metadata.filter_metadata"
    f" && '{METADATA_KEY}' in xds.cluster_metadata.filter_metadata['istio']"
    f" && request.protocol in [{', '.join(repr(p) for p in _DOWNSTREAM)}]"
    f" ? ({_META} != '{BY_DOWNSTREAM}' ? {_META} : ({_BY_DOWNSTREAM} : '')) : ''"
)


def alpn_filter() -> hcm_pb2.HttpFilter:
    """The client side's `istio.alpn`: the upstream connection's ALPN from the route's cluster (module doc)."""
    value = value_pb2.FilterStateValue(
        object_key=APPLICATION_PROTOCOLS,
        skip_if_empty=True,
        format_string=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source={"inline_string": f"%CEL({_EXPRESSION})%"}
        ),
    )
    config = set_filter_state_pb2.Config(on_request_headers=[value])
    return hcm_pb2.HttpFilter(name=ALPN_FILTER, typed_config=pack(config))


def mesh_http(chain: listener_components_pb2.FilterChain) -> listener_components_pb2.FilterChain:
    """A server chain for HTTP inside Istio mTLS: a TLS connection whose client announces an HTTP ALPN."""
    chain.filter_chain_match.transport_protocol = "tls"
    chain.filter_chain_match.application_protocols.extend(MTLS_HTTP_ALPNS)
    return chain


def mesh_tcp(chain: listener_components_pb2.FilterChain, *, split: bool) -> listener_components_pb2.FilterChain:
    """The mTLS chain beside a `mesh_http` one: the other TLS connections, or (`split`: plaintext is admitted
    too, so a TLS connection must announce Istio's ALPN to be taken as mTLS) those announcing TCP's."""
    chain.filter_chain_match.transport_protocol = "tls"
    if split:
        chain.filter_chain_match.application_protocols.extend(MTLS_TCP_ALPNS)
    return chain
